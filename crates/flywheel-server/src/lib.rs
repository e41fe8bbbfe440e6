//! Flywheel's HTTP API.
//!
//! [`router`] builds the axum app over an [`App`]: the endpoints of SPEC.md
//! under `/api` (in [`routes`]), `/metrics` for Prometheus, and the OpenAPI
//! document generated from the handlers ([`openapi`]). Every `/api` route
//! but health and openapi needs an API key ([`auth`]); artifact downloads
//! also accept a signed URL. Errors have FastAPI's shape ([`error`]).

pub mod auth;
pub mod dashboard;
pub mod error;
pub mod openapi;
pub mod payload;
pub mod routes;
pub mod spec_schema;
pub mod views;

use auth::{KeyCache, UrlSigner};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use flywheel_store::secrets::SecretCipher;
use flywheel_store::{ArtifactStore, Store};
use flywheel_worker::Signals;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Most bytes of log entries (messages and data) an execution's answer
/// carries inline.
pub(crate) const INLINE_LOG_BYTES: usize = 1024 * 1024;

/// Settings of the API.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Serve `/metrics` without a key (for scrapers on a private network).
    pub public_metrics: bool,
    /// Most log entries inlined in a single execution GET.
    pub inline_log_limit: i64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { public_metrics: false, inline_log_limit: 500 }
    }
}

/// Everything a handler needs. Shared as `Arc<App>`.
pub struct App {
    /// Workflows, executions, logs, keys: the source of truth.
    pub store: Arc<dyn Store>,
    /// Artifact bytes.
    pub artifacts: Arc<dyn ArtifactStore>,
    /// Wakes the dispatcher, stops local sandboxes, feeds SSE streams.
    pub signals: Signals,
    /// Signs artifact URLs.
    pub signer: UrlSigner,
    /// Recently verified API keys.
    pub keys: KeyCache,
    /// Seals secret values.
    pub secrets: Arc<SecretCipher>,
    /// Compiled payload schemas, by workflow version.
    pub payload_validators: payload::ValidatorCache,
    /// Renders `/metrics`; `None` when no recorder is installed (tests).
    pub metrics: Option<PrometheusHandle>,
    pub config: ServerConfig,
}

/// The whole HTTP app.
pub fn router(app: Arc<App>) -> Router {
    use routes::{artifacts, demo, events, executions, secrets, system, workflows};
    let protected = Router::new()
        .route("/api/workflows", post(workflows::create_workflow).get(workflows::list_workflows))
        .route(
            "/api/workflows/{id}",
            get(workflows::get_workflow).patch(workflows::update_workflow).delete(workflows::delete_workflow),
        )
        .route("/api/workflows/{id}/versions", get(workflows::list_versions))
        .route("/api/workflows/{id}/version/{version_uuid}", get(workflows::get_version))
        .route("/api/workflows/{id}/execute", post(executions::execute_workflow))
        .route("/api/workflows/{id}/run", post(executions::run_workflow))
        .route("/api/executions", get(executions::list_executions))
        .route("/api/executions/{id}", get(executions::get_execution))
        .route("/api/executions/{id}/retry", post(executions::retry_execution))
        .route("/api/executions/{id}/stop", post(executions::stop_execution))
        .route("/api/executions/{id}/logs", get(executions::list_logs))
        .route("/api/executions/{id}/events", get(events::execution_events))
        .route("/api/executions/{id}/artifacts", get(artifacts::list_artifacts))
        .route("/api/secrets", get(secrets::list_secrets))
        .route("/api/secrets/{name}", axum::routing::put(secrets::put_secret).delete(secrets::delete_secret))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), auth::require_key));
    Router::new()
        .merge(protected)
        .merge(dashboard::router())
        // Checks a key or a signature itself.
        .route("/api/executions/{id}/artifacts/{name}", get(artifacts::download_artifact))
        .route("/api/health", get(system::health))
        .route("/api/openapi.json", get(system::openapi_json))
        .route("/metrics", get(system::metrics))
        .route("/demo/login", get(demo::login))
        .route("/demo/invoices", get(demo::invoices))
        .route("/demo/invoices.csv", get(demo::invoices_csv))
        .fallback(system::not_found)
        .method_not_allowed_fallback(system::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}
