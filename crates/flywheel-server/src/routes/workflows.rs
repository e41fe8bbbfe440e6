//! `/api/workflows`: create, list, get (by uuid or slug), patch (a changed
//! specification publishes a new version), delete (stopping active
//! executions first), and versions.

use super::QueryMap;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::views::{ErrorBody, ValidationErrorBody, VersionList, Workflow, WorkflowPage, WorkflowVersion};
use crate::{payload, App};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use flywheel_model::field_error::LocSegment;
use flywheel_model::{ErrorCode, ExecutionError, FieldError, ParsedSpecification, Specification};
use flywheel_store::records::{NewWorkflow, VersionRef, WorkflowPatch, WorkflowRecord};
use flywheel_store::StoreError;
use flywheel_worker::signals::StopReason;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

/// Body of `POST /api/workflows`: a name and `specification` (or its alias
/// `configuration`).
#[derive(Debug, Deserialize, ToSchema, Default)]
pub struct CreateWorkflow {
    /// 1 to 200 characters, not all whitespace (stored without the whitespace around it).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Lowercase letters, digits and dashes, not a uuid; derived from the name if absent.
    #[serde(default)]
    #[schema(
        max_length = 100,
        pattern = "^(?![0-9a-f]{32}$)(?![0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$)[a-z0-9][a-z0-9-]{0,99}$"
    )]
    pub slug: Option<String>,
    /// The specification (YAML keys as JSON).
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::Specification>)]
    pub specification: Option<Value>,
    /// Alias of `specification`.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::Specification>)]
    pub configuration: Option<Value>,
}

/// Body of `PATCH /api/workflows/{id}`: only what is given changes.
#[derive(Debug, Deserialize, ToSchema, Default)]
pub struct UpdateWorkflow {
    /// 1 to 200 characters, not all whitespace.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Lowercase letters, digits and dashes, not a uuid.
    #[serde(default)]
    #[schema(
        max_length = 100,
        pattern = "^(?![0-9a-f]{32}$)(?![0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$)[a-z0-9][a-z0-9-]{0,99}$"
    )]
    pub slug: Option<String>,
    /// A changed specification publishes a new version.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::Specification>)]
    pub specification: Option<Value>,
    /// Alias of `specification`.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::Specification>)]
    pub configuration: Option<Value>,
}

