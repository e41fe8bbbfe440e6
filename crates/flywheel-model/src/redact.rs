//! Masking secret values wherever they might appear: log lines, events,
//! outputs, files. Both the agent (before anything leaves the sandbox) and
//! the worker (before anything is stored) use it.
//!
//! A secret that spans several lines (a PEM key, say) is masked whole, and
//! each of its lines on its own too: a step that prints it line by line
//! produces one log entry per line, and none of them may show it. A secret
//! is also masked in the forms a careless step puts it in: trimmed of
//! surrounding blanks, escaped inside a JSON string, percent-encoded in a
//! URL. Files are masked as a stream ([`StreamRedactor`]), a chunk at a
//! time, so a secret that straddles two chunks is still masked and a large
//! file is never held in memory.

use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::Value;

/// What a masked secret looks like.
pub const MASK: &str = "***";

/// Lines of a multi-line secret shorter than this are not masked on their
/// own: they would mask ordinary text (`}`, `==`) everywhere.
const MIN_LINE_SECRET: usize = 4;

/// Masks a fixed set of secret values.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Finds every form of every secret, leftmost-longest.
    forms: Option<AhoCorasick>,
    /// Length of the longest form, in bytes.
    longest: usize,
}

/// The forms a secret is masked in.
fn forms_of(secret: &str) -> Vec<String> {
    // As written, and with `\n`-style escapes read the way `echo` reads them.
    let mut wholes = vec![secret.to_owned()];
    if secret.contains('\\') {
        wholes.push(secret.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r").replace("\\\\", "\\"));
    }
    let mut parts = Vec::new();
    for whole in wholes {
        let trimmed = whole.trim();
        if trimmed.len() >= MIN_LINE_SECRET {
            parts.push(trimmed.to_owned());
        }
        if whole.contains(['\n', '\r']) {
            parts.extend(whole.lines().map(str::trim).filter(|l| l.len() >= MIN_LINE_SECRET).map(str::to_owned));
        }
        parts.push(whole);
    }
    let mut forms = Vec::new();
    for part in parts {
        // Inside a JSON string, as it is and with \uXXXX for what is not ASCII.
        let json = serde_json::to_string(&part).unwrap_or_default().trim_matches('"').to_owned();
        let mut ascii = String::with_capacity(json.len());
        for c in json.chars() {
            if c.is_ascii() {
                ascii.push(c);
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    ascii.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
        // …and with what minijinja's `tojson` escapes for HTML (&, <, >, ').
        let html_safe = |text: &str| {
            text.replace('&', "\\u0026").replace('<', "\\u003c").replace('>', "\\u003e").replace('\'', "\\u0027")
        };
        forms.push(html_safe(&ascii));
        forms.push(html_safe(&json));
        forms.push(ascii);
        forms.push(json);
        // In a URL's query or path, the way a URL library encodes it.
        if let Ok(mut url) = url::Url::parse("http://x/") {
            url.set_query(Some(&part));
            forms.extend(url.query().map(str::to_owned));
        }
        if let Ok(mut url) = url::Url::parse("http://x/") {
            if let Ok(mut segments) = url.path_segments_mut() {
                segments.clear().push(&part);
            }
            forms.push(url.path().trim_start_matches('/').to_owned());
        }
        // In a URL: form-encoded (spaces as +) and percent-encoded (%20).
        let encoded: String = url::form_urlencoded::byte_serialize(part.as_bytes()).collect();
        forms.push(encoded.replace('+', "%20"));
        forms.push(encoded);
        forms.push(part);
    }
    forms
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Redactor {
        let mut patterns: Vec<String> = secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .flat_map(|s| forms_of(&s))
            .filter(|f| !f.is_empty())
            .collect();
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Redactor::default();
        }
        let forms = AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&patterns).ok();
        Redactor { longest: patterns.iter().map(String::len).max().unwrap_or(0), forms }
    }

    pub fn is_empty(&self) -> bool {
        self.forms.is_none()
    }

    /// Masks every secret in `text`.
    pub fn redact(&self, text: &str) -> String {
        match &self.forms {
            Some(ac) if ac.is_match(text) => mask_all(ac, text),
            _ => text.to_owned(),
        }
    }

    /// Masks secrets in every string (and key) of a JSON value.
    pub fn redact_value(&self, value: Value) -> Value {
        if self.is_empty() {
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

    /// Masks secrets in serialized JSON (their JSON-escaped forms are
    /// among those [`Redactor::redact`] masks).
    pub fn redact_json_text(&self, text: &str) -> String {
        self.redact(text)
    }

    /// Masks a stream of bytes (a file), a chunk at a time.
    pub fn stream(&self) -> StreamRedactor {
        StreamRedactor { redactor: self.clone(), carry: Vec::new(), masked: 0 }
    }
}

fn mask_all(ac: &AhoCorasick, text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for found in ac.find_iter(text) {
        out.push_str(&text[last..found.start()]);
        out.push_str(MASK);
        last = found.end();
    }
    out.push_str(&text[last..]);
    out
}

/// Masks secrets in a byte stream fed in chunks of any size. It holds back
/// the last `longest secret - 1` bytes of what it was given, since a secret
/// may begin there and end in the next chunk; everything before that is
/// final, because any secret starting there lies wholly in what it has.
pub struct StreamRedactor {
    redactor: Redactor,
    carry: Vec<u8>,
    masked: usize,
}

impl StreamRedactor {
    /// Takes the next chunk; returns the bytes that are final (masked).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let Some(ac) = &self.redactor.forms else { return chunk.to_vec() };
        self.carry.extend_from_slice(chunk);
        let held = self.redactor.longest.saturating_sub(1);
        if self.carry.len() <= held {
            return Vec::new();
        }
        let safe_end = self.carry.len() - held;
        let mut out = Vec::with_capacity(safe_end);
        let mut last = 0;
        for found in ac.find_iter(&self.carry) {
            if found.start() >= safe_end {
                break;
            }
            out.extend_from_slice(&self.carry[last..found.start()]);
            out.extend_from_slice(MASK.as_bytes());
            self.masked += 1;
            last = found.end();
        }
        let emitted = last.max(safe_end);
        out.extend_from_slice(&self.carry[last..emitted]);
        self.carry.drain(..emitted);
        out
    }

    /// The rest, at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.carry);
        let Some(ac) = &self.redactor.forms else { return rest };
        let mut out = Vec::with_capacity(rest.len());
        let mut last = 0;
        for found in ac.find_iter(&rest) {
            out.extend_from_slice(&rest[last..found.start()]);
            out.extend_from_slice(MASK.as_bytes());
            self.masked += 1;
            last = found.end();
        }
        out.extend_from_slice(&rest[last..]);
        out
    }

    /// How many secrets were masked so far.
    pub fn masked(&self) -> usize {
        self.masked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stream_all(r: &Redactor, input: &[u8], chunk: usize) -> Vec<u8> {
        let mut s = r.stream();
        let mut out = Vec::new();
        for part in input.chunks(chunk.max(1)) {
            out.extend(s.push(part));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn masks_in_streams_whatever_the_chunk_boundaries() {
        let r = Redactor::new(["hunter2".to_owned(), "hunter2-extra".to_owned()]);
        let input = b"a hunter2 b hunter2-extra c hunte";
        for chunk in 1..input.len() + 2 {
            assert_eq!(stream_all(&r, input, chunk), b"a *** b *** c hunte", "chunks of {chunk}");
        }
        assert_eq!(stream_all(&Redactor::default(), b"\x89PNG clean", 3), b"\x89PNG clean");
        let mut s = r.stream();
        s.push(b"xxhunt");
        s.push(b"er2");
        s.finish();
        assert_eq!(s.masked(), 1);
    }

    #[test]
    fn masks_in_text_values_and_json() {
        let r = Redactor::new(["hunter2".to_owned(), "hunter2-extra".to_owned(), String::new()]);
        assert_eq!(r.redact("pw hunter2-extra and hunter2"), "pw *** and ***");
        assert_eq!(r.redact_value(json!({"a": ["hunter2"], "hunter2": 1})), json!({"a": ["***"], "***": 1}));
        let quoted = Redactor::new(["a\"b".to_owned()]);
        assert_eq!(quoted.redact_json_text(r#"{"v":"a\"b"}"#), r#"{"v":"***"}"#);
        assert!(Redactor::new([String::new()]).is_empty());
    }

    #[test]
    fn multi_line_secrets_are_masked_whole_and_line_by_line() {
        let pem = "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\r\nhkiG9w0BAQEFAASC\nab\n-----END KEY-----".to_owned();
        let r = Redactor::new([pem.clone()]);
        assert_eq!(r.redact(&format!("key: {pem}!")), "key: ***!");
        assert_eq!(r.redact("MIIEvQIBADANBgkq"), "***");
        assert_eq!(r.redact("  hkiG9w0BAQEFAASC  "), "  ***  ");
        assert_eq!(r.redact("ab cd"), "ab cd", "lines too short to be secret on their own stay");
        let escaped = serde_json::to_string(&pem).unwrap();
        assert_eq!(r.redact_json_text(&escaped), "\"***\"");
    }

    #[test]
    fn the_forms_a_careless_step_prints_are_masked() {
        let r = Redactor::new(["sup\"er secret w\u{f6}rd".to_owned(), " padded-9 ".to_owned()]);
        assert_eq!(r.redact("{\"key\":\"sup\\\"er secret w\u{f6}rd\"}"), r#"{"key":"***"}"#, "escaped in JSON text");
        assert_eq!(r.redact("?k=sup%22er%20secret%20w%C3%B6rd&x"), "?k=***&x", "percent-encoded");
        assert_eq!(r.redact("?k=sup%22er+secret+w%C3%B6rd&x"), "?k=***&x", "form-encoded");
        assert_eq!(r.redact("out: padded-9"), "out: ***", "trimmed");
        assert_eq!(r.redact(r#""sup\"er secret w\u00f6rd""#), r#""***""#, "escaped as ASCII JSON");
        let r =
            Redactor::new(["Tr0ub4dor&3<x>'q".to_owned(), "pa ss/w\"rd9Zq".to_owned(), "one\\ntwo-halves".to_owned()]);
        assert_eq!(r.redact(r#"Tr0ub4dor\u00263\u003cx\u003e\u0027q"#), "***", "as tojson writes it");
        assert_eq!(r.redact("k=pa%20ss/w%22rd9Zq"), "k=***", "in a query, the way a URL library encodes it");
        assert_eq!(r.redact("one\ntwo-halves"), "***", "echo read the escape");
        assert_eq!(r.redact("two-halves"), "***", "and each line of what it printed");
    }
}
