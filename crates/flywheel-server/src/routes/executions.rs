//! `/api/workflows/{id}/execute` (and `/run`) and `/api/executions`: create,
//! list, get with logs, retry, stop, and paged logs.

use super::workflows::parse_version_ref;
use super::{execution_id, page_limit, query_param, QueryMap};
use crate::error::{ApiError, ApiResult, MaybeJson};
use crate::views::{ErrorBody, Execution, ExecutionPage, LogEntryView, LogPage, ValidationErrorBody};
use crate::App;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use flywheel_model::field_error::LocSegment;
use flywheel_model::{ErrorCode, ExecutionError, ExecutionStatus, Specification};
use flywheel_store::records::{ExecutionFilter, ExecutionLimits, ExecutionRecord, NewExecution, VersionRef};
use flywheel_store::StoreError;
use flywheel_worker::signals::StopReason;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

/// Body of `POST /api/workflows/{id}/execute`; no body is the same as `{}`.
#[derive(Debug, Deserialize, ToSchema, Default)]
pub struct ExecuteWorkflow {
    /// The input payload (an object); `{{ input.* }}` in steps. Default `{}`.
    #[serde(rename = "inputPayload", default)]
    #[schema(value_type = Option<Object>)]
    pub input_payload_camel: Option<Value>,
    /// Alias of `inputPayload` (which wins if both are given).
    #[serde(rename = "input_payload", default)]
    #[schema(value_type = Option<Object>)]
    pub input_payload: Option<Value>,
    /// Run this version instead of the current one.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::VersionRef>)]
    pub version: Option<Value>,
}

#[utoipa::path(post, path = "/api/workflows/{id}/execute", tag = "executions", request_body = Option<ExecuteWorkflow>,
    params(("id" = String, Path, pattern = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[a-z0-9][a-z0-9-]{0,99})$", description = "workflow uuid or slug")),
    responses((status = 201, body = Execution, description = "durably queued"), (status = 401, body = ErrorBody, description = "no valid API key"), (status = 404, body = ErrorBody, description = "no such workflow or version"), (status = 422, body = ValidationErrorBody, description = "invalid body or parameters")))]
pub async fn execute_workflow(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    MaybeJson(body): MaybeJson<ExecuteWorkflow>,
) -> ApiResult<(StatusCode, Json<Execution>)> {
    let body = body.unwrap_or_default();
    let version = match &body.version {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_version_ref(v).ok_or_else(|| {
            ApiError::field(&["body", "version"], "value_error", "version must be a version number or a version uuid")
        })?),
    };
    // Both spellings must be objects (or null), even the one not used.
    for (field, value) in [("inputPayload", &body.input_payload_camel), ("input_payload", &body.input_payload)] {
        if !matches!(value, None | Some(Value::Null | Value::Object(_))) {
            return Err(ApiError::field(&["body", field], "type_error", format!("{field} must be an object")));
        }
    }
    let (input, field) = match (body.input_payload_camel, body.input_payload) {
        (Some(v), _) => (v, "inputPayload"),
        (None, Some(v)) => (v, "input_payload"),
        (None, None) => (Value::Object(Map::new()), "inputPayload"),
    };
    let record = queue_execution(&app, &id, input, field, version).await?;
    let mut view = Execution::from_record(record, &app.signer);
    view.execution_id = Some(view.execution_uuid);
    Ok((StatusCode::CREATED, Json(view)))
}

/// Checks the input against the version's payload_schema (warnings, or a
/// 422 when strict) and queues an execution of `workflow` (uuid or slug),
/// durably, before returning. `field` names the input in error locations.
pub async fn queue_execution(
    app: &App,
    workflow: &str,
    input: Value,
    field: &str,
    version: Option<VersionRef>,
) -> ApiResult<ExecutionRecord> {
    let workflow = super::find_workflow(app, workflow).await?;
    let (version_uuid, spec_value) = match version {
        None => (workflow.current_version_uuid, workflow.specification),
        Some(v) => {
            let record = app.store.get_version(workflow.uuid, v).await?;
            (record.uuid, record.specification)
        }
    };
    let spec = Specification::parse(&spec_value)
        .map_err(|e| {
            ApiError::Internal(anyhow::anyhow!("stored specification of {version_uuid} no longer parses: {e:?}"))
        })?
        .spec;
    let input = match input {
        Value::Null => Value::Object(Map::new()),
        v @ Value::Object(_) => v,
        _ => return Err(ApiError::field(&["body", field], "type_error", format!("{field} must be an object"))),
    };
    let mut warnings = Vec::new();
    if let Some(schema) = &spec.payload_schema {
        let loc: [LocSegment; 2] = ["body".into(), field.into()];
        let violations = app.payload_validators.validate(version_uuid, schema, &input, &loc).map_err(|msg| {
            ApiError::Internal(anyhow::anyhow!("payload_schema of {version_uuid} does not compile: {msg}"))
        })?;
        if !violations.is_empty() {
            if spec.strict_payload {
                return Err(ApiError::Validation(violations));
            }
            warnings.extend(violations.iter().map(ToString::to_string));
        }
    }
    let new = NewExecution {
        uuid: Uuid::now_v7(),
        workflow_uuid: workflow.uuid,
        version_uuid,
        input_payload: input,
        warnings,
        limits: ExecutionLimits {
            timeout_ms: (spec.timeout_secs * 1000.0).round() as i64,
            retry_attempts: i64::from(spec.retry_attempts),
            concurrency: spec.concurrency.map(i64::from),
        },
    };
    let record = app.store.create_execution(new).await?;
    app.signals.wake_dispatcher();
    app.signals.log_appended(record.uuid);
    metrics::counter!("flywheel_executions_created_total").increment(1);
    Ok(record)
}

