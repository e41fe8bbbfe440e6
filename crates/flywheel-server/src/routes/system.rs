//! Health, the OpenAPI document, Prometheus metrics, and the 404 fallback.

use crate::auth;
use crate::error::{ApiError, ApiResult};
use crate::openapi;
use crate::views::Health;
use crate::App;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flywheel_model::ExecutionStatus;
use std::sync::Arc;

#[utoipa::path(get, path = "/api/health", tag = "system", security(()), responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "system", security(()), responses((status = 200, description = "this document", body = Object)))]
pub async fn openapi_json() -> Json<&'static serde_json::Value> {
    Json(openapi::document())
}

/// Prometheus text format: executions by status, queue depth, sandboxes
/// running, dispatch latency and run duration histograms, counters.
pub async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Response> {
    if !app.config.public_metrics && !auth::has_valid_key(&app, &headers).await? {
        return Err(ApiError::Unauthorized(
            "Not authenticated: /metrics needs an API key (or --public-metrics)".into(),
        ));
    }
    let Some(handle) = &app.metrics else {
        return Err(ApiError::NotFound("Metrics are not enabled".into()));
    };
    let counts = app.store.count_executions_by_status().await?;
    for status in ExecutionStatus::ALL {
        let n = counts.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
        metrics::gauge!("flywheel_executions", "status" => status.as_str()).set(n as f64);
        if status == ExecutionStatus::Queued {
            metrics::gauge!("flywheel_queue_depth").set(n as f64);
        }
    }
    let body = handle.render();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("Not Found".into())
}

pub async fn method_not_allowed() -> axum::response::Response {
    let body = Json(serde_json::json!({"detail": "Method Not Allowed"}));
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, body).into_response()
}
