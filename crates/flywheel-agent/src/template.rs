//! Templates in step strings: `{{ input.x }}`, `{{ vars.name }}`,
//! `{{ secrets.NAME }}`, with minijinja (Jinja2 syntax, filters included).
//!
//! A string that is exactly one `{{ expression }}` keeps the expression's JSON
//! type, so `value: "{{ input.items }}"` sets a list, not its text. Anything
//! else renders to a string. Using an undefined value is an error that names
//! it, rather than silently producing an empty string; `| default(...)`
//! opts out.
//!
//! A `shell` command is rendered by [`render_step`] so that every value in
//! it is quoted for where it lands (see [`crate::shell_template`]);
//! `| raw` inserts a value as code. Every template is checked against
//! [`flywheel_model::template::check_bounds`] before it is parsed.

use crate::shell_template;
use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex, OnceLock};

/// An environment with Flywheel's rules: undefined values are errors, and
/// `| raw` marks a value to be inserted as it is.
fn new_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.add_filter("raw", |value: minijinja::Value| minijinja::Value::from_safe_string(value.to_string()));
    env
}

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(new_environment)
}

/// A template that could not be rendered.
#[derive(Debug)]
pub struct TemplateError {
    pub template: String,
    pub message: String,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "could not render {:?}: {}", self.template, self.message)
    }
}

impl std::error::Error for TemplateError {}

/// Renders a raw step: a `shell` step's command with every value quoted
/// for the shell, everything else like [`render_value`].
pub fn render_step(
    raw: &Value,
    input: &Value,
    vars: &Map<String, Value>,
    secrets: &Map<String, Value>,
) -> Result<Value, TemplateError> {
    fn command_slot(step: &mut Value) -> Option<&mut Value> {
        match step.get_mut("shell")? {
            slot @ Value::String(_) => Some(slot),
            Value::Object(body) => body.get_mut("command"),
            _ => None,
        }
    }
    let mut raw = raw.clone();
    let command = command_slot(&mut raw).and_then(|slot| match std::mem::replace(slot, Value::String(String::new())) {
        Value::String(command) => Some(command),
        other => {
            *slot = other;
            None
        }
    });
    let mut rendered = render_value(&raw, input, vars, secrets)?;
    if let (Some(command), Some(slot)) = (command, command_slot(&mut rendered)) {
        let ctx = serde_json::json!({"input": input, "vars": vars, "secrets": secrets});
        *slot = Value::String(render_shell(&command, &ctx)?);
    }
    Ok(rendered)
}

/// Renders a shell command: values become placeholders, then go back in
/// quoted for their context.
fn render_shell(command: &str, ctx: &Value) -> Result<String, TemplateError> {
    if !flywheel_model::template::is_template(command) {
        return Ok(command.to_owned());
    }
    let fail = |message: String| TemplateError { template: command.to_owned(), message };
    flywheel_model::template::check_bounds(command).map_err(fail)?;
    let nonce = {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new().build_hasher().finish()
    };
    let values: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut env = new_environment();
    // Here `| raw` marks code with a type of its own: a value that another
    // filter marked safe (`| e`, `| tojson`, `| safe`) is still data.
    env.add_filter("raw", |value: minijinja::Value| minijinja::Value::from_object(RawCode(value.to_string())));
    let seen = values.clone();
    env.set_formatter(move |out, _state, value| {
        if let Some(code) = value.downcast_object_ref::<RawCode>() {
            return out
                .write_str(&code.0)
                .map_err(|_| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "could not write"));
        }
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.push(value.to_string());
        out.write_str(&shell_template::placeholder(nonce, seen.len() - 1))
            .map_err(|_| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "could not write"))
    });
    let rendered = env.render_str(command, ctx).map_err(|e| fail(describe(&e)))?;
    let values = values.lock().unwrap_or_else(|e| e.into_inner()).clone();
    shell_template::quote_values(&rendered, nonce, &values).map_err(fail)
}

/// Text a shell command inserts as code (`| raw`).
#[derive(Debug)]
struct RawCode(String);

impl minijinja::value::Object for RawCode {}

/// Renders every string inside `value`.
pub fn render_value(
    value: &Value,
    input: &Value,
    vars: &Map<String, Value>,
    secrets: &Map<String, Value>,
) -> Result<Value, TemplateError> {
    let ctx = serde_json::json!({"input": input, "vars": vars, "secrets": secrets});
    render_in(value, &ctx)
}

