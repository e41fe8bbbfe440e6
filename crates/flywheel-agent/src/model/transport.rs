//! Model calls through the worker: the agent writes a `model_request`
//! event, the worker makes the call with the key and writes the answer on
//! the agent's stdin. [`ModelClient::post`] adds the retry policy: 429 and
//! 5xx are retried with backoff (bounded, honouring `retry-after`), other
//! refusals (400, 401, 403, …) fail at once with the provider's message.

use super::ModelError;
use crate::emit::Emitter;
use flywheel_model::protocol::{AgentEvent, WorkerMessage};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::oneshot;

/// Attempts of one call, the first included.
const MAX_ATTEMPTS: u32 = 6;
/// Longest wait between attempts, `retry-after` included.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<WorkerMessage>>>>;

/// Talks to the workflow's model provider, through the worker.
#[derive(Clone)]
pub struct ModelClient {
    emitter: Emitter,
    provider: String,
    next_id: Arc<AtomicU64>,
    pending: Pending,
    /// The first wait before a retry (shorter in tests).
    base_backoff: Duration,
}

impl ModelClient {
    /// Reads the worker's answers from `reader`.
    pub fn with_reader(
        emitter: Emitter,
        provider: &str,
        reader: impl AsyncRead + Send + Unpin + 'static,
    ) -> ModelClient {
        let pending: Pending = Arc::default();
        let routes = pending.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(message) = serde_json::from_str::<WorkerMessage>(&line) else { continue };
                let id = match &message {
                    WorkerMessage::ModelResponse { id, .. } | WorkerMessage::ModelError { id, .. } => *id,
                };
                let waiter = routes.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(message);
                }
            }
        });
        ModelClient {
            emitter,
            provider: provider.to_owned(),
            next_id: Arc::new(AtomicU64::new(1)),
            pending,
            base_backoff: Duration::from_secs(1),
        }
    }

    async fn post_once(&self, path: &str, headers: &BTreeMap<String, String>, body: &Value) -> WorkerMessage {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        self.emitter.send(&AgentEvent::ModelRequest {
            id,
            provider: self.provider.clone(),
            path: path.to_owned(),
            headers: headers.clone(),
            body: body.clone(),
        });
        rx.await.unwrap_or(WorkerMessage::ModelError { id, message: "the worker did not answer".into() })
    }

    /// Posts `body` to the provider's `path`; returns the JSON answer.
    pub async fn post(
        &self,
        path: &str,
        headers: &BTreeMap<String, String>,
        body: &Value,
    ) -> Result<Value, ModelError> {
        let mut attempt = 1;
        loop {
            let (retry_after, why) = match self.post_once(path, headers, body).await {
                WorkerMessage::ModelResponse { status, body, .. } if (200..300).contains(&status) => return Ok(body),
                WorkerMessage::ModelResponse { status, headers, body, .. } if status == 429 || status >= 500 => {
                    (retry_after(&headers), format!("{} answered {status}: {}", self.provider, provider_message(&body)))
                }
                WorkerMessage::ModelResponse { status, body, .. } => {
                    return Err(ModelError(format!(
                        "{} refused the request ({status}): {}",
                        self.provider,
                        provider_message(&body)
                    )));
                }
                WorkerMessage::ModelError { message, .. } if message.starts_with("could not reach") => (None, message),
                WorkerMessage::ModelError { message, .. } => return Err(ModelError(message)),
            };
            if attempt >= MAX_ATTEMPTS {
                return Err(ModelError(format!("{why} (gave up after {MAX_ATTEMPTS} attempts)")));
            }
            let backoff = (self.base_backoff * 2u32.pow(attempt - 1)).min(Duration::from_secs(30));
            let wait = retry_after.unwrap_or(backoff).min(MAX_BACKOFF);
            self.emitter.log(
                "warn",
                format!("{why}; retrying in {:.1} s (attempt {} of {MAX_ATTEMPTS})", wait.as_secs_f64(), attempt + 1),
                None,
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// `retry-after` (seconds, or `retry-after-ms`), if the provider said.
fn retry_after(headers: &BTreeMap<String, String>) -> Option<Duration> {
    if let Some(ms) = headers.get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64((ms / 1000.0).max(0.0)));
    }
    headers.get("retry-after").and_then(|v| v.trim().parse::<f64>().ok()).map(|s| Duration::from_secs_f64(s.max(0.0)))
}

/// The human part of a provider's error body.
pub fn provider_message(body: &Value) -> String {
    let message =
        body["error"]["message"].as_str().or_else(|| body["message"].as_str()).or_else(|| body["error"].as_str());
    match message {
        Some(m) => m.to_owned(),
        None => {
            let text = match body {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            text.chars().take(300).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn retry_after_and_messages() {
        let mut h = BTreeMap::new();
        h.insert("retry-after".to_owned(), "2".to_owned());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms".to_owned(), "150".to_owned());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        assert_eq!(
            provider_message(
                &json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
            ),
            "invalid x-api-key"
        );
        assert_eq!(provider_message(&json!({"error": {"message": "Incorrect API key"}})), "Incorrect API key");
        assert_eq!(provider_message(&json!("Bad Gateway")), "Bad Gateway");
    }
}
