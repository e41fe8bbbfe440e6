//! Steps: the deterministic part of a specification.
//!
//! A step is one object with exactly one action key (`goto`, `shell`, …)
//! plus the optional common keys `name` (a label), `timeout` (seconds) and
//! `continue_on_error`. Most actions have a short form (`- goto: URL`,
//! `- shell: "cmd"`, `- wait: 2`) and a long form (an object). Parsing turns
//! either into a typed [`StepAction`]; unknown keys inside an action are an
//! error (they are almost always typos), while unknown keys next to the
//! action are kept and reported as warnings.

use crate::field_error::{FieldError, LocSegment};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Every action key, in the order the documentation lists them.
pub const ACTION_KINDS: &[&str] = &[
    "goto",
    "click",
    "type",
    "press",
    "select",
    "check",
    "hover",
    "scroll",
    "wait_for",
    "extract",
    "evaluate",
    "screenshot",
    "assert",
    "agent",
    "http",
    "shell",
    "set",
    "wait",
];

/// Keys allowed next to the action key.
const COMMON_KEYS: &[&str] = &["name", "timeout", "continue_on_error"];

/// One parsed step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// A label shown in logs; not an output name.
    pub name: Option<String>,
    /// Seconds this step may take.
    pub timeout: Option<f64>,
    /// A failure of this step is logged and the run goes on.
    pub continue_on_error: bool,
    pub action: StepAction,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepAction {
    Goto(GotoStep),
    Click(ClickStep),
    Type(TypeStep),
    Press(PressStep),
    Select(SelectStep),
    Check(CheckStep),
    Hover(HoverStep),
    Scroll(ScrollStep),
    WaitFor(WaitForStep),
    Extract(ExtractStep),
    Evaluate(EvaluateStep),
    Screenshot(ScreenshotStep),
    Assert(AssertStep),
    Agent(AgentStep),
    Http(HttpStep),
    Shell(ShellStep),
    Set(SetStep),
    Wait(WaitStep),
}

