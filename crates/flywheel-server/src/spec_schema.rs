//! The JSON Schema of a workflow specification, as the OpenAPI document
//! shows it (`components.schemas.Specification` and `Step`).
//!
//! The rules live in `flywheel_model::Specification::parse`; this is their
//! description for clients, kept exact in both directions: what the schema
//! allows, the server accepts, and what it refuses, the server refuses (the
//! schemathesis pass in `scripts/fuzz.py` and `tests/openapi_contract.rs` hold it to
//! that). It is written as JSON rather than with utoipa's builders because
//! utoipa's schema model has no `not` and no boolean schemas, and every
//! keyword here must survive exactly.
//!
//! A few rules no JSON Schema keyword can say are in the descriptions
//! instead: templates (`{{ … }}`, `{% … %}`) must parse, `payload_schema`
//! and `output_schema` must be valid JSON Schemas, and `url_allowlist`
//! entries must be hosts, `*.domain` patterns or URLs. Keys the schema does
//! not type (camelCase spellings, `url_allowlist`, unknown keys) are allowed.

use serde_json::{json, Map, Value};

/// The characters `str::trim` removes (Unicode White_Space), as the body of
/// a regex character class. Spelled out so that every regex engine reads
/// the same set (`\s` differs between them).
pub const WHITESPACE: &str = r"\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// A string that is not only whitespace.
pub fn not_blank() -> String {
    format!("[^{WHITESPACE}]")
}

