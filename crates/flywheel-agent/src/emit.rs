//! Writing events: one JSON line per [`AgentEvent`] on stdout, with every
//! secret value masked before it leaves the agent.

use flywheel_model::protocol::AgentEvent;
use serde_json::Value;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// What a masked secret looks like.
pub const MASK: &str = "***";

/// Sends events. Cheap to clone; all clones write to the same stream in order.
#[derive(Clone)]
pub struct Emitter {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    /// Secret values to mask, longest first so a secret that contains
    /// another is masked whole.
    secrets: Arc<Vec<String>>,
}

impl Emitter {
    /// Writes to the process's stdout.
    pub fn stdout(secrets: Vec<String>) -> Emitter {
        Emitter::to_writer(Box::new(std::io::stdout()), secrets)
    }

    pub fn to_writer(out: Box<dyn Write + Send>, mut secrets: Vec<String>) -> Emitter {
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Emitter { out: Arc::new(Mutex::new(out)), secrets: Arc::new(secrets) }
    }

    /// Writes one event as a line. A closed stdout means the worker is gone;
    /// there is nobody left to tell, so the error is ignored.
    pub fn send(&self, event: &AgentEvent) {
        let Ok(line) = serde_json::to_string(event) else { return };
        let line = self.redact_json_line(&line);
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
        let mut out = text.to_owned();
        for secret in self.secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }

    /// Masks secrets inside every string of a JSON value.
    pub fn redact_value(&self, value: Value) -> Value {
        if self.secrets.is_empty() {
            return value;
        }
        match value {
            Value::String(s) => Value::String(self.redact(&s)),
            Value::Array(items) => Value::Array(items.into_iter().map(|v| self.redact_value(v)).collect()),
            Value::Object(map) => {
                Value::Object(map.into_iter().map(|(k, v)| (self.redact(&k), self.redact_value(v))).collect())
            }
            other => other,
        }
    }

    /// Masks secrets in a serialized line, in their raw and JSON-escaped forms.
    fn redact_json_line(&self, line: &str) -> String {
        let mut out = line.to_owned();
        for secret in self.secrets.iter() {
            let escaped = serde_json::to_string(secret).unwrap_or_default();
            let escaped = escaped.trim_matches('"');
            for form in [escaped, secret.as_str()] {
                if !form.is_empty() && out.contains(form) {
                    out = out.replace(form, MASK);
                }
            }
        }
        out
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
