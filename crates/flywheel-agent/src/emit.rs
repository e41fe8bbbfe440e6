//! Writing events: one JSON line per [`AgentEvent`] on the channel to the
//! worker, cut to size ([`AgentEvent::bounded`]) and with every secret
//! value masked before it leaves the agent.

use flywheel_model::protocol::AgentEvent;
use flywheel_model::redact::Redactor;
use serde_json::Value;
use std::io::Write;
use std::sync::{Arc, Mutex};

pub use flywheel_model::redact::MASK;

/// Sends events. Cheap to clone; all clones write to the same stream in order.
#[derive(Clone)]
pub struct Emitter {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    redactor: Arc<Redactor>,
}

impl Emitter {
    pub fn to_writer(out: Box<dyn Write + Send>, secrets: Vec<String>) -> Emitter {
        Emitter { out: Arc::new(Mutex::new(out)), redactor: Arc::new(Redactor::new(secrets)) }
    }

    /// Writes one event as a line. A closed channel means the worker is
    /// gone; there is nobody left to tell, so the error is ignored.
    pub fn send(&self, event: &AgentEvent) {
        // Masked before it is cut, so a cut cannot leave part of a secret.
        // Model requests are bounded by the transport (and not copied here).
        let bounded;
        let event = if matches!(event, AgentEvent::ModelRequest { .. }) {
            event
        } else {
            let redactor = &self.redactor;
            bounded = event.clone().map_text(|t| redactor.redact(&t), |v| redactor.redact_value(v)).bounded();
            &bounded
        };
        let Ok(mut line) = serde_json::to_string(event) else { return };
        // Model requests carry megabytes of screenshots: no copy without secrets.
        if !self.redactor.is_empty() {
            line = self.redactor.redact_json_text(&line);
        }
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    /// Sends a log line at `level` (`info`, `warn`, `error`, `debug`).
    pub fn log(&self, level: &str, message: impl Into<String>, step: Option<u32>) {
        self.send(&AgentEvent::Log { level: level.to_owned(), message: message.into(), step });
    }

    /// Masks every secret value in `text`.
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact(text)
    }

    /// A masker for a stream of text (a step's output), so that text can be
    /// cut after it is masked.
    pub fn stream_redactor(&self) -> flywheel_model::redact::StreamRedactor {
        self.redactor.stream()
    }

    /// Masks secrets inside every string of a JSON value.
    pub fn redact_value(&self, value: Value) -> Value {
        self.redactor.redact_value(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn secrets_never_leave_in_any_form() {
        let sink = Sink::default();
        let emitter = Emitter::to_writer(Box::new(sink.clone()), vec!["hunter\"2".into(), String::new()]);
        emitter.log("info", "password is hunter\"2", None);
        emitter.send(&AgentEvent::Output { name: "x".into(), value: serde_json::json!({"p": "hunter\"2"}) });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("hunter"), "{text}");
        assert_eq!(text.matches(MASK).count(), 2, "{text}");
        for line in text.lines() {
            serde_json::from_str::<AgentEvent>(line).unwrap();
        }
    }
}