/// Stops an active execution (its sandbox is killed); 409 if it already ended.
pub async fn stop(app: &App, id: Uuid) -> ApiResult<ExecutionRecord> {
    let error = ExecutionError::new(ErrorCode::Stopped, "stopped on request");
    let record = match app.store.fail_execution(id, error).await {
        Ok(record) => record,
        Err(StoreError::Transition(t)) => {
            return Err(ApiError::Conflict(format!(
                "Execution is already {}; only an active execution can be stopped",
                t.from
            )))
        }
        Err(err) => return Err(err.into()),
    };
    app.signals.stop(id, StopReason::Stopped);
    app.signals.log_appended(id);
    Ok(record)
}

/// Queues a retry of an execution, stopping it first if it is active.
pub async fn retry(app: &App, id: Uuid) -> ApiResult<ExecutionRecord> {
    let outcome = app.store.retry_execution(id).await?;
    metrics::counter!("flywheel_executions_created_total").increment(1);
    if outcome.stopped_old {
        app.signals.stop(id, StopReason::Stopped);
    }
    app.signals.log_appended(id);
    app.signals.log_appended(outcome.new.uuid);
    app.signals.wake_dispatcher();
    Ok(outcome.new)
}

#[utoipa::path(post, path = "/api/workflows/{id}/run", tag = "executions", request_body = Option<ExecuteWorkflow>,
    params(("id" = String, Path, pattern = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[a-z0-9][a-z0-9-]{0,99})$", description = "workflow uuid or slug")),
    responses((status = 201, body = Execution, description = "alias of execute"), (status = 401, body = ErrorBody, description = "no valid API key"), (status = 404, body = ErrorBody, description = "no such workflow or version"), (status = 422, body = ValidationErrorBody, description = "invalid body or parameters")))]
pub async fn run_workflow(
    state: State<Arc<App>>,
    path: Path<String>,
    MaybeJson(body): MaybeJson<ExecuteWorkflow>,
) -> ApiResult<(StatusCode, Json<Execution>)> {
    execute_workflow(state, path, MaybeJson(body)).await
}

#[utoipa::path(get, path = "/api/executions", tag = "executions",
    params(
        ("workflow_uuid" = Option<String>, Query, pattern = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[a-z0-9][a-z0-9-]{0,99})$", description = "only this workflow's (uuid or slug)"),
        ("status" = Option<StatusFilter>, Query, description = "only in this status"),
        ("since" = Option<String>, Query, format = DateTime, description = "only created at or after this RFC 3339 time"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "1 to 200, default 50"),
        ("cursor" = Option<String>, Query, format = Uuid, description = "next_cursor of the previous page")),
    responses((status = 200, body = ExecutionPage, description = "newest first"), (status = 400, body = ErrorBody, description = "cursor is not a next_cursor"),
        (status = 401, body = ErrorBody, description = "no valid API key"), (status = 404, body = ErrorBody, description = "no such workflow"), (status = 422, body = ValidationErrorBody, description = "invalid body or parameters")))]
