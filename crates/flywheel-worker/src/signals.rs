//! In-process signals between the API and the workers of one node.
//!
//! The store is the source of truth; these only make things fast: the
//! dispatcher wakes the moment an execution is queued instead of at its next
//! poll, a stop kills the sandbox at once instead of at the next heartbeat,
//! and an SSE stream reads new log entries as soon as they are written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Why a running execution is being ended from outside its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A person stopped it (stop, retry, delete); the store already says so.
    Stopped,
    /// The node is shutting down and the grace period ran out.
    Shutdown,
}

struct RunningExecution {
    token: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

/// Shared by the API and the dispatcher of one process.
#[derive(Clone)]
pub struct Signals {
    inner: Arc<Inner>,
}

struct Inner {
    wake: Notify,
    log_appended: broadcast::Sender<Uuid>,
    running: Mutex<HashMap<Uuid, RunningExecution>>,
    /// Stops that found no running execution here, kept briefly: a stop can
    /// land between the claim of an execution and its run registering.
    early_stops: Mutex<HashMap<Uuid, Instant>>,
}

/// How long an early stop is remembered.
const EARLY_STOP_MEMORY: Duration = Duration::from_secs(10);

/// Handed to the task running an execution: fires when it must end.
pub struct StopHandle {
    pub token: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl StopHandle {
    pub fn reason(&self) -> Option<StopReason> {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}

impl Signals {
    pub fn new() -> Signals {
        let (log_appended, _) = broadcast::channel(4096);
        Signals {
            inner: Arc::new(Inner {
                wake: Notify::new(),
                log_appended,
                running: Mutex::new(HashMap::new()),
                early_stops: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Something was queued: the dispatcher should look now.
    pub fn wake_dispatcher(&self) {
        self.inner.wake.notify_one();
    }

    pub(crate) async fn dispatcher_woken(&self) {
        self.inner.wake.notified().await;
    }

    /// New log entries exist for `execution`.
    pub fn log_appended(&self, execution: Uuid) {
        let _ = self.inner.log_appended.send(execution);
    }

    /// Listens for [`Signals::log_appended`].
    pub fn subscribe_logs(&self) -> broadcast::Receiver<Uuid> {
        self.inner.log_appended.subscribe()
    }

    /// Registers a running execution; the handle fires on [`Signals::stop`].
    pub(crate) fn register(&self, execution: Uuid) -> StopHandle {
        let token = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        self.running().insert(execution, RunningExecution { token: token.clone(), reason: reason.clone() });
        if self.early_stops().remove(&execution).is_some() {
            *reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(StopReason::Stopped);
            token.cancel();
        }
        StopHandle { token, reason }
    }

    pub(crate) fn unregister(&self, execution: Uuid) {
        self.running().remove(&execution);
    }

    /// Kills the sandbox of `execution` if it runs on this node. Returns
    /// whether it did.
    pub fn stop(&self, execution: Uuid, reason: StopReason) -> bool {
        if let Some(run) = self.running().get(&execution) {
            *run.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
            run.token.cancel();
            return true;
        }
        let mut early = self.early_stops();
        early.retain(|_, at| at.elapsed() < EARLY_STOP_MEMORY);
        early.insert(execution, Instant::now());
        false
    }

    /// Executions running on this node.
    pub fn running_executions(&self) -> Vec<Uuid> {
        self.running().keys().copied().collect()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, RunningExecution>> {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn early_stops(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Instant>> {
        self.inner.early_stops.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_that_comes_before_the_run_registers_still_lands() {
        let signals = Signals::new();
        let id = Uuid::now_v7();
        assert!(!signals.stop(id, StopReason::Stopped));
        let handle = signals.register(id);
        assert!(handle.token.is_cancelled());
        assert_eq!(handle.reason(), Some(StopReason::Stopped));
        let other = signals.register(Uuid::now_v7());
        assert!(!other.token.is_cancelled());
    }
}
