//! The workflow specification: what an execution does and under which limits.
//!
//! [`Specification::parse`] validates a JSON value (from YAML or JSON),
//! accepts the documented camelCase spellings, and returns both the typed
//! specification and its normalised JSON form (snake_case keys, `website`
//! spelled `browser`, unknown keys kept). The normalised form is what gets
//! stored in a workflow version; parsing it again always succeeds.

use crate::field_error::{FieldError, LocSegment};
use crate::step::{json_type, Step};
use serde_json::{Map, Value};

/// Default run timeout, in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 300.0;
/// Longest allowed run timeout: one day.
pub const MAX_TIMEOUT_SECS: f64 = 86_400.0;
pub const DEFAULT_MAX_STEPS: u32 = 50;
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

/// Documented camelCase spellings and their snake_case names.
const CAMEL_ALIASES: &[(&str, &str)] = &[
    ("startUrl", "start_url"),
    ("retryAttempts", "retry_attempts"),
    ("maxSteps", "max_steps"),
    ("urlAllowlist", "url_allowlist"),
    ("useGlobalAllowlist", "use_global_allowlist"),
    ("payloadSchema", "payload_schema"),
    ("strictPayload", "strict_payload"),
    ("payloadExample", "payload_example"),
    ("outputSchema", "output_schema"),
    ("recordVideo", "record_video"),
    ("screenshotEveryAction", "screenshot_every_action"),
    ("acknowledgeSafetyChecks", "acknowledge_safety_checks"),
];

/// Every key the specification knows.
const KNOWN_KEYS: &[&str] = &[
    "prompt",
    "start_url",
    "screens",
    "steps",
    "timeout",
    "retry_attempts",
    "max_steps",
    "concurrency",
    "url_allowlist",
    "use_global_allowlist",
    "payload_schema",
    "strict_payload",
    "payload_example",
    "output_schema",
    "agent",
    "trigger",
    "record_video",
    "screenshot_every_action",
    "acknowledge_safety_checks",
];

pub const PROVIDERS: &[&str] = &["anthropic", "openai", "openai-compatible"];

/// Which model drives a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    /// The name of the secret holding the key for `base_url`
    /// (`api_key: "{{ secrets.NAME }}"`): the server's own keys only ever
    /// go to the base URLs its operator configured.
    pub api_key_secret: Option<String>,
}

/// `NAME` of `{{ secrets.NAME }}` or `{{ secrets['NAME'] }}`, the whole string.
pub fn sole_secret_reference(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?.trim();
    let rest = inner.strip_prefix("secrets")?.trim_start();
    let name = match rest.strip_prefix('.') {
        Some(name) => name.trim(),
        None => {
            rest.strip_prefix('[')?.strip_suffix(']')?.trim().strip_prefix(['\'', '"'])?.strip_suffix(['\'', '"'])?
        }
    };
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some(name)
}

/// When a workflow runs by itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// `manual` or `schedule`.
    pub kind: String,
    /// A cron expression when `kind` is `schedule`.
    pub schedule: Option<String>,
}

/// A validated specification.
#[derive(Debug, Clone, PartialEq)]
pub struct Specification {
    pub prompt: Option<String>,
    pub start_url: Option<String>,
    /// Screens the sandbox provides; today only `browser`.
    pub screens: Vec<String>,
    pub steps: Vec<Step>,
    /// Seconds for the whole run.
    pub timeout_secs: f64,
    pub retry_attempts: u32,
    pub max_steps: u32,
    /// At most this many running executions of the workflow; `None` = no cap.
    pub concurrency: Option<u32>,
    pub url_allowlist: Vec<String>,
    pub use_global_allowlist: bool,
    pub payload_schema: Option<Value>,
    pub strict_payload: bool,
    pub payload_example: Option<Value>,
    pub output_schema: Option<Value>,
    pub agent: Option<AgentConfig>,
    pub trigger: Option<Trigger>,
    pub record_video: bool,
    pub screenshot_every_action: bool,
    pub acknowledge_safety_checks: bool,
}

