//! The OpenAPI document says what the server does: the schemas of its
//! bodies and parameters accept what the server accepts and refuse what it
//! refuses, and its error bodies have the documented shape. These tests
//! check that at the seams where the two are written separately (a regex
//! in the document, a function in the server); `make fuzz` checks the
//! running server against the whole document.

use axum::response::IntoResponse;
use flywheel_model::Specification as ModelSpecification;
use flywheel_server::error::ApiError;
use flywheel_server::openapi::document;
use flywheel_server::routes::secrets::valid_secret_name;
use flywheel_server::routes::workflows::{validate_name, validate_slug, validate_specification};
use serde_json::{json, Value};

/// A validator for `components.schemas.<name>` of the document.
fn validator(name: &str) -> jsonschema::Validator {
    let doc = document();
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"],
    });
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A validator for the schema of a property of a component.
fn property_validator(component: &str, property: &str) -> jsonschema::Validator {
    let mut schema = document()["components"]["schemas"][component]["properties"][property].clone();
    schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    jsonschema::validator_for(&schema).unwrap()
}

fn parameter_validator(path: &str, method: &str, name: &str) -> jsonschema::Validator {
    let params = document()["paths"][path][method]["parameters"].as_array().unwrap();
    let param = params.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{method} {path} {name}"));
    let mut schema = param["schema"].clone();
    schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    jsonschema::validator_for(&schema).unwrap()
}

const TRICKY_STRINGS: &[&str] = &[
    "",
    " ",
    "\t\n",
    "\u{3000}",
    "\u{1c}",
    "\u{85}",
    "a",
    " a ",
    "Invoice download (EU)",
    "0",
    "-a",
    "a-",
    "ab--c",
    "Abc",
    "_x",
    "x_1",
    "1x",
    "a b",
    "ä",
    "01a23465-b564-77cb-a2ee-d2383629c8ee",
    "01A23465-B564-77CB-A2EE-D2383629C8EE",
    "01a23465b56477cba2eed2383629c8ee",
    "01a23465-b564-77cb-a2ee-d2383629c8e",
    "01a23465-b564-77cb-a2ee-d2383629c8eex",
];

fn long(n: usize) -> String {
    "a".repeat(n)
}

#[test]
fn name_slug_and_secret_name_rules_are_the_documented_ones() {
    for body in ["CreateWorkflow", "UpdateWorkflow"] {
        let pattern = &document()["components"]["schemas"][body]["properties"]["name"]["pattern"];
        assert_eq!(pattern, &json!(flywheel_server::spec_schema::not_blank()), "{body}.name");
    }
    let name = property_validator("CreateWorkflow", "name");
    let slug = property_validator("CreateWorkflow", "slug");
    let secret = parameter_validator("/api/secrets/{name}", "put", "name");
    let mut samples: Vec<String> = TRICKY_STRINGS.iter().map(|s| (*s).to_owned()).collect();
    samples.extend([long(63), long(64), long(65), long(100), long(101), long(200), long(201)]);
    samples.push(format!(" {} ", long(199)));
    for s in &samples {
        let value = json!(s);
        assert_eq!(name.is_valid(&value), validate_name(s).is_ok(), "name {s:?}");
        assert_eq!(slug.is_valid(&value), validate_slug(s).is_ok(), "slug {s:?}");
        assert_eq!(secret.is_valid(&value), valid_secret_name(s), "secret name {s:?}");
    }
}

