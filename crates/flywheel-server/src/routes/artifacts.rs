//! Artifacts: the list, and downloads that accept either an API key or a
//! signed URL. Downloads support a single byte range, so a `<video>` can seek.
//! They are served with `nosniff` and a sandboxing CSP: an artifact is
//! content from an untrusted page and must never run as part of Flywheel.

use super::{execution_id, query_param, QueryMap};
use crate::error::{ApiError, ApiResult};
use crate::views::{Artifact, ArtifactList, ErrorBody, ValidationErrorBody, LOGS_ARTIFACT};
use crate::{auth, App};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flywheel_store::artifacts::{content_disposition_for, is_safe_name};
use flywheel_store::records::ArtifactRecord;
use flywheel_store::StoreError;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// How long the presigned URL a download redirects to stays valid (each
/// request for the artifact makes a fresh one).
const PRESIGNED_URL_TTL: Duration = Duration::from_secs(3600);

#[utoipa::path(get, path = "/api/executions/{id}/artifacts", tag = "artifacts",
    params(("id" = String, Path, format = Uuid, description = "execution uuid")),
    responses((status = 200, body = ArtifactList), (status = 401, body = ErrorBody, description = "no valid API key"), (status = 404, body = ErrorBody, description = "no such execution")))]
pub async fn list_artifacts(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<ArtifactList>> {
    let id = execution_id(&id)?;
    app.store.get_execution(id).await?;
    let mut items = app.store.list_artifacts(id).await?;
    // The log is always there: until the worker stores the file (once the
    // execution has ended), it is rendered from the entries written so far.
    if !items.iter().any(|a| a.name == LOGS_ARTIFACT) {
        // Measured a page at a time: a long log is never whole in memory.
        let mut pages = flywheel_worker::run::full_log_stream(app.store.clone(), id);
        let mut size = 0i64;
        while let Some(page) = pages.next().await {
            size += page.map_err(|e| ApiError::Internal(e.into()))?.len() as i64;
        }
        items.push(ArtifactRecord {
            execution: id,
            name: LOGS_ARTIFACT.to_owned(),
            kind: "logs".to_owned(),
            content_type: "application/x-ndjson".to_owned(),
            size,
            created_at: flywheel_model::time::now_ms(),
        });
    }
    Ok(Json(ArtifactList { items: items.into_iter().map(|a| Artifact::from_record(a, &app.signer)).collect() }))
}

#[utoipa::path(get, path = "/api/executions/{id}/artifacts/{name}", tag = "artifacts",
    params(("id" = String, Path, format = Uuid, description = "execution uuid"), ("name" = String, Path, description = "artifact name"),
        ("expires" = Option<i64>, Query, description = "from a signed URL"), ("signature" = Option<String>, Query, description = "from a signed URL")),
    responses(
        (status = 200, description = "the bytes, with the artifact's own content type", content_type = "*/*", body = Vec<u8>),
        (status = 206, description = "a byte range (`Range: bytes=…`)", content_type = "*/*", body = Vec<u8>),
        (status = 307, description = "artifacts in a bucket: a presigned URL to fetch them from (`Location`)"),
        (status = 401, body = ErrorBody, description = "no valid API key, and no valid signature"),
        (status = 404, body = ErrorBody, description = "no such execution or artifact"),
        (status = 416, description = "unsatisfiable range"),
        (status = 422, body = ValidationErrorBody, description = "invalid body or parameters")))]
pub async fn download_artifact(
    State(app): State<Arc<App>>,
    Path((id, name)): Path<(String, String)>,
    Query(query): Query<QueryMap>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = execution_id(&id)?;
    match (query_param::<i64>(&query, "expires", "a Unix time")?, query.get("signature")) {
        (Some(expires), Some(signature)) => {
            if !app.signer.verify(id, &name, expires, signature) {
                return Err(ApiError::Unauthorized("Invalid or expired signature: ask the API for a fresh URL".into()));
            }
        }
        _ => {
            if !auth::has_valid_key(&app, &headers).await? {
                return Err(ApiError::Unauthorized("Not authenticated: send an API key or use a signed URL".into()));
            }
        }
    }
    if !is_safe_name(&name) {
        return Err(ApiError::not_found("artifact"));
    }
    let record = match app.store.get_artifact(id, &name).await {
        Ok(record) => record,
        Err(StoreError::NotFound(_)) if name == LOGS_ARTIFACT => return render_log_from_store(&app, id).await,
        Err(err) => return Err(err.into()),
    };
    let size = record.size.max(0) as u64;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(raw) => match parse_range(raw, size) {
            Some(range) => Some(range),
            None => {
                let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                insert(&mut response, header::CONTENT_RANGE, &format!("bytes */{size}"));
                return Ok(response);
            }
        },
    };
    // A bucket serves its bytes itself, through a short-lived presigned URL
    // (the client repeats its Range header there).
    if let Some(url) = app.artifacts.presigned_url(id, &name, PRESIGNED_URL_TTL).await? {
        let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
        insert(&mut response, header::LOCATION, &url);
        insert(&mut response, header::CACHE_CONTROL, "private, no-store");
        return Ok(response);
    }
    let body = app.artifacts.open(id, &name, range.clone()).await?;
    let mut response = Response::new(Body::from_stream(body.stream));
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let end = body.range.end.saturating_sub(1);
        insert(&mut response, header::CONTENT_RANGE, &format!("bytes {}-{end}/{}", body.range.start, body.size));
    }
    insert(&mut response, header::CONTENT_LENGTH, &(body.range.end - body.range.start).to_string());
    insert(&mut response, header::CONTENT_TYPE, &record.content_type);
    insert(&mut response, header::ACCEPT_RANGES, "bytes");
    insert(&mut response, header::CONTENT_DISPOSITION, &content_disposition_for(&name, &record.content_type));
    secure(&mut response);
    Ok(response)
}

/// The full log straight from the store, for an execution whose log
/// artifact is not written yet (it is written once the execution ends).
async fn render_log_from_store(app: &App, id: uuid::Uuid) -> ApiResult<Response> {
    app.store.get_execution(id).await?;
    let pages = flywheel_worker::run::full_log_stream(app.store.clone(), id);
    let mut response = Response::new(Body::from_stream(pages));
    insert(&mut response, header::CONTENT_TYPE, "application/x-ndjson");
    insert(&mut response, header::CONTENT_DISPOSITION, &format!("inline; filename=\"{LOGS_ARTIFACT}\""));
    secure(&mut response);
    Ok(response)
}

fn insert(response: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn secure(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=300"));
}

/// One range of `bytes=a-b`, `bytes=a-` or `bytes=-n` within `size`.
fn parse_range(raw: &str, size: u64) -> Option<std::ops::Range<u64>> {
    let spec = raw.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (size.saturating_sub(n), size)
        }
        (start, "") => (start.parse().ok()?, size),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.saturating_add(1).min(size)),
    };
    (start < end && start < size).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Some(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Some(90..100));
        assert_eq!(parse_range("bytes=50-500", 100), Some(50..100));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