/// The result of parsing: typed, normalised JSON, and warnings.
#[derive(Debug, Clone)]
pub struct ParsedSpecification {
    pub spec: Specification,
    pub normalized: Value,
    pub warnings: Vec<String>,
}

impl Specification {
    /// Whether an AI model drives any of it (a prompt or an agent step).
    pub fn needs_agent(&self) -> bool {
        self.prompt.as_deref().is_some_and(|p| !p.trim().is_empty())
            || self.steps.iter().any(|s| matches!(s.action, crate::step::StepAction::Agent(_)))
    }

    /// The most agent turns a run may take: `max_steps` for the prompt, and
    /// each agent step's own (or `max_steps`).
    pub fn agent_turns(&self) -> u32 {
        let prompt = if self.prompt.as_deref().is_some_and(|p| !p.trim().is_empty()) { self.max_steps } else { 0 };
        let steps: u32 = self
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                crate::step::StepAction::Agent(agent) => Some(agent.max_steps.unwrap_or(self.max_steps)),
                _ => None,
            })
            .fold(0u32, u32::saturating_add);
        prompt.saturating_add(steps)
    }

    /// Whether the sandbox needs a browser for this specification.
    pub fn needs_browser(&self) -> bool {
        self.start_url.is_some()
            || self.prompt.is_some()
            || !self.screens.is_empty()
            || self.steps.iter().any(|s| s.action.needs_browser())
    }

    /// Validates and normalises a specification. Errors are located relative
    /// to the specification (e.g. `["steps", 0, "shell"]`).
    pub fn parse(value: &Value) -> Result<ParsedSpecification, Vec<FieldError>> {
        let Value::Object(input) = value else {
            return Err(vec![FieldError::new(
                vec![],
                "type_error",
                format!("the specification must be an object, got {}", json_type(value)),
            )]);
        };
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        let obj = normalise_keys(input, &mut warnings);
        let mut reader = Reader { obj: &obj, errors: &mut errors };

        let prompt = reader.string("prompt");
        let start_url = reader.string("start_url");
        let timeout_secs = reader.number("timeout", DEFAULT_TIMEOUT_SECS, 0.001, MAX_TIMEOUT_SECS);
        let retry_attempts = reader.integer("retry_attempts", 0, 0, u64::from(MAX_RETRY_ATTEMPTS)) as u32;
        let max_steps = reader.integer("max_steps", u64::from(DEFAULT_MAX_STEPS), 1, 10_000) as u32;
        let concurrency = match obj.get("concurrency") {
            None | Some(Value::Null) => None,
            Some(_) => Some(reader.integer("concurrency", 1, 1, 100_000) as u32),
        };
        let url_allowlist = reader.string_list("url_allowlist");
        if let Err((i, message)) = crate::allowlist::check_entries(&url_allowlist) {
            reader.errors.push(FieldError::new(
                vec!["url_allowlist".into(), LocSegment::Index(i)],
                "value_error",
                message,
            ));
        }
        let use_global_allowlist = reader.boolean("use_global_allowlist", true);
        let payload_schema = reader.schema("payload_schema");
        let strict_payload = reader.boolean("strict_payload", false);
        let payload_example = obj.get("payload_example").filter(|v| !v.is_null()).cloned();
        let output_schema = reader.schema("output_schema");
        let record_video = reader.boolean("record_video", true);
        let screenshot_every_action = reader.boolean("screenshot_every_action", false);
        let acknowledge_safety_checks = reader.boolean("acknowledge_safety_checks", false);
        let screens = reader.string_list("screens");
        let agent = reader.agent();
        let trigger = reader.trigger();

        let mut steps = Vec::new();
        match obj.get("steps") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match Step::parse(item) {
                        Ok((step, step_warnings)) => {
                            steps.push(step);
                            warnings.extend(step_warnings.into_iter().map(|w| format!("steps[{i}]: {w}")));
                        }
                        Err(e) => errors.push(e.prefixed(&["steps".into(), LocSegment::Index(i)])),
                    }
                }
            }
            Some(other) => errors.push(FieldError::new(
                vec!["steps".into()],
                "type_error",
                format!("steps must be a list, got {}", json_type(other)),
            )),
        }

        for screen in &screens {
            if screen != "browser" {
                errors.push(FieldError::new(
                    vec!["screens".into()],
                    "value_error",
                    format!("unknown screen {screen:?}; the available screen is \"browser\""),
                ));
            }
        }
        if prompt.as_deref().is_none_or(|p| p.trim().is_empty()) && steps.is_empty() && errors.is_empty() {
            errors.push(FieldError::new(vec![], "value_error", "a specification needs a prompt, steps, or both"));
        }
        for key in obj.keys() {
            if !KNOWN_KEYS.contains(&key.as_str()) {
                warnings.push(format!("unknown key {key:?} in the specification is kept but ignored"));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let spec = Specification {
            prompt,
            start_url,
            screens,
            steps,
            timeout_secs,
            retry_attempts,
            max_steps,
            concurrency,
            url_allowlist,
            use_global_allowlist,
            payload_schema,
            strict_payload,
            payload_example,
            output_schema,
            agent,
            trigger,
            record_video,
            screenshot_every_action,
            acknowledge_safety_checks,
        };
        Ok(ParsedSpecification { spec, normalized: Value::Object(obj), warnings })
    }
}