/// Validates a specification from a request body, including its JSON Schemas.
pub fn validate_specification(spec: &Value) -> Result<ParsedSpecification, ApiError> {
    let prefix: [LocSegment; 2] = ["body".into(), "specification".into()];
    let mut spec = spec.clone();
    whole_numbers_as_integers(&mut spec);
    let parsed = Specification::parse(&spec)
        .map_err(|errors| ApiError::Validation(errors.into_iter().map(|e| e.prefixed(&prefix)).collect()))?;
    let mut errors = Vec::new();
    for key in ["steps", "start_url", "prompt"] {
        if let Some(value) = parsed.normalized.get(key) {
            check_templates(value, &mut vec![LocSegment::from(key)], &mut errors);
        }
    }
    for (key, schema) in
        [("payload_schema", &parsed.spec.payload_schema), ("output_schema", &parsed.spec.output_schema)]
    {
        if let Some(Err(msg)) = schema.as_ref().map(payload::check_schema) {
            errors.push(FieldError::new(
                vec![key.into()],
                "value_error",
                format!("{key} is not a valid JSON Schema: {msg}"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(ApiError::Validation(errors.into_iter().map(|e| e.prefixed(&prefix)).collect()))
    }
}

/// JSON (and JSON Schema's `integer`) has `9.0` the same number as `9`; the
/// model reads whole numbers as integers only, so where it wants one, an
/// integral float becomes that integer.
fn whole_numbers_as_integers(spec: &mut Value) {
    for key in ["retry_attempts", "retryAttempts", "max_steps", "maxSteps", "concurrency"] {
        if let Some(value) = spec.get_mut(key) {
            as_integer(value);
        }
    }
    if let Some(Value::Array(steps)) = spec.get_mut("steps") {
        for step in steps {
            if let Some(value) = step.pointer_mut("/agent/max_steps") {
                as_integer(value);
            }
            if let Some(Value::Array(codes)) = step.pointer_mut("/http/expect_status") {
                codes.iter_mut().for_each(as_integer);
            }
        }
    }
}

/// `9.0` → `9`; anything else stays as it is.
fn as_integer(value: &mut Value) {
    if let Some(n) = value.as_f64().filter(|_| value.is_f64()) {
        if n.fract() == 0.0 && n.abs() < 9.0e15 {
            *value = Value::from(n as i64);
        }
    }
}

/// Reports template syntax errors in every string of `value` (undefined
/// names are only known when it runs). A template too large or nested too
/// deeply is refused before the parser sees it: its recursion would
/// overflow the stack and take the server down.
fn check_templates(value: &Value, loc: &mut Vec<LocSegment>, errors: &mut Vec<FieldError>) {
    match value {
        Value::String(s) if flywheel_model::template::is_template(s) => {
            if let Err(why) = flywheel_model::template::check_bounds(s) {
                errors.push(FieldError::new(loc.clone(), "template_error", format!("invalid template: {why}")));
                return;
            }
            let env = minijinja::Environment::new();
            if let Err(err) = env.template_from_str(s) {
                let detail = err.detail().map(|d| format!(": {d}")).unwrap_or_default();
                errors.push(FieldError::new(
                    loc.clone(),
                    "template_error",
                    format!(
                        "invalid template {:?}: {}{detail}",
                        flywheel_model::protocol::cut_text(s.clone(), 200),
                        err.kind()
                    ),
                ));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                loc.push(LocSegment::Index(i));
                check_templates(item, loc, errors);
                loc.pop();
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                loc.push(LocSegment::Key(key.clone()));
                check_templates(item, loc, errors);
                loc.pop();
            }
        }
        _ => {}
    }
}

/// `specification` or its alias `configuration` (null is absent), not both.
fn pick_specification(specification: Option<Value>, configuration: Option<Value>) -> ApiResult<Option<Value>> {
    match (specification.filter(|v| !v.is_null()), configuration.filter(|v| !v.is_null())) {
        (Some(_), Some(_)) => Err(ApiError::field(
            &["body", "configuration"],
            "value_error",
            "configuration is an alias of specification: give one of them, not both",
        )),
        (spec, config) => Ok(spec.or(config)),
    }
}

/// A name: 1 to 200 characters, not all whitespace (`name` in the
/// document says so with `minLength`, `maxLength` and a `pattern` of
/// [`crate::spec_schema::not_blank`]). Stored without the whitespace around it.
pub fn validate_name(name: &str) -> Result<String, ApiError> {
    let trimmed = name.trim();
    if trimmed.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::field(
            &["body", "name"],
            "value_error",
            "name must have 1 to 200 characters, not all of them whitespace",
        ));
    }
    Ok(trimmed.to_owned())
}

/// A slug: lowercase letters, digits and dashes, not starting with a dash,
/// and not a uuid (a workflow is found by uuid or slug, so a slug that reads
/// as a uuid would hide). The `pattern` of `slug` in the document says the same.
pub fn validate_slug(slug: &str) -> Result<String, ApiError> {
    let ok = !slug.is_empty()
        && slug.len() <= 100
        && slug.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !slug.starts_with('-')
        && Uuid::parse_str(slug).is_err();
    if ok {
        Ok(slug.to_owned())
    } else {
        Err(ApiError::field(
            &["body", "slug"],
            "value_error",
            "slug must be 1 to 100 lowercase letters, digits and dashes, not starting with a dash and not a uuid",
        ))
    }
}

/// `Invoice Download (EU)` → `invoice-download-eu`.
pub fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_end_matches('-').chars().take(80).collect();
    if slug.is_empty() {
        "workflow".to_owned()
    } else if Uuid::parse_str(&slug).is_ok() {
        // A name that is a uuid: its slug must not read as one.
        format!("workflow-{slug}")
    } else {
        slug
    }
}

#[utoipa::path(post, path = "/api/workflows", tag = "workflows", request_body = CreateWorkflow,
    responses((status = 201, body = Workflow, description = "created, version 1 published"), (status = 401, body = ErrorBody, description = "no valid API key"), (status = 409, body = ErrorBody, description = "the slug is taken"), (status = 422, body = ValidationErrorBody, description = "invalid body or parameters")))]
pub async fn create_workflow(
    State(app): State<Arc<App>>,
    ApiJson(body): ApiJson<CreateWorkflow>,
) -> ApiResult<(StatusCode, Json<Workflow>)> {
    let (record, warnings) = create(&app, body).await?;
    let versions = app.store.list_versions(record.uuid).await?;
    let mut view = Workflow::from_record(record);
    view.versions = Some(versions.into_iter().map(WorkflowVersion::from).collect());
    view.warnings = Some(warnings);
    Ok((StatusCode::CREATED, Json(view)))
}

