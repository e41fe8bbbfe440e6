//! The OpenAPI document, generated from the handlers' annotations. A
//! snapshot test keeps it from changing by accident.

use crate::routes::{artifacts, events, executions, secrets, system, workflows};
use crate::views;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Flywheel", description = "Run AI computer-use agents as workflows: define a workflow, execute it with an input payload, watch it run in a sandbox, read its logs, output and artifacts."),
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
        views::ArtifactList, views::Health, views::ErrorBody,
        views::Secret, views::SecretList, views::Usage,
        workflows::CreateWorkflow, workflows::UpdateWorkflow, executions::ExecuteWorkflow, secrets::PutSecret,
    )),
    modifiers(&Security),
    security(("bearer" = []), ("x_api_key" = []), ("kinetic_api_key" = [])),
    tags((name = "workflows"), (name = "executions"), (name = "artifacts"), (name = "secrets"), (name = "system")),
)]
pub struct ApiDoc;

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
