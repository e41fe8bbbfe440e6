//! A validation error that points at the offending field, in the shape of
//! FastAPI's 422 details (`loc`, `msg`, `type`), so the server can return it
//! as is.

use serde::Serialize;

/// One segment of a location: an object key or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum LocSegment {
    Key(String),
    Index(usize),
}

impl From<&str> for LocSegment {
    fn from(key: &str) -> Self {
        LocSegment::Key(key.to_owned())
    }
}

impl From<String> for LocSegment {
    fn from(key: String) -> Self {
        LocSegment::Key(key)
    }
}

impl From<usize> for LocSegment {
    fn from(index: usize) -> Self {
        LocSegment::Index(index)
    }
}

/// A field-level validation error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub loc: Vec<LocSegment>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl FieldError {
    pub fn new(loc: Vec<LocSegment>, kind: &str, msg: impl Into<String>) -> Self {
        FieldError { loc, msg: msg.into(), kind: kind.to_owned() }
    }

    /// Returns the same error with `prefix` put in front of its location.
    pub fn prefixed(mut self, prefix: &[LocSegment]) -> Self {
        let mut loc = prefix.to_vec();
        loc.append(&mut self.loc);
        self.loc = loc;
        self
    }

    /// Converts a serde error that knows its path into a field error.
    pub fn from_serde_path(err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let mut loc = path_segments(err.path());
        let msg = clean_serde_message(&err.into_inner().to_string());
        // Point at the missing field itself, as FastAPI does.
        if let Some(field) = msg.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
            loc.push(LocSegment::Key(field.to_owned()));
            return FieldError::new(loc, "missing", "Field required");
        }
        let kind = if msg.starts_with("invalid type") { "type_error" } else { "value_error" };
        FieldError::new(loc, kind, without_rust_names(&msg))
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loc: Vec<String> = self
            .loc
            .iter()
            .map(|s| match s {
                LocSegment::Key(k) => k.clone(),
                LocSegment::Index(i) => i.to_string(),
            })
            .collect();
        write!(f, "{}: {}", loc.join("."), self.msg)
    }
}

fn path_segments(path: &serde_path_to_error::Path) -> Vec<LocSegment> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|seg| match seg {
            Segment::Seq { index } => Some(LocSegment::Index(*index)),
            Segment::Map { key } => Some(LocSegment::Key(key.clone())),
            Segment::Enum { variant } => Some(LocSegment::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

/// serde says "expected struct GotoStep"; people need "expected an object".
fn without_rust_names(msg: &str) -> String {
    match msg.find("expected struct ") {
        Some(pos) => format!("{}expected an object", &msg[..pos]),
        None => msg.to_owned(),
    }
}

/// serde_json appends " at line 1 column 42" to messages, which means nothing
/// to someone who sent a JSON body; drop it.
fn clean_serde_message(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(pos) => msg[..pos].to_owned(),
        None => msg.to_owned(),
    }
}