pub async fn list_executions(
    State(app): State<Arc<App>>,
    Query(query): Query<QueryMap>,
) -> ApiResult<Json<ExecutionPage>> {
    let created_after = match query.get("since") {
        None => None,
        Some(raw) => Some(
            chrono::DateTime::parse_from_rfc3339(raw)
                .map_err(|_| {
                    ApiError::field(
                        &["query", "since"],
                        "value_error",
                        format!("since must be an RFC 3339 time, got {raw:?}"),
                    )
                })?
                .timestamp_millis(),
        ),
    };
    let status =
        query_param::<ExecutionStatus>(&query, "status", "one of pending, queued, running, paused, completed, failed")?;
    let page = super::page(&query, 50, 200)?;
    // An unknown workflow is a 404, as on /api/workflows/{id}.
    let workflow_uuid = match query.get("workflow_uuid") {
        None => None,
        Some(id) => Some(super::find_workflow(&app, id).await?.uuid),
    };
    let filter = ExecutionFilter { created_after, workflow_uuid, status };
    let paged = app.store.list_executions(filter, page).await?;
    Ok(Json(ExecutionPage {
        items: paged.items.into_iter().map(|r| Execution::from_record(r, &app.signer)).collect(),
        next_cursor: paged.next_cursor,
    }))
}

#[utoipa::path(get, path = "/api/executions/{id}", tag = "executions",
    params(("id" = String, Path, format = Uuid, description = "execution uuid")),
    responses((status = 200, body = Execution, description = "with its logs"), (status = 401, body = ErrorBody, description = "no valid API key"), (status = 404, body = ErrorBody, description = "no such execution")))]
pub async fn get_execution(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<Execution>> {
    let id = execution_id(&id)?;
    let (record, logs) = app.store.get_execution_with_logs(id, app.config.inline_log_limit).await?;
    let total = record.log_count;
    // A run's log may be long lines: the answer carries at most
    // INLINE_LOG_BYTES of it (the newest), the rest is at logs_url.
    let fetched = logs.len() as i64;
    let (logs, left_out) = flywheel_model::log::newest_within(logs, crate::INLINE_LOG_BYTES);
    let mut view = Execution::from_record(record, &app.signer);
    view.logs_truncated = Some(left_out || total > fetched);
    view.logs = Some(logs.into_iter().map(LogEntryView::from).collect());
    Ok(Json(view))
}

#[utoipa::path(post, path = "/api/executions/{id}/retry", tag = "executions",
    params(("id" = String, Path, format = Uuid, description = "execution uuid")),
    responses((status = 201, body = Execution, description = "the new execution; the old one is stopped first if still active"), (status = 401, body = ErrorBody, description = "no valid API key"), (status = 404, body = ErrorBody, description = "no such execution"), (status = 409, body = ErrorBody, description = "it was already retried")))]
pub async fn retry_execution(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Execution>)> {
    let id = execution_id(&id)?;
    let new = retry(&app, id).await?;
    let mut view = Execution::from_record(new, &app.signer);
    view.execution_id = Some(view.execution_uuid);
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(post, path = "/api/executions/{id}/stop", tag = "executions",
    params(("id" = String, Path, format = Uuid, description = "execution uuid")),
    responses((status = 200, body = Execution, description = "failed with error.code = stopped"), (status = 401, body = ErrorBody, description = "no valid API key"), (status = 404, body = ErrorBody, description = "no such execution"), (status = 409, body = ErrorBody, description = "already completed or failed")))]
pub async fn stop_execution(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<Execution>> {
    let id = execution_id(&id)?;
    let record = stop(&app, id).await?;
    Ok(Json(Execution::from_record(record, &app.signer)))
}

#[utoipa::path(get, path = "/api/executions/{id}/logs", tag = "executions",
    params(("id" = String, Path, format = Uuid, description = "execution uuid"),
        ("after" = Option<i64>, Query, description = "only entries with a larger seq (default 0)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 200")),
    responses((status = 200, body = LogPage), (status = 401, body = ErrorBody, description = "no valid API key"), (status = 404, body = ErrorBody, description = "no such execution"), (status = 422, body = ValidationErrorBody, description = "invalid body or parameters")))]
pub async fn list_logs(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(query): Query<QueryMap>,
) -> ApiResult<Json<LogPage>> {
    let id = execution_id(&id)?;
    let after = query_param::<i64>(&query, "after", "a sequence number")?.unwrap_or(0);
    let limit = page_limit(&query, 200, 1000)?;
    // A 404 for unknown executions rather than an empty page.
    app.store.get_execution(id).await?;
    let entries = app.store.list_logs(id, after, limit).await?;
    let next_after = (entries.len() as i64 == limit).then(|| entries.last().map(|e| e.seq)).flatten();
    Ok(Json(LogPage { items: entries.into_iter().map(LogEntryView::from).collect(), next_after }))
}

/// The statuses `GET /api/executions?status=` filters by.
#[derive(Serialize, ToSchema)]
#[schema(as = ExecutionStatus)]
#[serde(rename_all = "lowercase")]
pub enum StatusFilter {
    Pending,
    Queued,
    Running,
    Paused,
    Completed,
    Failed,
}