/// Specifications: whether the document's schema allows each, and whether
/// the server accepts it, must agree.
#[test]
fn the_specification_schema_agrees_with_the_server() {
    let schema = validator("Specification");
    let cases = [
        json!({}),
        json!({"prompt": "Find the invoice"}),
        json!({"prompt": "  "}),
        json!({"prompt": "\u{3000}", "steps": []}),
        json!({"prompt": null, "steps": [{"wait": 1}]}),
        json!({"steps": []}),
        json!({"steps": [{"wait": 1}], "timeout": 0}),
        json!({"steps": [{"wait": 1}], "timeout": 0.5, "retry_attempts": 10, "max_steps": 1, "concurrency": 3}),
        json!({"steps": [{"wait": 1}], "retry_attempts": 11}),
        json!({"steps": [{"wait": 1}], "retry_attempts": 2.0, "max_steps": 9319.0}),
        json!({"steps": [{"wait": 1}], "screens": ["website"]}),
        json!({"steps": [{"wait": 1}], "screens": ["desktop"]}),
        json!({"steps": [{"wait": 1}], "record_video": "yes"}),
        json!({"steps": [{"wait": 1}], "payload_schema": {"type": "object"}, "output_schema": true}),
        json!({"steps": [{"wait": 1}], "payload_schema": "object"}),
        json!({"steps": [{"wait": 1}], "agent": {"provider": "openai", "base_url": "https://x"}}),
        json!({"steps": [{"wait": 1}], "agent": {"provider": "gemini"}}),
        json!({"steps": [{"wait": 1}], "agent": {"base_url": "ftp://x"}}),
        json!({"steps": [{"wait": 1}], "agent": {"api_key": "{{ secrets.KEY }}"}}),
        json!({"steps": [{"wait": 1}], "agent": {"api_key": " {{secrets [ 'K_1' ] }} "}}),
        json!({"steps": [{"wait": 1}], "agent": {"api_key": "{{ secrets.1KEY }}"}}),
        json!({"steps": [{"wait": 1}], "agent": {"api_key": "sk-123"}}),
        json!({"steps": [{"wait": 1}], "unknown": {"kept": true}}),
        json!({"steps": [{"goto": "https://example.com"}, {"goto": {"url": "https://example.com"}}]}),
        json!({"steps": [{"goto": {"url": "x", "extra": 1}}]}),
        json!({"steps": [{"goto": 5}]}),
        json!({"steps": [{"click": "#go"}, {"click": {"text": "Go"}}, {"click": {"x": 1, "y": 2.5}}]}),
        json!({"steps": [{"click": {"selector": "#a", "text": "b"}}]}),
        json!({"steps": [{"click": {"x": 1}}]}),
        json!({"steps": [{"click": {"selector": null, "text": "b", "double": true}}]}),
        json!({"steps": [{"click": {"text": "b", "double": null}}]}),
        json!({"steps": [{"type": {"selector": "#e", "text": "hi", "secret": true}}]}),
        json!({"steps": [{"type": "hi"}]}),
        json!({"steps": [{"press": "Enter"}, {"select": {"selector": "#s", "value": "CA"}}]}),
        json!({"steps": [{"select": {"selector": "#s", "value": "CA", "label": "California"}}]}),
        json!({"steps": [{"select": {"selector": "#s"}}]}),
        json!({"steps": [{"check": "#c"}, {"check": {"selector": "#c", "checked": false}}, {"hover": "#h"}]}),
        json!({"steps": [{"scroll": {}}, {"scroll": {"dy": 100}}, {"scroll": "#list"}]}),
        json!({"steps": [{"wait_for": {"text": "Done", "timeout": 3}}, {"wait_for": ".done"}]}),
        json!({"steps": [{"wait_for": {"text": "Done", "url": "x"}}]}),
        json!({"steps": [{"wait_for": {}}]}),
        json!({"steps": [{"extract": {"name": "t", "selector": ".t", "all": true, "regex": "[0-9]+"}}]}),
        json!({"steps": [{"extract": {"name": "t"}}]}),
        json!({"steps": [{"evaluate": "1 + 1"}, {"evaluate": {"name": "n", "script": "2"}}]}),
        json!({"steps": [{"screenshot": null}, {"screenshot": "after"}, {"screenshot": {"full_page": true}}]}),
        json!({"steps": [{"assert": "Welcome"}, {"assert": {"expression": "true", "message": "m"}}]}),
        json!({"steps": [{"assert": {"message": "m"}}]}),
        json!({"steps": [{"agent": "Do it"}, {"agent": {"prompt": "Do it", "max_steps": 3}}]}),
        json!({"steps": [{"agent": {"prompt": "Do it", "max_steps": -1}}]}),
        json!({"steps": [{"http": "https://x"}, {"http": {"url": "https://x", "method": "POST", "json": {"a": 1}}}]}),
        json!({"steps": [{"http": {"url": "https://x", "json": {"a": 1}, "body": "b"}}]}),
        json!({"steps": [{"http": {"url": "https://x", "json": null, "body": "b", "expect_status": [200.0, 201]}}]}),
        json!({"steps": [{"http": {"url": "https://x", "headers": {"a": 1}}}]}),
        json!({"steps": [{"shell": "echo hi"}, {"shell": {"command": "env", "env": {"A": "1"}}}]}),
        json!({"steps": [{"set": {"name": "g", "value": null}}, {"set": {"name": "g"}}]}),
        json!({"steps": [{"wait": 0}, {"wait": {"seconds": 1.5}}]}),
        json!({"steps": [{"wait": -1}]}),
        json!({"steps": [{"wait": "2"}]}),
        json!({"steps": [{"wait": 1, "name": "pause", "timeout": 5, "continue_on_error": true, "note": "kept"}]}),
        json!({"steps": [{"wait": 1, "timeout": 0}]}),
        json!({"steps": [{"wait": 1, "name": 5}]}),
        json!({"steps": [{"name": "no action"}]}),
        json!({"steps": [{"frobnicate": 1}]}),
        json!({"steps": ["wait"]}),
    ];
    for spec in cases {
        let documented = schema.is_valid(&spec);
        let accepted = validate_specification(&spec).is_ok();
        assert_eq!(documented, accepted, "{spec}: the document says {documented}, the server {accepted}");
    }
}

