//! The OpenAPI document, generated from the handlers' annotations. A
//! snapshot test keeps it from changing by accident.
//!
//! The document is a contract a generated client relies on: every status
//! an endpoint answers is listed with its body, and every rule the server
//! enforces on a parameter or a body is a schema keyword (`minimum`,
//! `pattern`, `format`, …), so a request the schema allows is accepted and
//! one it refuses is refused. `make fuzz` (schemathesis) checks both ways.
//!
//! Most of it comes from utoipa's attributes. [`document`] adds what they
//! cannot say: the specification's schema ([`crate::spec_schema`]), which
//! of `specification`/`configuration` a body must give, and the 500 every
//! authenticated endpoint may answer.
//!
//! Where a rule is written twice, as a `pattern` in an attribute here and
//! as code in a handler (names, slugs, secret names), `tests/openapi_contract.rs`
//! checks that the two agree.

use crate::routes::{artifacts, events, executions, secrets, system, workflows};
use crate::views;
use serde_json::{json, Value};
use std::sync::OnceLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Flywheel", description = "Run AI computer-use agents as workflows: define a workflow, execute it with an input payload, watch it run in a sandbox, read its logs, output and artifacts.\n\nErrors have FastAPI's shape: `{\"detail\": \"message\"}`, and for a 422 `{\"detail\": [{\"loc\", \"msg\", \"type\"}]}`.\n\nA NUL character (`\\u0000`) in the text of a request body is kept as U+FFFD: PostgreSQL cannot store NUL, and every backend does the same."),
    paths(
        workflows::create_workflow, workflows::list_workflows, workflows::get_workflow, workflows::update_workflow,
        workflows::delete_workflow, workflows::list_versions, workflows::get_version,
        executions::execute_workflow, executions::run_workflow, executions::list_executions, executions::get_execution,
        executions::retry_execution, executions::stop_execution, executions::list_logs,
        events::execution_events, artifacts::list_artifacts, artifacts::download_artifact,
        secrets::put_secret, secrets::list_secrets, secrets::delete_secret,
        system::health, system::openapi_json,
    ),
    components(schemas(
        views::Workflow, views::WorkflowVersion, views::Execution, views::ExecutionErrorView, views::LogEntryView,
        views::Artifact, views::WorkflowPage, views::ExecutionPage, views::VersionList, views::LogPage,
        views::ArtifactList, views::Health, views::ErrorBody, views::ErrorDetail, views::ValidationErrorBody,
        views::ValidationError, views::LocItem, views::ExecutionEvent, views::Secret, views::SecretList, views::Usage,
        workflows::CreateWorkflow, workflows::UpdateWorkflow, executions::ExecuteWorkflow, executions::StatusFilter,
        secrets::PutSecret,
        Specification, Step, VersionRef,
    )),
    modifiers(&Security),
    security(("bearer" = []), ("x_api_key" = []), ("kinetic_api_key" = [])),
    tags((name = "workflows"), (name = "executions"), (name = "artifacts"), (name = "secrets"), (name = "system")),
)]
pub struct ApiDoc;

/// The whole document, as served at `/api/openapi.json` (built once).
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(build_document)
}

