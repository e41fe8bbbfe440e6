//! Templates in step strings: `{{ input.x }}`, `{{ vars.name }}`,
//! `{{ secrets.NAME }}`, with minijinja (Jinja2 syntax, filters included).
//!
//! A string that is exactly one `{{ expression }}` keeps the expression's JSON
//! type, so `value: "{{ input.items }}"` sets a list, not its text. Anything
//! else renders to a string. Using an undefined value is an error that names
//! it, rather than silently producing an empty string; `| default(...)`
//! opts out.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};
use std::sync::OnceLock;

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env
    })
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
    if !s.contains("{{") && !s.contains("{%") {
        return Ok(Value::String(s.to_owned()));
    }
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
    }
}