#[test]
fn the_example_workflows_fit_the_document() {
    let schema = validator("Specification");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        // `flywheel serve --load-examples` puts its own URL there.
        let text = std::fs::read_to_string(&path).unwrap().replace("$FLYWHEEL_URL", "http://127.0.0.1:8080");
        let workflow: Value = serde_yaml_ng::from_str(&text).unwrap();
        let spec = &workflow["specification"];
        assert!(ModelSpecification::parse(spec).is_ok(), "{path:?}");
        let errors: Vec<String> = schema.iter_errors(spec).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{path:?}: {errors:?}");
        seen += 1;
    }
    assert!(seen >= 2, "the examples were found");
}

async fn body_of(error: ApiError) -> (u16, Value) {
    let response = error.into_response();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn error_bodies_have_the_documented_shape() {
    let error_body = validator("ErrorBody");
    let validation_body = validator("ValidationErrorBody");
    let (status, body) = body_of(ApiError::not_found("execution")).await;
    assert_eq!(status, 404);
    assert!(error_body.is_valid(&body), "{body}");
    assert!(!validation_body.is_valid(&body), "{body}");
    let (status, body) = body_of(ApiError::Internal(anyhow::anyhow!("secret cause"))).await;
    assert_eq!(status, 500);
    assert!(error_body.is_valid(&body) && !body.to_string().contains("secret cause"), "{body}");
    let (status, body) = body_of(ApiError::field(&["body", "name"], "missing", "Field required")).await;
    assert_eq!(status, 422);
    assert!(validation_body.is_valid(&body), "{body}");
    assert!(error_body.is_valid(&body), "a 422 is an ErrorBody too: {body}");
    let spec_error = validate_specification(&json!({"steps": [{"wait": 1}, {"frobnicate": 1}]})).unwrap_err();
    let (_, body) = body_of(spec_error).await;
    assert!(validation_body.is_valid(&body), "a loc with an index: {body}");
    assert!(body["detail"][0]["loc"].as_array().unwrap().iter().any(Value::is_u64), "{body}");
}

#[test]
fn nul_characters_in_a_body_become_replacement_characters() {
    let parsed: Value = flywheel_server::error::parse_json_body(br#"{"a": [1, "x\u0000"], "k\u0000": 2}"#).unwrap();
    assert_eq!(parsed, json!({"a": [1, "x\u{FFFD}"], "k\u{FFFD}": 2}));
    let escaped: Value = flywheel_server::error::parse_json_body(br#"{"a": "\\u0000"}"#).unwrap();
    assert_eq!(escaped["a"], "\\u0000", "a backslash, then u0000, is no NUL");
    let error = flywheel_server::error::parse_json_body::<Vec<u8>>(br#"["\u0000"]"#).unwrap_err();
    let ApiError::Validation(fields) = error else { panic!("a 422") };
    assert_eq!(serde_json::to_value(&fields[0]).unwrap()["loc"], json!(["body", 0]), "located as usual");
}

#[test]
fn the_status_filter_lists_every_status() {
    let documented = &document()["components"]["schemas"]["ExecutionStatus"]["enum"];
    let all: Vec<&str> = flywheel_model::ExecutionStatus::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(documented, &json!(all));
}

#[test]
fn every_authenticated_operation_documents_its_errors() {
    for (path, item) in document()["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            let open = operation.get("security").is_some_and(|s| s == &json!([{}]));
            if !open {
                for status in ["401", "500"] {
                    assert!(responses.contains_key(status), "{method} {path} documents {status}");
                }
            }
            let takes_input = operation.get("requestBody").is_some()
                || operation["parameters"].as_array().is_some_and(|p| p.iter().any(|p| p["in"] == "query"));
            if takes_input {
                assert!(responses.contains_key("422"), "{method} {path} documents 422");
            }
        }
    }
}

#[test]
fn links_point_at_operations_that_exist() {
    let paths = document()["paths"].as_object().unwrap();
    let operations: Vec<&Value> = paths.values().flat_map(|item| item.as_object().unwrap().values()).collect();
    let ids: Vec<&str> = operations.iter().filter_map(|op| op["operationId"].as_str()).collect();
    let mut links = 0;
    for operation in &operations {
        assert!(operation["responses"].is_object(), "every operation has responses: {operation}");
        for response in operation["responses"].as_object().unwrap().values() {
            for link in response["links"].as_object().into_iter().flat_map(|l| l.values()) {
                let target = link["operationId"].as_str().unwrap();
                assert!(ids.contains(&target), "a link to {target}");
                links += 1;
            }
        }
    }
    assert!(links > 0);
}
