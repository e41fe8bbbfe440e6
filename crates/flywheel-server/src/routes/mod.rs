//! The handlers, by resource, and the small parsing helpers they share.

pub mod artifacts;
pub mod demo;
pub mod events;
pub mod executions;
pub mod secrets;
pub mod system;
pub mod workflows;

use crate::error::ApiError;
use crate::App;
use flywheel_store::records::{Page, WorkflowRecord};
use std::collections::HashMap;
use std::str::FromStr;
use uuid::Uuid;

/// Query parameters, parsed by hand so that bad values get FastAPI's 422
/// (`loc: ["query", name]`) instead of a bare 400.
pub type QueryMap = HashMap<String, String>;

/// Reads an optional query parameter of type `T`. A parameter that is
/// present must hold a value of that type, as the OpenAPI document says:
/// `?limit=` is as wrong as `?limit=abc` (FastAPI answers both with a 422).
pub fn query_param<T: FromStr>(query: &QueryMap, name: &str, what: &str) -> Result<Option<T>, ApiError> {
    match query.get(name) {
        None => Ok(None),
        Some(raw) => raw.parse().map(Some).map_err(|_| {
            ApiError::field(&["query", name], "value_error", format!("{name} must be {what}, got {raw:?}"))
        }),
    }
}

/// `limit`: 1 to `max`, default `default`.
pub fn page_limit(query: &QueryMap, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = query_param::<i64>(query, "limit", "a whole number")?.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::field(&["query", "limit"], "value_error", format!("limit must be between 1 and {max}")));
    }
    Ok(limit)
}

/// `?limit&cursor`: a cursor is the `next_cursor` of a previous page, the
/// uuid of that page's last item, in the hyphenated form the document
/// names (`format: uuid`); anything else is a 400.
pub fn page(query: &QueryMap, default: i64, max: i64) -> Result<Page, ApiError> {
    let limit = page_limit(query, default, max)?;
    let cursor = query.get("cursor").cloned();
    if let Some(cursor) = &cursor {
        if !is_hyphenated_uuid(cursor) {
            return Err(ApiError::BadRequest(format!(
                "invalid cursor {cursor:?}; use the next_cursor of a previous page"
            )));
        }
    }
    Ok(Page { limit, cursor })
}

/// Whether `s` is a uuid in its usual 36-character form (what JSON
/// Schema's `format: uuid` means); the uuid crate also reads other forms.
pub fn is_hyphenated_uuid(s: &str) -> bool {
    s.len() == 36 && Uuid::try_parse(s).is_ok()
}

/// A workflow by uuid or slug (`{id}` and `?workflow_uuid=`). Anything
/// shaped like neither cannot exist, so it is a 404 without asking the
/// store (as the document's `pattern` for these says).
pub async fn find_workflow(app: &App, id: &str) -> Result<WorkflowRecord, ApiError> {
    let slug_shaped = (1..=100).contains(&id.len())
        && !id.starts_with('-')
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !slug_shaped && Uuid::parse_str(id).is_err() {
        return Err(ApiError::not_found("workflow"));
    }
    Ok(app.store.get_workflow(id).await?)
}

/// An execution id from the path; anything that is not a uuid cannot exist.
pub fn execution_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("execution"))
}