/// Renames camelCase keys, folds `triggerType`/`scheduleExpression` into
/// `trigger`, spells `website` as `browser`, and renames
/// `continueOnError` inside steps.
fn normalise_keys(input: &Map<String, Value>, warnings: &mut Vec<String>) -> Map<String, Value> {
    let mut obj = Map::new();
    for (key, value) in input {
        let target = CAMEL_ALIASES
            .iter()
            .find(|(camel, _)| camel == key)
            .map(|(_, snake)| (*snake).to_owned())
            .unwrap_or_else(|| key.clone());
        if target != *key && input.contains_key(&target) {
            warnings.push(format!("both {key:?} and {target:?} are given; {target:?} is used"));
            continue;
        }
        if key == "triggerType" || key == "scheduleExpression" {
            continue;
        }
        obj.insert(target, value.clone());
    }
    let trigger_type = input.get("triggerType");
    let schedule = input.get("scheduleExpression");
    if trigger_type.is_some() || schedule.is_some() {
        if obj.contains_key("trigger") {
            warnings.push(
                "both \"trigger\" and \"triggerType\"/\"scheduleExpression\" are given; \"trigger\" is used".into(),
            );
        } else {
            let mut trigger = Map::new();
            if let Some(t) = trigger_type {
                trigger.insert("type".into(), t.clone());
            }
            if let Some(s) = schedule {
                trigger.insert("schedule".into(), s.clone());
            }
            obj.insert("trigger".into(), Value::Object(trigger));
        }
    }
    if let Some(Value::Array(screens)) = obj.get_mut("screens") {
        for screen in screens.iter_mut() {
            if screen.as_str() == Some("website") {
                *screen = Value::String("browser".into());
            }
        }
    }
    if let Some(Value::Array(steps)) = obj.get_mut("steps") {
        for step in steps.iter_mut() {
            if let Value::Object(step) = step {
                if let Some(v) = step.remove("continueOnError") {
                    step.entry("continue_on_error").or_insert(v);
                }
            }
        }
    }
    if let Some(Value::Object(agent)) = obj.get_mut("agent") {
        if let Some(v) = agent.remove("baseUrl") {
            agent.entry("base_url").or_insert(v);
        }
        if let Some(v) = agent.remove("apiKey") {
            agent.entry("api_key").or_insert(v);
        }
    }
    obj
}

/// Reads typed fields, collecting every error instead of stopping at the first.
struct Reader<'a> {
    obj: &'a Map<String, Value>,
    errors: &'a mut Vec<FieldError>,
}