impl StepAction {
    /// The action key, e.g. `"shell"`.
    pub fn kind(&self) -> &'static str {
        match self {
            StepAction::Goto(_) => "goto",
            StepAction::Click(_) => "click",
            StepAction::Type(_) => "type",
            StepAction::Press(_) => "press",
            StepAction::Select(_) => "select",
            StepAction::Check(_) => "check",
            StepAction::Hover(_) => "hover",
            StepAction::Scroll(_) => "scroll",
            StepAction::WaitFor(_) => "wait_for",
            StepAction::Extract(_) => "extract",
            StepAction::Evaluate(_) => "evaluate",
            StepAction::Screenshot(_) => "screenshot",
            StepAction::Assert(_) => "assert",
            StepAction::Agent(_) => "agent",
            StepAction::Http(_) => "http",
            StepAction::Shell(_) => "shell",
            StepAction::Set(_) => "set",
            StepAction::Wait(_) => "wait",
        }
    }

    /// Whether this action needs a browser screen.
    pub fn needs_browser(&self) -> bool {
        !matches!(self, StepAction::Http(_) | StepAction::Shell(_) | StepAction::Set(_) | StepAction::Wait(_))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GotoStep {
    pub url: String,
}

/// `click: "#css"`, `{selector}`, `{text}` or `{x, y}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickStep {
    pub selector: Option<String>,
    pub text: Option<String>,
    pub x: Option<f64>,
    pub y: Option<f64>,
    #[serde(default)]
    pub button: Option<String>,
    #[serde(default)]
    pub double: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeStep {
    pub selector: Option<String>,
    pub text: String,
    /// Mask the typed text in every log.
    #[serde(default)]
    pub secret: bool,
    /// Keep what is in the field instead of clearing it first.
    #[serde(default)]
    pub append: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PressStep {
    pub key: String,
    pub selector: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectStep {
    pub selector: String,
    pub value: Option<String>,
    pub label: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckStep {
    pub selector: String,
    #[serde(default = "default_true")]
    pub checked: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoverStep {
    pub selector: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrollStep {
    pub selector: Option<String>,
    pub x: Option<f64>,
    pub y: Option<f64>,
    pub dx: Option<f64>,
    pub dy: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitForStep {
    pub selector: Option<String>,
    pub text: Option<String>,
    pub url: Option<String>,
    pub timeout: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractStep {
    pub name: String,
    pub selector: String,
    pub attr: Option<String>,
    #[serde(default)]
    pub all: bool,
    pub regex: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateStep {
    pub name: Option<String>,
    pub script: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScreenshotStep {
    pub name: Option<String>,
    #[serde(default)]
    pub full_page: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertStep {
    pub text: Option<String>,
    pub selector: Option<String>,
    pub url: Option<String>,
    pub expression: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentStep {
    pub prompt: String,
    /// Output name for the agent's final answer (default `result`).
    pub name: Option<String>,
    pub max_steps: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    /// Output name for `{status, headers, body}`.
    pub name: Option<String>,
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON body (sets `content-type: application/json`).
    pub json: Option<Value>,
    /// A raw text body.
    pub body: Option<String>,
    /// Accepted status codes; by default any 2xx or 3xx.
    pub expect_status: Option<Vec<u16>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellStep {
    pub command: String,
    /// Output name for the command's standard output (trimmed).
    pub name: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStep {
    pub name: String,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitStep {
    pub seconds: f64,
}

fn default_true() -> bool {
    true
}

fn default_method() -> String {
    "GET".to_owned()
}

impl Step {
    /// Parses one step. Errors carry a location relative to the step
    /// (e.g. `["shell", "command"]`); warnings are human sentences.
    pub fn parse(value: &Value) -> Result<(Step, Vec<String>), FieldError> {
        let Value::Object(obj) = value else {
            return Err(FieldError::new(
                vec![],
                "type_error",
                format!(
                    "a step must be an object with one action key, such as {{\"shell\": \"echo hi\"}}; got {}",
                    json_type(value)
                ),
            ));
        };
        let mut warnings = Vec::new();
        let mut action_keys = obj.keys().filter(|k| ACTION_KINDS.contains(&k.as_str()));
        let Some(kind) = action_keys.next() else {
            let others: Vec<&String> =
                obj.keys().filter(|k| !COMMON_KEYS.contains(&k.as_str()) && *k != "continueOnError").collect();
            let msg = match others.as_slice() {
                [one] => format!("unknown action {one:?}; expected one of: {}", ACTION_KINDS.join(", ")),
                _ => format!("the step has no action; expected one of: {}", ACTION_KINDS.join(", ")),
            };
            return Err(FieldError::new(vec![], "value_error", msg));
        };
        if let Some(second) = action_keys.next() {
            return Err(FieldError::new(
                vec![],
                "value_error",
                format!("a step has exactly one action, but this one has both {kind:?} and {second:?}"),
            ));
        }
        for key in obj.keys() {
            if key != kind && !COMMON_KEYS.contains(&key.as_str()) && key != "continueOnError" {
                warnings.push(format!(
                    "unknown key {key:?} in a {kind} step is ignored (a step allows {kind}, name, timeout, continue_on_error)"
                ));
            }
        }
        let name = match obj.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(type_error("name", "a string", other)),
        };
        let timeout = match obj.get("timeout") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(t) if t > 0.0 && t.is_finite() => Some(t),
                _ => {
                    return Err(FieldError::new(
                        vec!["timeout".into()],
                        "value_error",
                        "timeout must be a positive number of seconds",
                    ))
                }
            },
            Some(other) => return Err(type_error("timeout", "a number of seconds", other)),
        };
        let continue_on_error = match obj.get("continue_on_error").or_else(|| obj.get("continueOnError")) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(type_error("continue_on_error", "true or false", other)),
        };
        let body = &obj[kind.as_str()];
        let action = parse_action(kind, body).map_err(|e| e.prefixed(&[LocSegment::Key(kind.clone())]))?;
        Ok((Step { name, timeout, continue_on_error, action }, warnings))
    }

    /// A short description for logs: the label if there is one, else the kind.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.action.kind().to_owned())
    }
}

fn type_error(key: &str, expected: &str, got: &Value) -> FieldError {
    FieldError::new(vec![key.into()], "type_error", format!("{key} must be {expected}, got {}", json_type(got)))
}

/// The JSON type of a value, for messages.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Deserializes `value` into `T`, reporting the path of the first problem.
fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(FieldError::from_serde_path)
}

/// Expands a short form: a bare string becomes `{key: string}`.
fn expand_string(value: &Value, key: &str) -> Value {
    match value {
        Value::String(s) => {
            let mut map = Map::new();
            map.insert(key.to_owned(), Value::String(s.clone()));
            Value::Object(map)
        }
        other => other.clone(),
    }
}

fn parse_action(kind: &str, body: &Value) -> Result<StepAction, FieldError> {
    let action = match kind {
        "goto" => StepAction::Goto(from_value(&expand_string(body, "url"))?),
        "click" => {
            let click: ClickStep = from_value(&expand_string(body, "selector"))?;
            let by_point = click.x.is_some() || click.y.is_some();
            let ways =
                usize::from(click.selector.is_some()) + usize::from(click.text.is_some()) + usize::from(by_point);
            if ways != 1 || (by_point && (click.x.is_none() || click.y.is_none())) {
                return Err(FieldError::new(
                    vec![],
                    "value_error",
                    "click needs exactly one target: a CSS selector, {text: ...} or {x: ..., y: ...}",
                ));
            }
            StepAction::Click(click)
        }
        "type" => StepAction::Type(from_value(body)?),
        "press" => StepAction::Press(from_value(&expand_string(body, "key"))?),
        "select" => {
            let select: SelectStep = from_value(body)?;
            if select.value.is_none() == select.label.is_none() {
                return Err(FieldError::new(vec![], "value_error", "select needs either value or label"));
            }
            StepAction::Select(select)
        }
        "check" => StepAction::Check(from_value(&expand_string(body, "selector"))?),
        "hover" => StepAction::Hover(from_value(&expand_string(body, "selector"))?),
        "scroll" => StepAction::Scroll(from_value(&expand_string(body, "selector"))?),
        "wait_for" => {
            let wait: WaitForStep = from_value(&expand_string(body, "selector"))?;
            let targets = [&wait.selector, &wait.text, &wait.url].iter().filter(|t| t.is_some()).count();
            if targets != 1 {
                return Err(FieldError::new(
                    vec![],
                    "value_error",
                    "wait_for needs exactly one of selector, text or url",
                ));
            }
            StepAction::WaitFor(wait)
        }
        "extract" => StepAction::Extract(from_value(body)?),
        "evaluate" => StepAction::Evaluate(from_value(&expand_string(body, "script"))?),
        "screenshot" => match body {
            Value::Null => StepAction::Screenshot(ScreenshotStep::default()),
            other => StepAction::Screenshot(from_value(&expand_string(other, "name"))?),
        },
        "assert" => {
            let assert: AssertStep = from_value(&expand_string(body, "text"))?;
            let checks = [&assert.text, &assert.selector, &assert.url, &assert.expression]
                .iter()
                .filter(|t| t.is_some())
                .count();
            if checks != 1 {
                return Err(FieldError::new(
                    vec![],
                    "value_error",
                    "assert needs exactly one of text, selector, url or expression",
                ));
            }
            StepAction::Assert(assert)
        }
        "agent" => StepAction::Agent(from_value(&expand_string(body, "prompt"))?),
        "http" => {
            let http: HttpStep = from_value(&expand_string(body, "url"))?;
            if http.json.is_some() && http.body.is_some() {
                return Err(FieldError::new(vec![], "value_error", "http takes json or body, not both"));
            }
            StepAction::Http(http)
        }
        "shell" => StepAction::Shell(from_value(&expand_string(body, "command"))?),
        "set" => StepAction::Set(from_value(body)?),
        "wait" => {
            let wait: WaitStep = match body {
                Value::String(_) | Value::Bool(_) | Value::Array(_) | Value::Null => {
                    return Err(FieldError::new(
                        vec![],
                        "type_error",
                        format!("wait needs a number of seconds, like `wait: 2`; got {}", json_type(body)),
                    ))
                }
                Value::Number(_) => {
                    let mut map = Map::new();
                    map.insert("seconds".to_owned(), body.clone());
                    from_value(&Value::Object(map))?
                }
                other => from_value(other)?,
            };
            if !(wait.seconds >= 0.0 && wait.seconds.is_finite()) {
                return Err(FieldError::new(vec![], "value_error", "wait needs a number of seconds, 0 or more"));
            }
            StepAction::Wait(wait)
        }
        other => {
            return Err(FieldError::new(vec![], "value_error", format!("unknown action {other:?}")));
        }
    };
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Step, FieldError> {
        Step::parse(&v).map(|(s, _)| s)
    }

    #[test]
    fn short_forms_expand() {
        assert_eq!(
            parse(json!({"shell": "echo hi"})).unwrap().action,
            StepAction::Shell(ShellStep { command: "echo hi".into(), name: None, env: BTreeMap::new() })
        );
        assert_eq!(parse(json!({"wait": 2})).unwrap().action, StepAction::Wait(WaitStep { seconds: 2.0 }));
        assert_eq!(
            parse(json!({"goto": "https://example.com"})).unwrap().action,
            StepAction::Goto(GotoStep { url: "https://example.com".into() })
        );
        assert!(matches!(parse(json!({"screenshot": null})).unwrap().action, StepAction::Screenshot(_)));
    }

    #[test]
    fn common_keys_are_read() {
        let step = parse(json!({"shell": "false", "name": "fails", "timeout": 5, "continue_on_error": true})).unwrap();
        assert_eq!(step.name.as_deref(), Some("fails"));
        assert_eq!(step.timeout, Some(5.0));
        assert!(step.continue_on_error);
        assert!(parse(json!({"shell": "x", "continueOnError": true})).unwrap().continue_on_error);
    }

    #[test]
    fn errors_point_at_the_field() {
        let err = parse(json!({"set": {"name": "x"}})).unwrap_err();
        assert_eq!(err.loc, vec![LocSegment::Key("set".into()), LocSegment::Key("value".into())]);
        assert_eq!((err.kind.as_str(), err.msg.as_str()), ("missing", "Field required"));

        let err = parse(json!({"http": {"url": "http://x", "methd": "GET"}})).unwrap_err();
        assert!(err.msg.contains("methd"), "{}", err.msg);

        let err = parse(json!({"shell": "a", "wait": 1})).unwrap_err();
        assert!(err.msg.contains("exactly one action"));

        let err = parse(json!({"frobnicate": 1})).unwrap_err();
        assert!(err.msg.starts_with("unknown action \"frobnicate\""), "{}", err.msg);
        let err = parse(json!({"name": "only a label"})).unwrap_err();
        assert!(err.msg.contains("no action"), "{}", err.msg);
        let err = parse(json!({"wait": "soon"})).unwrap_err();
        assert!(err.msg.contains("number of seconds"), "{}", err.msg);
        let err = parse(json!({"goto": 5})).unwrap_err();
        assert!(!err.msg.contains("struct"), "no Rust type names: {}", err.msg);

        assert!(parse(json!({"click": {"x": 1}})).is_err());
        assert!(parse(json!({"wait": -1})).is_err());
        assert!(parse(json!("shell")).is_err());
    }

    #[test]
    fn unknown_keys_next_to_the_action_warn() {
        let (_, warnings) = Step::parse(&json!({"shell": "true", "descr": "x"})).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("descr"));
    }

    #[test]
    fn browser_steps_are_recognised() {
        assert!(parse(json!({"click": {"text": "Sign in"}})).unwrap().action.needs_browser());
        assert!(!parse(json!({"set": {"name": "a", "value": 1}})).unwrap().action.needs_browser());
    }
}
