//! Masking secret values wherever they might appear: log lines, events,
//! outputs. Both the agent (before anything leaves the sandbox) and the
//! worker (before anything is stored) use it.

use serde_json::Value;

/// What a masked secret looks like.
pub const MASK: &str = "***";

/// Masks a fixed set of secret values.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret that contains another is masked whole.
    secrets: Vec<String>,
    /// The same secrets as they appear inside a JSON string (escaped), when
    /// that differs from the raw form.
    escaped: Vec<String>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Redactor {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        let escaped = secrets
            .iter()
            .map(|s| serde_json::to_string(s).unwrap_or_default().trim_matches('"').to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        Redactor { secrets, escaped }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Masks every secret in `text`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }

    /// Masks every secret in the bytes of a file; `None` when none occurs
    /// (the common case: nothing is copied).
    pub fn redact_bytes(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let contains = |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
        if !self.secrets.iter().any(|s| contains(bytes, s.as_bytes())) {
            return None;
        }
        let mut out = bytes.to_vec();
        for secret in &self.secrets {
            let needle = secret.as_bytes();
            let mut masked = Vec::with_capacity(out.len());
            let mut rest = &out[..];
            while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
                masked.extend_from_slice(&rest[..at]);
                masked.extend_from_slice(MASK.as_bytes());
                rest = &rest[at + needle.len()..];
            }
            masked.extend_from_slice(rest);
            out = masked;
        }
        Some(out)
    }

    /// Masks secrets in every string (and key) of a JSON value.
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

    /// Masks secrets in serialized JSON, in their raw and JSON-escaped forms.
    pub fn redact_json_text(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for form in self.escaped.iter().chain(&self.secrets) {
            if out.contains(form.as_str()) {
                out = out.replace(form.as_str(), MASK);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_in_bytes_and_copies_nothing_when_clean() {
        let r = Redactor::new(["hunter2".to_owned()]);
        assert_eq!(r.redact_bytes(b"a hunter2 b hunter2").as_deref(), Some(&b"a *** b ***"[..]));
        assert_eq!(r.redact_bytes(b"\x89PNG clean"), None);
    }

    #[test]
    fn masks_in_text_values_and_json() {
        let r = Redactor::new(["hunter2".to_owned(), "hunter2-extra".to_owned(), String::new()]);
        assert_eq!(r.redact("pw hunter2-extra and hunter2"), "pw *** and ***");
        assert_eq!(r.redact_value(json!({"a": ["hunter2"], "hunter2": 1})), json!({"a": ["***"], "***": 1}));
        let quoted = Redactor::new(["a\"b".to_owned()]);
        assert_eq!(quoted.redact_json_text(r#"{"v":"a\"b"}"#), r#"{"v":"***"}"#);
    }
}