impl Reader<'_> {
    fn fail(&mut self, key: &str, kind: &str, msg: String) {
        self.errors.push(FieldError::new(vec![key.into()], kind, msg));
    }

    fn string(&mut self, key: &str) -> Option<String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.fail(key, "type_error", format!("{key} must be a string, got {}", json_type(other)));
                None
            }
        }
    }

    fn boolean(&mut self, key: &str, default: bool) -> bool {
        match self.obj.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.fail(key, "type_error", format!("{key} must be true or false, got {}", json_type(other)));
                default
            }
        }
    }

    fn number(&mut self, key: &str, default: f64, min: f64, max: f64) -> f64 {
        match self.obj.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if (min..=max).contains(&v) => v,
                _ => {
                    self.fail(key, "value_error", format!("{key} must be between {min} and {max}, got {n}"));
                    default
                }
            },
            Some(other) => {
                self.fail(key, "type_error", format!("{key} must be a number, got {}", json_type(other)));
                default
            }
        }
    }

    fn integer(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        match self.obj.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if (min..=max).contains(&v) => v,
                _ => {
                    self.fail(key, "value_error", format!("{key} must be a whole number from {min} to {max}, got {n}"));
                    default
                }
            },
            Some(other) => {
                self.fail(key, "type_error", format!("{key} must be a whole number, got {}", json_type(other)));
                default
            }
        }
    }

    fn string_list(&mut self, key: &str) -> Vec<String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => self.errors.push(FieldError::new(
                            vec![key.into(), LocSegment::Index(i)],
                            "type_error",
                            format!("{key} holds strings, got {}", json_type(other)),
                        )),
                    }
                }
                out
            }
            Some(other) => {
                self.fail(key, "type_error", format!("{key} must be a list of strings, got {}", json_type(other)));
                Vec::new()
            }
        }
    }

    fn schema(&mut self, key: &str) -> Option<Value> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            Some(v @ (Value::Object(_) | Value::Bool(_))) => Some(v.clone()),
            Some(other) => {
                self.fail(key, "type_error", format!("{key} must be a JSON Schema object, got {}", json_type(other)));
                None
            }
        }
    }

    fn agent(&mut self) -> Option<AgentConfig> {
        let value = self.obj.get("agent").filter(|v| !v.is_null())?;
        let Value::Object(agent) = value else {
            self.fail("agent", "type_error", format!("agent must be an object, got {}", json_type(value)));
            return None;
        };
        let mut field = |name: &str| -> Option<String> {
            match agent.get(name) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    self.errors.push(FieldError::new(
                        vec!["agent".into(), name.into()],
                        "type_error",
                        format!("agent.{name} must be a string, got {}", json_type(other)),
                    ));
                    None
                }
            }
        };
        let provider = field("provider");
        let model = field("model");
        let base_url = field("base_url");
        let api_key = field("api_key");
        if let Some(url) = &base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                self.errors.push(FieldError::new(
                    vec!["agent".into(), "base_url".into()],
                    "value_error",
                    format!("agent.base_url must be an http:// or https:// URL, got {url:?}"),
                ));
            }
        }
        let api_key_secret = api_key.and_then(|key| match sole_secret_reference(&key) {
            Some(name) => Some(name.to_owned()),
            None => {
                self.errors.push(FieldError::new(
                    vec!["agent".into(), "api_key".into()],
                    "value_error",
                    "agent.api_key must name a secret, like \"{{ secrets.PROVIDER_KEY }}\" \
                     (set it with PUT /api/secrets/PROVIDER_KEY); a key is never written into a workflow"
                        .to_owned(),
                ));
                None
            }
        });
        if let Some(p) = &provider {
            if !PROVIDERS.contains(&p.as_str()) {
                self.errors.push(FieldError::new(
                    vec!["agent".into(), "provider".into()],
                    "value_error",
                    format!("unknown provider {p:?}; expected one of {}", PROVIDERS.join(", ")),
                ));
            }
        }
        Some(AgentConfig { provider, model, base_url, api_key_secret })
    }

    fn trigger(&mut self) -> Option<Trigger> {
        let value = self.obj.get("trigger").filter(|v| !v.is_null())?;
        let Value::Object(trigger) = value else {
            self.fail("trigger", "type_error", format!("trigger must be an object, got {}", json_type(value)));
            return None;
        };
        let kind = trigger.get("type").and_then(Value::as_str).unwrap_or("manual").to_owned();
        let schedule = trigger.get("schedule").and_then(Value::as_str).map(str::to_owned);
        match kind.as_str() {
            "manual" => {}
            "schedule" if schedule.as_deref().is_some_and(|s| !s.trim().is_empty()) => {}
            "schedule" => self.errors.push(FieldError::new(
                vec!["trigger".into(), "schedule".into()],
                "value_error",
                "a schedule trigger needs a cron expression in trigger.schedule",
            )),
            other => self.errors.push(FieldError::new(
                vec!["trigger".into(), "type".into()],
                "value_error",
                format!("unknown trigger type {other:?}; expected manual or schedule"),
            )),
        }
        Some(Trigger { kind, schedule })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_apply() {
        let parsed = Specification::parse(&json!({"steps": [{"shell": "true"}]})).unwrap();
        assert_eq!(parsed.spec.timeout_secs, DEFAULT_TIMEOUT_SECS);
        assert_eq!(parsed.spec.retry_attempts, 0);
        assert_eq!(parsed.spec.max_steps, DEFAULT_MAX_STEPS);
        assert_eq!(parsed.spec.concurrency, None);
        assert!(parsed.spec.record_video);
        assert!(parsed.warnings.is_empty());
        assert!(!parsed.spec.needs_browser());
    }

    #[test]
    fn camel_case_is_normalised() {
        let parsed = Specification::parse(&json!({
            "prompt": "p",
            "retryAttempts": 2,
            "urlAllowlist": ["https://a.example"],
            "triggerType": "schedule",
            "scheduleExpression": "0 8 * * 1-5",
            "screens": ["website"],
        }))
        .unwrap();
        assert_eq!(parsed.spec.retry_attempts, 2);
        assert_eq!(parsed.spec.url_allowlist, vec!["https://a.example"]);
        assert_eq!(parsed.spec.trigger.as_ref().unwrap().schedule.as_deref(), Some("0 8 * * 1-5"));
        assert_eq!(parsed.normalized["retry_attempts"], json!(2));
        assert_eq!(parsed.normalized["screens"], json!(["browser"]));
        assert!(parsed.normalized.get("retryAttempts").is_none());
        assert_eq!(parsed.normalized["trigger"]["type"], json!("schedule"));
    }

    #[test]
    fn unknown_keys_are_kept_with_a_warning() {
        let parsed = Specification::parse(&json!({"prompt": "p", "owner": "finance"})).unwrap();
        assert_eq!(parsed.normalized["owner"], json!("finance"));
        assert_eq!(parsed.warnings.len(), 1);
        assert!(parsed.warnings[0].contains("owner"));
    }

    #[test]
    fn every_error_is_reported_with_its_location() {
        let errors = Specification::parse(&json!({
            "timeout": -1,
            "concurrency": 0,
            "steps": [{"shell": "true"}, {"wait": "soon"}],
        }))
        .unwrap_err();
        let locs: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(locs.iter().any(|l| l.starts_with("timeout:")), "{locs:?}");
        assert!(locs.iter().any(|l| l.starts_with("concurrency:")), "{locs:?}");
        assert!(locs.iter().any(|l| l.starts_with("steps.1.wait")), "{locs:?}");
    }

    #[test]
    fn an_empty_specification_is_refused() {
        assert!(Specification::parse(&json!({})).is_err());
        assert!(Specification::parse(&json!({"steps": []})).is_err());
        assert!(Specification::parse(&json!("do it")).is_err());
    }

    #[test]
    fn the_normalised_form_parses_again_to_the_same_thing() {
        let first = Specification::parse(
            &json!({"prompt": "x", "maxSteps": 7, "steps": [{"shell": "a", "continueOnError": true}]}),
        )
        .unwrap();
        let second = Specification::parse(&first.normalized).unwrap();
        assert_eq!(first.spec, second.spec);
        assert_eq!(first.normalized, second.normalized);
    }

    #[test]
    fn unknown_provider_is_refused() {
        let errors = Specification::parse(&json!({"prompt": "x", "agent": {"provider": "skynet"}})).unwrap_err();
        assert!(errors[0].msg.contains("skynet"));
    }
}
