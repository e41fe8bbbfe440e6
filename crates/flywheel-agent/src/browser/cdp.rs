//! The Chrome DevTools Protocol over `--remote-debugging-pipe`.
//!
//! Chromium reads commands from its fd 3 and writes answers and events to
//! fd 4, each a JSON message ended by a NUL byte. A pipe, unlike a debugging
//! port, cannot be reached by anything else on the machine (sandboxes share
//! the host's network), so no other process can take over the browser.
//!
//! [`Cdp::call`] sends a command (optionally to a flattened target session)
//! and awaits its answer; [`Cdp::subscribe`] receives every event.

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, oneshot};

/// How long a command may take before it is given up on.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One event from the browser.
#[derive(Debug)]
pub struct CdpEvent {
    pub method: String,
    pub params: Value,
    /// The target session the event belongs to, if any.
    pub session: Option<String>,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// A DevTools connection. Cheap to share behind an `Arc`.
pub struct Cdp {
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    next_id: AtomicU64,
    pending: Pending,
    events: broadcast::Sender<Arc<CdpEvent>>,
}

impl Cdp {
    /// Starts reading `from_browser`; commands go to `to_browser`.
    pub fn new(
        from_browser: impl AsyncRead + Send + Unpin + 'static,
        to_browser: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Arc<Cdp> {
        let (events, _) = broadcast::channel(4096);
        let pending: Pending = Arc::default();
        tokio::spawn(read_loop(BufReader::new(from_browser), pending.clone(), events.clone()));
        Arc::new(Cdp {
            writer: tokio::sync::Mutex::new(Box::new(to_browser)),
            next_id: AtomicU64::new(1),
            pending,
            events,
        })
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CdpEvent>> {
        self.events.subscribe()
    }

    /// Sends `method` and waits for its result.
    pub async fn call(&self, method: &str, params: Value, session: Option<&str>) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = Value::String(session.to_owned());
        }
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(id, tx);
        let mut bytes = serde_json::to_vec(&message).context("encoding a DevTools command")?;
        bytes.push(0);
        {
            let mut writer = self.writer.lock().await;
            if let Err(err) = writer.write_all(&bytes).await {
                self.lock_pending().remove(&id);
                bail!("the browser is gone (writing {method}: {err})");
            }
        }
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(message))) => Err(anyhow!("{method}: {message}")),
            Ok(Err(_)) => bail!("the browser is gone (it closed the DevTools pipe during {method})"),
            Err(_) => {
                self.lock_pending().remove(&id);
                bail!("the browser did not answer {method} within {} s", CALL_TIMEOUT.as_secs())
            }
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Value, String>>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn read_loop(
    mut reader: BufReader<impl AsyncRead + Unpin>,
    pending: Pending,
    events: broadcast::Sender<Arc<CdpEvent>>,
) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(0, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.last() == Some(&0) {
            buf.pop();
        }
        let Ok(mut message) = serde_json::from_slice::<Value>(&buf) else { continue };
        if let Some(id) = message.get("id").and_then(Value::as_u64) {
            let result = match message.get_mut("error") {
                Some(error) => Err(error.get("message").and_then(Value::as_str).unwrap_or("unknown error").to_owned()),
                None => Ok(message.get_mut("result").map(Value::take).unwrap_or(Value::Null)),
            };
            let waiter = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            if let Some(waiter) = waiter {
                let _ = waiter.send(result);
            }
        } else if let Some(method) = message.get("method").and_then(Value::as_str) {
            let event = CdpEvent {
                method: method.to_owned(),
                session: message.get("sessionId").and_then(Value::as_str).map(str::to_owned),
                params: message.get_mut("params").map(Value::take).unwrap_or(Value::Null),
            };
            let _ = events.send(Arc::new(event));
        }
    }
    // The browser is gone: fail everything still waiting.
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_are_matched_to_answers_and_events_are_broadcast() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (their_read, mut their_write) = tokio::io::split(theirs);
        let (our_read, our_write) = tokio::io::split(ours);
        let cdp = Cdp::new(our_read, our_write);
        let mut events = cdp.subscribe();
        // A fake browser: answers each command with its method, after an event.
        tokio::spawn(async move {
            let mut reader = BufReader::new(their_read);
            let mut buf = Vec::new();
            while reader.read_until(0, &mut buf).await.unwrap_or(0) > 0 {
                buf.pop();
                let msg: Value = serde_json::from_slice(&buf).unwrap();
                buf.clear();
                let event = json!({"method": "Page.loadEventFired", "params": {"t": 1}, "sessionId": msg["sessionId"]});
                let answer = if msg["method"] == "Bad.method" {
                    json!({"id": msg["id"], "error": {"code": -32601, "message": "'Bad.method' wasn't found"}})
                } else {
                    json!({"id": msg["id"], "result": {"echo": msg["method"]}})
                };
                for m in [event, answer] {
                    let mut bytes = serde_json::to_vec(&m).unwrap();
                    bytes.push(0);
                    their_write.write_all(&bytes).await.unwrap();
                }
            }
        });
        let result = cdp.call("Page.enable", json!({}), Some("S1")).await.unwrap();
        assert_eq!(result["echo"], "Page.enable");
        let event = events.recv().await.unwrap();
        assert_eq!((event.method.as_str(), event.session.as_deref()), ("Page.loadEventFired", Some("S1")));
        let err = cdp.call("Bad.method", json!({}), None).await.unwrap_err();
        assert!(err.to_string().contains("wasn't found"), "{err}");
    }
}
