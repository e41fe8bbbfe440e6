//! The handlers, by resource, and the small parsing helpers they share.

pub mod artifacts;
pub mod demo;
pub mod events;
pub mod executions;
pub mod secrets;
pub mod system;
pub mod workflows;

use crate::error::ApiError;
use std::collections::HashMap;
use std::str::FromStr;
use uuid::Uuid;

/// Query parameters, parsed by hand so that bad values get FastAPI's 422
/// (`loc: ["query", name]`) instead of a bare 400.
pub type QueryMap = HashMap<String, String>;

/// Reads an optional query parameter of type `T`.
pub fn query_param<T: FromStr>(query: &QueryMap, name: &str, what: &str) -> Result<Option<T>, ApiError> {
    match query.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
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

/// An execution id from the path; anything that is not a uuid cannot exist.
pub fn execution_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("execution"))
}