/// `{{ secrets.NAME }}` or `{{ secrets['NAME'] }}`, the whole string: what
/// `agent.api_key` must be.
pub fn secret_reference() -> String {
    let ws = format!("[{WHITESPACE}]*");
    let name = "[A-Za-z_][A-Za-z0-9_]*";
    format!(r#"^{ws}\{{\{{{ws}secrets{ws}(\.{ws}{name}|\[{ws}['"]{name}['"]{ws}\]){ws}\}}\}}{ws}$"#)
}

fn nullable(kind: &str) -> Value {
    json!({"type": [kind, "null"]})
}

/// An object with exactly these properties (`deny_unknown_fields`).
fn closed(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": required, "properties": properties})
}

/// An action with a short form (a string standing for `key`) and a long form.
fn short_or_long(key: &str, long: Value) -> Value {
    json!({"oneOf": [
        {"type": "string", "description": format!("short for {{\"{key}\": …}}")},
        long,
    ]})
}

/// Several long forms that share their properties, differing in which one
/// of `targets` is given (not null): exactly one of them must be.
fn exactly_one_of(base_required: &[&str], properties: &Map<String, Value>, targets: &[&[&str]]) -> Vec<Value> {
    targets
        .iter()
        .map(|chosen| {
            let mut props = properties.clone();
            for target in targets.iter().flat_map(|t| t.iter()) {
                if !chosen.contains(target) {
                    props.insert((*target).to_owned(), json!({"type": "null"}));
                }
            }
            let mut required: Vec<&str> = base_required.to_vec();
            required.extend_from_slice(chosen);
            closed(&required, Value::Object(props))
        })
        .collect()
}

/// A string short form, then the long forms.
fn with_short_form(description: &str, long: Vec<Value>) -> Vec<Value> {
    let mut forms = vec![json!({"type": "string", "description": description})];
    forms.extend(long);
    forms
}

fn props(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The schema of one action's value, by action key.
fn actions() -> Vec<(&'static str, Value)> {
    let s = || json!({"type": "string"});
    let ns = || nullable("string");
    let nn = || nullable("number");
    let b = || json!({"type": "boolean"});

    let click = props(json!({
        "selector": s(), "text": s(), "x": {"type": "number"}, "y": {"type": "number"},
        "button": ns(), "double": b(),
    }));
    let click_forms = exactly_one_of(&[], &click, &[&["selector"], &["text"], &["x", "y"]]);
    let select = props(json!({"selector": s(), "value": s(), "label": s()}));
    let wait_for = props(json!({"selector": s(), "text": s(), "url": s(), "timeout": nn()}));
    let assert = props(json!({"text": s(), "selector": s(), "url": s(), "expression": s(), "message": ns()}));
    let seconds = json!({"type": "number", "minimum": 0});
    vec![
        ("goto", short_or_long("url", closed(&["url"], json!({"url": s()})))),
        ("click", json!({"oneOf": with_short_form("a CSS selector", click_forms)})),
        ("type", closed(&["text"], json!({"selector": ns(), "text": s(), "secret": b(), "append": b()}))),
        ("press", short_or_long("key", closed(&["key"], json!({"key": s(), "selector": ns()})))),
        ("select", json!({"oneOf": exactly_one_of(&["selector"], &select, &[&["value"], &["label"]])})),
        ("check", short_or_long("selector", closed(&["selector"], json!({"selector": s(), "checked": b()})))),
        ("hover", short_or_long("selector", closed(&["selector"], json!({"selector": s()})))),
        (
            "scroll",
            short_or_long(
                "selector",
                closed(&[], json!({"selector": ns(), "x": nn(), "y": nn(), "dx": nn(), "dy": nn()})),
            ),
        ),
        (
            "wait_for",
            json!({"oneOf": with_short_form(
                "a CSS selector",
                exactly_one_of(&[], &wait_for, &[&["selector"], &["text"], &["url"]]),
            )}),
        ),
        (
            "extract",
            closed(
                &["name", "selector"],
                json!({"name": s(), "selector": s(), "attr": ns(), "all": b(), "regex": ns()}),
            ),
        ),
        ("evaluate", short_or_long("script", closed(&["script"], json!({"name": ns(), "script": s()})))),
        (
            "screenshot",
            json!({"oneOf": [
                {"type": "null"},
                {"type": "string", "description": "short for {\"name\": …}"},
                closed(&[], json!({"name": ns(), "full_page": b()})),
            ]}),
        ),
        (
            "assert",
            json!({"oneOf": with_short_form(
                "short for {\"text\": …}",
                exactly_one_of(&[], &assert, &[&["text"], &["selector"], &["url"], &["expression"]]),
            )}),
        ),
        (
            "agent",
            short_or_long(
                "prompt",
                closed(
                    &["prompt"],
                    json!({"prompt": s(), "name": ns(),
                        "max_steps": {"type": ["integer", "null"], "minimum": 0, "maximum": u32::MAX}}),
                ),
            ),
        ),
        (
            "http",
            short_or_long("url", {
                let mut long = closed(
                    &["url"],
                    json!({
                        "name": ns(), "method": s(), "url": s(),
                        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                        "json": {"description": "a JSON body"}, "body": ns(),
                        "expect_status": {"type": ["array", "null"],
                            "items": {"type": "integer", "minimum": 0, "maximum": u16::MAX}},
                    }),
                );
                long["description"] = json!("json or body, not both");
                long["anyOf"] = json!([
                    {"properties": {"json": {"type": "null"}}},
                    {"properties": {"body": {"type": "null"}}},
                ]);
                long
            }),
        ),
        (
            "shell",
            short_or_long(
                "command",
                closed(
                    &["command"],
                    json!({"command": s(), "name": ns(),
                        "env": {"type": "object", "additionalProperties": {"type": "string"}}}),
                ),
            ),
        ),
        ("set", closed(&["name", "value"], json!({"name": s(), "value": {}}))),
        (
            "wait",
            json!({"oneOf": [
                {"type": "number", "minimum": 0, "description": "seconds"},
                closed(&["seconds"], json!({"seconds": seconds})),
            ]}),
        ),
    ]
}

/// `components.schemas.Step`: one action key and the common keys.
pub fn step() -> Value {
    let variants: Vec<Value> = actions()
        .into_iter()
        .map(|(kind, action)| {
            json!({
                "type": "object",
                "title": kind,
                "required": [kind],
                "properties": {
                    kind: action,
                    "name": {"type": ["string", "null"], "description": "a label for logs"},
                    "timeout": {"type": ["number", "null"], "exclusiveMinimum": 0, "description": "seconds"},
                    "continue_on_error": {"type": ["boolean", "null"]},
                },
            })
        })
        .collect();
    json!({
        "description": "One deterministic step: an object with exactly one action key (goto, click, type, \
            press, select, check, hover, scroll, wait_for, extract, evaluate, screenshot, assert, agent, http, \
            shell, set, wait) and optionally name, timeout and continue_on_error. Other keys are kept with a \
            warning. Strings may be templates ({{ input.x }}, {{ vars.name }}, {{ secrets.NAME }}) and must parse.",
        "oneOf": variants,
    })
}

/// `components.schemas.Specification`.
pub fn specification() -> Value {
    let int = |min: u64, max: u64| json!({"type": ["integer", "null"], "minimum": min, "maximum": max});
    let flag = |what: &str| json!({"type": ["boolean", "null"], "description": what});
    json!({
        "description": "What a workflow does: a prompt for the agent, deterministic steps, or both. Null is the \
            same as absent. The camelCase spellings (startUrl, retryAttempts, maxSteps, urlAllowlist, \
            useGlobalAllowlist, payloadSchema, strictPayload, payloadExample, outputSchema, recordVideo, \
            screenshotEveryAction, acknowledgeSafetyChecks, triggerType, scheduleExpression) are accepted. \
            url_allowlist is a list of hosts (example.com), *.domain patterns or http(s)/ws(s) URLs; \
            payload_schema and output_schema must be valid JSON Schemas; strings that are templates must \
            parse. Unknown keys are kept with a warning.",
        "type": "object",
        "properties": {
            "prompt": {"type": ["string", "null"], "description": "the goal, for the AI agent"},
            "start_url": {"type": ["string", "null"]},
            "screens": {"type": ["array", "null"], "items": {"enum": ["browser", "website"]}},
            "steps": {"type": ["array", "null"], "items": {"$ref": "#/components/schemas/Step"}},
            "timeout": {"type": ["number", "null"], "minimum": 0.001, "maximum": 86_400,
                "description": "seconds for the whole run (default 300)"},
            "retry_attempts": int(0, 10),
            "max_steps": int(1, 10_000),
            "concurrency": int(1, 100_000),
            "use_global_allowlist": flag("also allow the server-wide allowlist (default true)"),
            "payload_schema": {"type": ["object", "boolean", "null"],
                "description": "JSON Schema of the input payload"},
            "strict_payload": flag("refuse (422) a payload that violates payload_schema (default false: a warning)"),
            "payload_example": {"description": "an example input payload"},
            "output_schema": {"type": ["object", "boolean", "null"], "description": "JSON Schema of the output"},
            "agent": {
                "type": ["object", "null"],
                "properties": {
                    "provider": {"enum": ["anthropic", "openai", "openai-compatible", null]},
                    "model": {"type": ["string", "null"]},
                    "base_url": {"type": ["string", "null"], "pattern": "^https?://"},
                    "api_key": {"type": ["string", "null"], "pattern": secret_reference(),
                        "description": "a secret reference, {{ secrets.NAME }}"},
                },
            },
            "trigger": {"type": ["object", "null"], "description": "{type: manual | schedule, schedule: cron}"},
            "record_video": flag("record the screen (default true)"),
            "screenshot_every_action": flag("default false"),
            "acknowledge_safety_checks": flag("default false"),
        },
        "anyOf": [
            {"title": "with a prompt", "required": ["prompt"],
                "properties": {"prompt": {"type": "string", "pattern": not_blank()}}},
            {"title": "with steps", "required": ["steps"],
                "properties": {"steps": {"type": "array", "minItems": 1}}},
        ],
    })
}