fn build_document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let schemas = &mut doc["components"]["schemas"];
    schemas["Specification"] = crate::spec_schema::specification();
    schemas["Step"] = crate::spec_schema::step();
    schemas["VersionRef"] = json!({
        "description": "A version of a workflow: its number (1, 2, …, also as a string) or its uuid.",
        "oneOf": [
            {"type": "integer", "format": "int64"},
            {"type": "string", "pattern": "^[0-9]{1,18}$"},
            {"type": "string", "format": "uuid"},
        ],
    });
    // `specification` or its alias `configuration`, one of them (null is absent).
    let spec = || json!({"$ref": "#/components/schemas/Specification"});
    let absent = || json!({"type": "null"});
    schemas["CreateWorkflow"]["oneOf"] = json!([
        {"title": "specification", "required": ["specification"],
            "properties": {"specification": spec(), "configuration": absent()}},
        {"title": "configuration", "required": ["configuration"],
            "properties": {"configuration": spec(), "specification": absent()}},
    ]);
    schemas["UpdateWorkflow"]["description"] =
        json!("Only what is given changes; `specification` or its alias `configuration`, not both.");
    schemas["UpdateWorkflow"]["anyOf"] = json!([
        {"properties": {"specification": absent()}},
        {"properties": {"configuration": absent()}},
    ]);
    add_links(&mut doc);
    // Any authenticated endpoint may meet a failure of its own (the
    // database is gone, …): a 500 with `{"detail": "Internal server error"}`.
    if let Some(paths) = doc["paths"].as_object_mut() {
        for operation in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|item| item.values_mut()) {
            if let Some(responses) = operation["responses"].as_object_mut() {
                if responses.contains_key("401") && !responses.contains_key("500") {
                    responses.insert("500".into(), error_response("Internal error; the cause is in the server's log"));
                }
            }
        }
    }
    doc
}

/// Links from what a response creates to what can be done with it next
/// (OpenAPI `links`: a client can follow them, and the fuzzer does).
fn add_links(doc: &mut Value) {
    const WORKFLOW: &str = "$response.body#/workflow_uuid";
    const EXECUTION: &str = "$response.body#/execution_uuid";
    let from_workflow: &[(&str, &[(&str, &str)])] = &[
        ("get_workflow", &[("id", WORKFLOW)]),
        ("update_workflow", &[("id", WORKFLOW)]),
        ("delete_workflow", &[("id", WORKFLOW)]),
        ("list_versions", &[("id", WORKFLOW)]),
        ("get_version", &[("id", WORKFLOW), ("version_uuid", "$response.body#/workflow_version_uuid")]),
        ("execute_workflow", &[("id", WORKFLOW)]),
        ("list_executions", &[("workflow_uuid", WORKFLOW)]),
    ];
    let from_execution: &[(&str, &[(&str, &str)])] = &[
        ("get_execution", &[("id", EXECUTION)]),
        ("stop_execution", &[("id", EXECUTION)]),
        ("retry_execution", &[("id", EXECUTION)]),
        ("list_logs", &[("id", EXECUTION)]),
        ("execution_events", &[("id", EXECUTION)]),
        ("list_artifacts", &[("id", EXECUTION)]),
    ];
    let from_secret: &[(&str, &[(&str, &str)])] = &[("delete_secret", &[("name", "$request.path.name")])];
    for (path, method, status, links) in [
        ("/api/workflows", "post", "201", from_workflow),
        ("/api/workflows/{id}", "patch", "200", from_workflow),
        ("/api/workflows/{id}/execute", "post", "201", from_execution),
        ("/api/workflows/{id}/run", "post", "201", from_execution),
        ("/api/executions/{id}/retry", "post", "201", from_execution),
        ("/api/secrets/{name}", "put", "201", from_secret),
        ("/api/secrets/{name}", "put", "200", from_secret),
    ] {
        let response = &mut doc["paths"][path][method]["responses"][status];
        for (operation, parameters) in links {
            let parameters: serde_json::Map<String, Value> =
                parameters.iter().map(|(name, value)| ((*name).to_owned(), json!(value))).collect();
            response["links"][*operation] = json!({"operationId": operation, "parameters": parameters});
        }
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    })
}

/// `components.schemas.Specification`; its schema is [`crate::spec_schema::specification`].
pub struct Specification;

/// `components.schemas.Step`; its schema is [`crate::spec_schema::step`].
pub struct Step;

/// `components.schemas.VersionRef`; its schema is in [`build_document`]
/// (utoipa cannot put a `pattern` on one variant of a `oneOf`).
pub struct VersionRef;

macro_rules! filled_in_later {
    ($($name:ident),*) => {$(
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new().into()
            }
        }
        impl utoipa::ToSchema for $name {}
    )*};
}
filled_in_later!(Specification, Step, VersionRef);

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components
            .add_security_scheme("x_api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
        components.add_security_scheme(
            "kinetic_api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("kinetic-api-key"))),
        );
    }
}
