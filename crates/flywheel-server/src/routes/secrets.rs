//! `/api/secrets`: named values for `{{ secrets.NAME }}`. Stored sealed,
//! listed by name only, never returned, and resolved only inside the
//! sandbox of an execution that uses them.

use crate::error::{ApiError, ApiJson, ApiResult};
use crate::views::{ErrorBody, Secret, SecretList, ValidationErrorBody};
use crate::App;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use flywheel_model::time::rfc3339;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::ToSchema;

/// Longest secret value, in characters (what JSON Schema's `maxLength` counts).
const MAX_SECRET_CHARS: usize = 64 * 1024;

/// Body of `PUT /api/secrets/{name}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PutSecret {
    /// The value (never shown again): 1 to 65,536 characters.
    #[schema(min_length = 1, max_length = 65536)]
    pub value: String,
}

/// Letters, digits and underscores, not starting with a digit: usable as
/// `{{ secrets.NAME }}`.
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

#[utoipa::path(put, path = "/api/secrets/{name}", tag = "secrets", request_body = PutSecret,
    params(("name" = String, Path, pattern = "^[A-Za-z_][A-Za-z0-9_]{0,63}$", description = "1 to 64 letters, digits and _, not starting with a digit")),
    responses((status = 201, body = Secret, description = "created"), (status = 200, body = Secret, description = "replaced"),
        (status = 401, body = ErrorBody, description = "no valid API key"), (status = 422, body = ValidationErrorBody, description = "invalid body or parameters")))]
pub async fn put_secret(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PutSecret>,
) -> ApiResult<(StatusCode, Json<Secret>)> {
    if !valid_secret_name(&name) {
        return Err(ApiError::field(
            &["path", "name"],
            "value_error",
            "a secret name is 1 to 64 letters, digits and underscores, not starting with a digit",
        ));
    }
    if body.value.is_empty() || body.value.chars().count() > MAX_SECRET_CHARS {
        return Err(ApiError::field(&["body", "value"], "value_error", "a secret value has 1 to 65,536 characters"));
    }
    let sealed = app.secrets.seal(&name, &body.value)?;
    let created = app.store.put_secret(&name, sealed).await?;
    let info = app
        .store
        .list_secrets()
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ApiError::not_found("secret"))?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((
        status,
        Json(Secret { name: info.name, created_at: rfc3339(info.created_at), updated_at: rfc3339(info.updated_at) }),
    ))
}

#[utoipa::path(get, path = "/api/secrets", tag = "secrets",
    responses((status = 200, body = SecretList, description = "names only"), (status = 401, body = ErrorBody, description = "no valid API key")))]
pub async fn list_secrets(State(app): State<Arc<App>>) -> ApiResult<Json<SecretList>> {
    let items = app.store.list_secrets().await?;
    Ok(Json(SecretList {
        items: items
            .into_iter()
            .map(|s| Secret { name: s.name, created_at: rfc3339(s.created_at), updated_at: rfc3339(s.updated_at) })
            .collect(),
    }))
}

#[utoipa::path(delete, path = "/api/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, pattern = "^[A-Za-z_][A-Za-z0-9_]{0,63}$", description = "secret name")),
    responses((status = 204, description = "deleted"), (status = 401, body = ErrorBody, description = "no valid API key"), (status = 404, body = ErrorBody, description = "no such secret")))]
pub async fn delete_secret(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    if !valid_secret_name(&name) {
        // No secret can have such a name.
        return Err(ApiError::not_found("secret"));
    }
    app.store.delete_secret(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