/// Validates and creates a workflow (version 1); a slug derived from the
/// name gets a number if it is taken. Returns it with the warnings.
pub async fn create(app: &App, body: CreateWorkflow) -> ApiResult<(WorkflowRecord, Vec<String>)> {
    let name = validate_name(&body.name)?;
    let spec = pick_specification(body.specification, body.configuration)?
        .ok_or_else(|| ApiError::field(&["body", "specification"], "missing", "Field required"))?;
    let parsed = validate_specification(&spec)?;
    let explicit_slug = body.slug.as_deref().map(validate_slug).transpose()?;
    let base_slug = explicit_slug.clone().unwrap_or_else(|| slugify(&name));
    let mut attempt = 1;
    let record = loop {
        let slug = if attempt == 1 { base_slug.clone() } else { format!("{base_slug}-{attempt}") };
        let new = NewWorkflow {
            uuid: Uuid::now_v7(),
            version_uuid: Uuid::now_v7(),
            name: name.clone(),
            slug,
            description: body.description.clone().unwrap_or_default(),
            specification: parsed.normalized.clone(),
        };
        match app.store.create_workflow(new).await {
            Err(StoreError::Conflict(_)) if explicit_slug.is_none() && attempt < 100 => attempt += 1,
            other => break other?,
        }
    };
    Ok((record, parsed.warnings))
}

/// Validates and applies an edit; a changed specification publishes a
/// new version. Returns the workflow with the warnings.
pub async fn update(app: &App, id: &str, body: UpdateWorkflow) -> ApiResult<(WorkflowRecord, Vec<String>)> {
    let current = super::find_workflow(app, id).await?;
    let name = body.name.as_deref().map(validate_name).transpose()?;
    let slug = body.slug.as_deref().map(validate_slug).transpose()?;
    let parsed =
        pick_specification(body.specification, body.configuration)?.map(|s| validate_specification(&s)).transpose()?;
    let patch = WorkflowPatch {
        name,
        slug,
        description: body.description,
        specification: parsed.as_ref().map(|p| p.normalized.clone()),
        new_version_uuid: Uuid::now_v7(),
    };
    let record = app.store.update_workflow(current.uuid, patch).await?;
    Ok((record, parsed.map(|p| p.warnings).unwrap_or_default()))
}

/// Stops a workflow's active executions, then deletes it with its
/// versions, executions and artifacts.
pub async fn delete(app: &App, id: &str) -> ApiResult<()> {
    let workflow = super::find_workflow(app, id).await?;
    // Stop first, so no sandbox outlives its records.
    for execution in app.store.active_executions_of(workflow.uuid).await? {
        let error = ExecutionError::new(ErrorCode::Stopped, "the workflow was deleted");
        match app.store.fail_execution(execution, error).await {
            Ok(_) | Err(StoreError::Transition(_)) | Err(StoreError::NotFound(_)) => {}
            Err(err) => return Err(err.into()),
        }
        app.signals.stop(execution, StopReason::Stopped);
    }
    let executions = app.store.delete_workflow(workflow.uuid).await?;
    for execution in executions {
        if let Err(err) = app.artifacts.delete_execution(execution).await {
            tracing::warn!(%execution, error = %err, "could not delete artifacts of a deleted workflow");
        }
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/workflows", tag = "workflows",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "1 to 200, default 50"),
        ("cursor" = Option<String>, Query, format = Uuid, description = "next_cursor of the previous page")),
    responses((status = 200, body = WorkflowPage, description = "newest first"), (status = 400, body = ErrorBody, description = "cursor is not a next_cursor"),
        (status = 401, body = ErrorBody, description = "no valid API key"), (status = 422, body = ValidationErrorBody, description = "invalid body or parameters")))]
pub async fn list_workflows(
    State(app): State<Arc<App>>,
    Query(query): Query<QueryMap>,
) -> ApiResult<Json<WorkflowPage>> {
    let paged = app.store.list_workflows(super::page(&query, 50, 200)?).await?;
    Ok(Json(WorkflowPage {
        items: paged.items.into_iter().map(Workflow::from_record).collect(),
        next_cursor: paged.next_cursor,
    }))
}

#[utoipa::path(get, path = "/api/workflows/{id}", tag = "workflows",
    params(("id" = String, Path, pattern = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[a-z0-9][a-z0-9-]{0,99})$", description = "workflow uuid or slug")),
    responses((status = 200, body = Workflow, description = "with its versions"), (status = 401, body = ErrorBody, description = "no valid API key"), (status = 404, body = ErrorBody, description = "no such workflow")))]