fn render_in(value: &Value, ctx: &Value) -> Result<Value, TemplateError> {
    Ok(match value {
        Value::String(s) => render_string(s, ctx)?,
        Value::Array(items) => Value::Array(items.iter().map(|v| render_in(v, ctx)).collect::<Result<_, _>>()?),
        Value::Object(map) => Value::Object(
            map.iter().map(|(k, v)| Ok((k.clone(), render_in(v, ctx)?))).collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

fn render_string(s: &str, ctx: &Value) -> Result<Value, TemplateError> {
    if !flywheel_model::template::is_template(s) {
        return Ok(Value::String(s.to_owned()));
    }
    flywheel_model::template::check_bounds(s).map_err(|message| TemplateError { template: s.to_owned(), message })?;
    let error = |e: minijinja::Error| TemplateError { template: s.to_owned(), message: describe(&e) };
    if let Some(expr) = single_expression(s) {
        let value = environment().compile_expression(expr).map_err(error)?.eval(ctx).map_err(error)?;
        if value.is_undefined() {
            return Err(TemplateError { template: s.to_owned(), message: format!("{} is undefined", expr.trim()) });
        }
        return serde_json::to_value(&value)
            .map_err(|e| TemplateError { template: s.to_owned(), message: e.to_string() });
    }
    environment().render_str(s, ctx).map(Value::String).map_err(error)
}

/// `"{{ expr }}"` with nothing around it and no other tag inside.
fn single_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner)
}

fn describe(err: &minijinja::Error) -> String {
    let mut msg = err.kind().to_string();
    if let Some(detail) = err.detail() {
        msg.push_str(": ");
        msg.push_str(detail);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(v: Value) -> Result<Value, TemplateError> {
        let vars = json!({"greeting": "hi", "n": 3}).as_object().unwrap().clone();
        let secrets = json!({"TOKEN": "s3cr3t"}).as_object().unwrap().clone();
        render_value(&v, &json!({"name": "Ada", "items": [1, 2]}), &vars, &secrets)
    }

    #[test]
    fn renders_strings_everywhere() {
        let out = render(json!({"text": "Hello {{ input.name }}", "list": ["{{ vars.greeting }}!"], "n": 5})).unwrap();
        assert_eq!(out, json!({"text": "Hello Ada", "list": ["hi!"], "n": 5}));
        assert_eq!(render(json!("Bearer {{ secrets.TOKEN }}")).unwrap(), json!("Bearer s3cr3t"));
    }

    #[test]
    fn a_lone_expression_keeps_its_type() {
        assert_eq!(render(json!("{{ input.items }}")).unwrap(), json!([1, 2]));
        assert_eq!(render(json!("{{ vars.n * 2 }}")).unwrap(), json!(6));
        assert_eq!(render(json!("{{ input.name }} and {{ input.name }}")).unwrap(), json!("Ada and Ada"));
    }

    #[test]
    fn undefined_values_are_errors_unless_defaulted() {
        let err = render(json!("{{ input.missing }}")).unwrap_err();
        assert!(err.to_string().contains("input.missing"), "{err}");
        assert!(render(json!("x {{ input.missing }}")).is_err());
        assert_eq!(render(json!("{{ input.missing | default('none') }}")).unwrap(), json!("none"));
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(render(json!("{{ input.name ")).is_err());
        let deep = format!("{{{{ {}1 }}}}", "-".repeat(10_000));
        assert!(render(json!(deep)).unwrap_err().message.contains("at most"));
    }

    /// The worst templates the bounds let through parse and render on a
    /// thread with the stack of a runtime worker (2 MiB), unoptimised.
    #[test]
    fn templates_within_the_bounds_fit_a_small_stack() {
        use flywheel_model::template::{check_bounds, MAX_BRANCHES, MAX_NESTING, MAX_OPERATORS, MAX_UNARY};
        let worst = [
            format!("{{{{ {}1{} }}}}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING)),
            format!("{{{{ {}1 }}}}", "- ".repeat(MAX_UNARY)),
            format!("{{{{ {}x }}}}", "not ".repeat(MAX_UNARY)),
            format!("{{{{ 1{} }}}}", "+1".repeat(MAX_OPERATORS)),
            format!("{{{{ vars.n{} }}}}", "|abs".repeat(MAX_OPERATORS - 1)),
            format!("{{{{ 1{} }}}}", " if vars.n else 1".repeat(MAX_OPERATORS / 3)),
            format!("{}x{}", "{% if vars.n %}".repeat(MAX_NESTING), "{% endif %}".repeat(MAX_NESTING)),
            format!("{{% if vars.n %}}{}{{% endif %}}", "{% elif vars.n %}".repeat(MAX_BRANCHES)),
        ];
        for template in worst {
            assert!(check_bounds(&template).is_ok(), "within the bounds: {template}");
            let rendered = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || {
                    let _ = minijinja::Environment::new().template_from_str(&template).map(|_| ());
                    render(json!(template)).map(|_| ())
                })
                .unwrap()
                .join();
            assert!(rendered.is_ok(), "the thread survived");
        }
    }

    #[test]
    fn shell_commands_quote_their_values() {
        let vars = Map::new();
        let secrets = json!({"TOKEN": "a b"}).as_object().unwrap().clone();
        let input = json!({"name": "x'; id; echo '", "cmd": "ls -la"});
        let step = |raw: Value| render_step(&raw, &input, &vars, &secrets).unwrap();
        assert_eq!(step(json!({"shell": "echo '{{ input.name }}'"})), json!({"shell": r"echo 'x'\''; id; echo '\'''"}));
        assert_eq!(
            step(
                json!({"shell": {"command": "{{ input.cmd | raw }} {{ secrets.TOKEN }}", "env": {"N": "{{ input.name }}"}}})
            ),
            json!({"shell": {"command": "ls -la 'a b'", "env": {"N": "x'; id; echo '"}}})
        );
        assert_eq!(
            step(json!({"set": {"name": "n", "value": "{{ input.name }}"}})),
            json!({"set": {"name": "n", "value": "x'; id; echo '"}})
        );
        // Filters that mark a value safe for HTML or JSON leave it data here.
        for filtered in ["{{ input.name | tojson }}", "{{ input.name | e }}", "{{ input.name | safe }}"] {
            let command = step(json!({"shell": format!("echo {filtered}")}));
            assert!(command["shell"].as_str().unwrap().starts_with("echo '"), "{filtered}: {command}");
        }
    }
}
