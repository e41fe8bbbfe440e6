//! Errors as the API shows them, in FastAPI's shape (what existing clients
//! parse): `{"detail": "message"}` for most, and for invalid bodies a 422
//! with `{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}`.
//!
//! Handlers return [`ApiError`]; store errors convert into it. Anything
//! unexpected is logged with its cause chain and becomes a plain 500 that
//! leaks nothing. [`ApiJson`] is the JSON body extractor that reports bad
//! bodies in the 422 shape, pointing at the offending field.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use flywheel_model::field_error::LocSegment;
use flywheel_model::FieldError;
use flywheel_store::StoreError;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

#[derive(Debug)]
pub enum ApiError {
    /// 401: missing or wrong key.
    Unauthorized(String),
    /// 404
    NotFound(String),
    /// 409: a transition the state machine forbids, or a uniqueness rule.
    Conflict(String),
    /// 400: a malformed request that is not a body (e.g. a bad cursor).
    BadRequest(String),
    /// 422 with field locations.
    Validation(Vec<FieldError>),
    /// 500: logged, never shown.
    Internal(anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// A 422 for one field of the body.
    pub fn field(loc: &[&str], kind: &str, msg: impl Into<String>) -> ApiError {
        let loc = loc.iter().map(|s| LocSegment::Key((*s).to_owned())).collect();
        ApiError::Validation(vec![FieldError::new(loc, kind, msg)])
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::NotFound(format!("{} not found", capitalise(what)))
    }
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().collect::<String>() + chars.as_str(),
        None => String::new(),
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Conflict(msg) => ApiError::Conflict(msg),
            StoreError::Invalid(msg) => ApiError::BadRequest(msg),
            StoreError::Transition(t) => {
                ApiError::Conflict(format!("Execution is {}; it cannot become {}", t.from, t.to))
            }
            StoreError::LeaseLost => ApiError::Conflict("the execution is owned by another worker".into()),
            StoreError::Internal(e) => ApiError::Internal(e),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        ApiError::Internal(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Unauthorized(msg) => {
                let mut response = (StatusCode::UNAUTHORIZED, Json(json!({"detail": msg}))).into_response();
                response.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
                return response;
            }
            ApiError::NotFound(msg) => (StatusCode::NOT_FOUND, json!({"detail": msg})),
            ApiError::Conflict(msg) => (StatusCode::CONFLICT, json!({"detail": msg})),
            ApiError::BadRequest(msg) => (StatusCode::BAD_REQUEST, json!({"detail": msg})),
            ApiError::Validation(errors) => (StatusCode::UNPROCESSABLE_ENTITY, json!({"detail": errors})),
            ApiError::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, json!({"detail": "Internal server error"}))
            }
        };
        (status, Json(body)).into_response()
    }
}

/// A JSON body whose problems come back as FastAPI-style 422s.
pub struct ApiJson<T>(pub T);

/// Like [`ApiJson`], but an empty body or `null` is `None` (for bodies that are optional).
pub struct MaybeJson<T>(pub Option<T>);

/// Parses a JSON body, reporting problems with their location under `body`.
pub fn parse_json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Some(value) = without_nul(bytes) {
        return serde_path_to_error::deserialize(value)
            .map_err(|err| ApiError::Validation(vec![FieldError::from_serde_path(err).prefixed(&["body".into()])]));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|err| {
        let is_syntax = err.inner().is_syntax() || err.inner().is_eof();
        let field = FieldError::from_serde_path(err).prefixed(&["body".into()]);
        let field = if is_syntax {
            FieldError::new(field.loc, "json_invalid", format!("JSON decode error: {}", field.msg))
        } else {
            field
        };
        ApiError::Validation(vec![field])
    })
}

/// A body whose strings or keys hold NUL characters (`\u0000`), with each
/// one replaced by U+FFFD; `None` for the usual body without any.
/// PostgreSQL cannot store NUL in text, so every backend gets the same
/// replacement (as log lines do) rather than one failing: the document
/// says any string is accepted, and it is.
fn without_nul(bytes: &[u8]) -> Option<Value> {
    fn replace(value: &mut Value) {
        match value {
            Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
            Value::Array(items) => items.iter_mut().for_each(replace),
            Value::Object(map) => {
                let entries = std::mem::take(map);
                for (key, mut item) in entries {
                    replace(&mut item);
                    map.insert(key.replace('\0', "\u{FFFD}"), item);
                }
            }
            _ => {}
        }
    }
    // The escape is the only way JSON carries a NUL; most bodies have none.
    if !bytes.windows(6).any(|w| w == b"\\u0000") {
        return None;
    }
    let mut value: Value = serde_json::from_slice(bytes).ok()?;
    replace(&mut value);
    Some(value)
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<axum::body::Bytes, ApiError> {
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| ApiError::Validation(vec![FieldError::new(vec!["body".into()], "body_error", e.body_text())]))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::Validation(vec![FieldError::new(vec!["body".into()], "missing", "Field required")]));
        }
        parse_json_body(&bytes).map(ApiJson)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for MaybeJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(MaybeJson(None));
        }
        // `null` is no body too.
        parse_json_body::<Option<T>>(&bytes).map(MaybeJson)
    }
}