pub async fn get_workflow(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<Workflow>> {
    let record = super::find_workflow(&app, &id).await?;
    let versions = app.store.list_versions(record.uuid).await?;
    let mut view = Workflow::from_record(record);
    view.versions = Some(versions.into_iter().map(WorkflowVersion::from).collect());
    Ok(Json(view))
}

#[utoipa::path(patch, path = "/api/workflows/{id}", tag = "workflows", request_body = UpdateWorkflow,
    params(("id" = String, Path, pattern = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[a-z0-9][a-z0-9-]{0,99})$", description = "workflow uuid or slug")),
    responses((status = 200, body = Workflow, description = "updated"), (status = 401, body = ErrorBody, description = "no valid API key"), (status = 404, body = ErrorBody, description = "no such workflow"), (status = 409, body = ErrorBody, description = "the slug is taken"), (status = 422, body = ValidationErrorBody, description = "invalid body or parameters")))]
pub async fn update_workflow(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateWorkflow>,
) -> ApiResult<Json<Workflow>> {
    let (record, warnings) = update(&app, &id, body).await?;
    let versions = app.store.list_versions(record.uuid).await?;
    let mut view = Workflow::from_record(record);
    view.versions = Some(versions.into_iter().map(WorkflowVersion::from).collect());
    view.warnings = Some(warnings);
    Ok(Json(view))
}

#[utoipa::path(delete, path = "/api/workflows/{id}", tag = "workflows",
    params(("id" = String, Path, pattern = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[a-z0-9][a-z0-9-]{0,99})$", description = "workflow uuid or slug")),
    responses((status = 204, description = "deleted, with its versions, executions and artifacts"), (status = 401, body = ErrorBody, description = "no valid API key"), (status = 404, body = ErrorBody, description = "no such workflow")))]
pub async fn delete_workflow(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    delete(&app, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/workflows/{id}/versions", tag = "workflows",
    params(("id" = String, Path, pattern = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[a-z0-9][a-z0-9-]{0,99})$", description = "workflow uuid or slug")),
    responses((status = 200, body = VersionList, description = "oldest first"), (status = 401, body = ErrorBody, description = "no valid API key"), (status = 404, body = ErrorBody, description = "no such workflow")))]
pub async fn list_versions(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<VersionList>> {
    let workflow = super::find_workflow(&app, &id).await?;
    let versions = app.store.list_versions(workflow.uuid).await?;
    Ok(Json(VersionList { items: versions.into_iter().map(WorkflowVersion::from).collect() }))
}

#[utoipa::path(get, path = "/api/workflows/{id}/version/{version_uuid}", tag = "workflows",
    params(("id" = String, Path, pattern = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[a-z0-9][a-z0-9-]{0,99})$", description = "workflow uuid or slug"), ("version_uuid" = String, Path, description = "version uuid, or the version number (1, 2, …)")),
    responses((status = 200, body = WorkflowVersion), (status = 401, body = ErrorBody, description = "no valid API key"), (status = 404, body = ErrorBody, description = "no such workflow or version")))]
pub async fn get_version(
    State(app): State<Arc<App>>,
    Path((id, version)): Path<(String, String)>,
) -> ApiResult<Json<WorkflowVersion>> {
    let workflow = super::find_workflow(&app, &id).await?;
    let version = parse_version_ref(&Value::String(version)).ok_or_else(|| ApiError::not_found("workflow version"))?;
    Ok(Json(app.store.get_version(workflow.uuid, version).await?.into()))
}

/// A version given as a number (`2`, or `"2"`: 1 to 18 digits) or a uuid
/// (hyphenated), as `VersionRef` in the document says.
pub fn parse_version_ref(value: &Value) -> Option<VersionRef> {
    match value {
        Value::Number(_) => {
            let mut n = value.clone();
            as_integer(&mut n);
            n.as_i64().map(VersionRef::Number)
        }
        Value::String(s) if (1..=18).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<i64>().ok().map(VersionRef::Number)
        }
        Value::String(s) if super::is_hyphenated_uuid(s) => Uuid::parse_str(s).ok().map(VersionRef::Uuid),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_derived_from_names() {
        assert_eq!(slugify("Invoice Download (EU)"), "invoice-download-eu");
        assert_eq!(slugify("  --  "), "workflow");
        assert_eq!(slugify("Ärger"), "rger");
        assert!(validate_slug("ok-slug-2").is_ok());
        assert!(validate_slug("Bad Slug").is_err());
        assert!(validate_slug(&Uuid::now_v7().to_string()).is_err());
    }
}
