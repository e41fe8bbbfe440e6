//! The execute form, generated from a workflow's `payload_schema`: one field
//! per top-level property (text, number, checkbox, select for enums, a JSON
//! box for objects and lists), required ones marked, descriptions as hints,
//! prefilled from `payload_example` and defaults. A schema that is not an
//! object of properties gets a JSON editor instead.

use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize)]
pub struct Field {
    pub name: String,
    pub label: String,
    /// `string`, `number`, `integer`, `boolean`, `enum` or `json`.
    pub kind: String,
    /// The `<input type>` for strings and numbers.
    pub input_type: String,
    pub required: bool,
    pub options: Vec<String>,
    /// The prefilled value, as text.
    pub value: String,
    pub help: Option<String>,
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The form's fields, or `None` when the schema needs the JSON editor.
pub fn fields(schema: &Value, example: Option<&Value>) -> Option<Vec<Field>> {
    let properties = schema.get("properties")?.as_object()?;
    if properties.is_empty() {
        return None;
    }
    let required: Vec<&str> =
        schema["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let mut fields = Vec::new();
    for (name, property) in properties {
        let prefill =
            example.and_then(|e| e.get(name)).or_else(|| property.get("default")).map(as_text).unwrap_or_default();
        let kind = match (property.get("enum").and_then(Value::as_array), property["type"].as_str()) {
            (Some(_), _) => "enum",
            (None, Some("string")) => "string",
            (None, Some("number")) => "number",
            (None, Some("integer")) => "integer",
            (None, Some("boolean")) => "boolean",
            _ => "json",
        };
        let input_type = match (kind, property["format"].as_str()) {
            ("number" | "integer", _) => "number",
            (_, Some("email")) => "email",
            (_, Some("uri")) => "url",
            (_, Some("date")) => "date",
            _ => "text",
        };
        let value = if kind == "json" && !prefill.is_empty() {
            example
                .and_then(|e| e.get(name))
                .or_else(|| property.get("default"))
                .map(|v| serde_json::to_string_pretty(v).unwrap_or_default())
                .unwrap_or_default()
        } else {
            prefill
        };
        fields.push(Field {
            name: name.clone(),
            label: property["title"].as_str().unwrap_or(name).to_owned(),
            kind: kind.to_owned(),
            input_type: input_type.to_owned(),
            required: required.contains(&name.as_str()),
            options: property["enum"].as_array().map(|o| o.iter().map(as_text).collect()).unwrap_or_default(),
            value,
            help: property["description"].as_str().map(str::to_owned),
        });
    }
    Some(fields)
}

/// The input payload from a submitted form. Empty optional fields are left
/// out; the schema itself is checked when the execution is created.
pub fn parse(fields: &[Field], schema: &Value, form: &HashMap<String, String>) -> Result<Value, Vec<String>> {
    let mut payload = Map::new();
    let mut errors = Vec::new();
    for field in fields {
        let raw = form.get(&format!("field.{}", field.name)).map(|s| s.trim().to_owned()).unwrap_or_default();
        let value = match field.kind.as_str() {
            "boolean" => Some(Value::Bool(raw == "true")),
            _ if raw.is_empty() => None,
            "number" => match raw.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                Some(n) => Some(Value::Number(n)),
                None => {
                    errors.push(format!("{}: {raw:?} is not a number", field.label));
                    None
                }
            },
            "integer" => match raw.parse::<i64>() {
                Ok(n) => Some(Value::from(n)),
                Err(_) => {
                    errors.push(format!("{}: {raw:?} is not a whole number", field.label));
                    None
                }
            },
            "json" => match serde_json::from_str::<Value>(&raw) {
                Ok(v) => Some(v),
                Err(e) => {
                    errors.push(format!("{}: not valid JSON ({e})", field.label));
                    None
                }
            },
            "enum" => {
                // Keep the enum's own type (numbers stay numbers).
                let options = schema["properties"][&field.name]["enum"].as_array().cloned().unwrap_or_default();
                options.into_iter().find(|o| as_text(o) == raw).or(Some(Value::String(raw)))
            }
            _ => Some(Value::String(raw)),
        };
        if let Some(value) = value {
            payload.insert(field.name.clone(), value);
        }
    }
    if errors.is_empty() {
        Ok(Value::Object(payload))
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_form_from_a_schema_and_back() {
        let schema = json!({"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "description": "Who"},
            "count": {"type": "integer", "default": 2},
            "vip": {"type": "boolean"},
            "plan": {"enum": ["free", "pro"]},
            "tags": {"type": "array"},
        }});
        let fields = fields(&schema, Some(&json!({"name": "Ada", "tags": ["a"]}))).unwrap();
        let name = fields.iter().find(|f| f.name == "name").unwrap();
        assert!(name.required && name.value == "Ada" && name.help.as_deref() == Some("Who"));
        assert_eq!(fields.iter().find(|f| f.name == "count").unwrap().value, "2");
        assert_eq!(fields.iter().find(|f| f.name == "plan").unwrap().options, ["free", "pro"]);
        let mut form = HashMap::new();
        form.insert("field.name".to_owned(), "Grace".to_owned());
        form.insert("field.count".to_owned(), "3".to_owned());
        form.insert("field.vip".to_owned(), "true".to_owned());
        form.insert("field.plan".to_owned(), "pro".to_owned());
        form.insert("field.tags".to_owned(), "[1, 2]".to_owned());
        assert_eq!(
            parse(&fields, &schema, &form).unwrap(),
            json!({"name": "Grace", "count": 3, "vip": true, "plan": "pro", "tags": [1, 2]})
        );
        form.insert("field.count".to_owned(), "three".to_owned());
        assert!(parse(&fields, &schema, &form).unwrap_err()[0].contains("whole number"));
        assert!(super::fields(&json!({"type": "object"}), None).is_none());
    }
}
