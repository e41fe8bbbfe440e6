//! The dashboard's pages and form handlers.

use super::session::{self, Session, LOGIN_COOKIE, SESSION_COOKIE, SESSION_TTL};
use super::{error_page, payload_form, render, render_status, to_sign_in, url_escape};
use crate::error::ApiError;
use crate::routes::workflows::{CreateWorkflow, UpdateWorkflow};
use crate::routes::{executions as exec_ops, workflows as wf_ops};
use crate::views::{Artifact, Execution, LogEntryView, Workflow, WorkflowVersion};
use crate::App;
use axum::extract::{Form, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use flywheel_model::time::rfc3339;
use flywheel_model::ExecutionStatus;
use flywheel_store::records::{ExecutionFilter, Page, VersionRef};
use flywheel_store::StoreError;
use minijinja::context;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

type FormMap = HashMap<String, String>;

/// A signed-in request; without a session, a redirect to the sign-in page
/// that comes back here.
pub struct SignedIn(pub Session);

impl FromRequestParts<Arc<App>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Response> {
        match session::from_headers(app, &parts.headers).await {
            Some(session) => Ok(SignedIn(session)),
            None => Err(to_sign_in(parts.uri.path_and_query().map_or("/", |p| p.as_str()))),
        }
    }
}

/// A form posted by a signed-in page, its CSRF token checked.
pub struct SignedForm {
    pub session: Session,
    pub fields: FormMap,
}

impl FromRequest<Arc<App>> for SignedForm {
    type Rejection = Response;

    async fn from_request(request: Request, app: &Arc<App>) -> Result<Self, Response> {
        let Some(session) = session::from_headers(app, request.headers()).await else {
            return Err(to_sign_in("/workflows"));
        };
        let Form(fields) = Form::<FormMap>::from_request(request, app).await.map_err(IntoResponse::into_response)?;
        if !session::csrf_matches(app, &session.nonce, fields.get("csrf")) {
            return Err(error_page(
                StatusCode::FORBIDDEN,
                Some(&session),
                "Form expired",
                "The form was out of date or not from this site. Go back, reload the page and try again.",
            ));
        }
        Ok(SignedForm { session, fields })
    }
}

/// A store or API error as a page.
fn failure(session: Option<&Session>, err: ApiError) -> Response {
    match err {
        ApiError::NotFound(msg) => error_page(StatusCode::NOT_FOUND, session, "Not found", &msg),
        ApiError::Conflict(msg) => error_page(StatusCode::CONFLICT, session, "Not possible", &msg),
        ApiError::Internal(err) => {
            tracing::error!(error = format!("{err:#}"), "dashboard error");
            error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                session,
                "Something went wrong",
                "The server could not do that; the details are in its log.",
            )
        }
        other => error_page(StatusCode::BAD_REQUEST, session, "Not possible", &messages(&other).join("; ")),
    }
}

/// An API error as lines a person can read.
fn messages(err: &ApiError) -> Vec<String> {
    match err {
        ApiError::Validation(fields) => fields
            .iter()
            .map(|f| {
                let loc: Vec<String> = f
                    .loc
                    .iter()
                    .map(|s| match s {
                        flywheel_model::field_error::LocSegment::Key(k) => k.clone(),
                        flywheel_model::field_error::LocSegment::Index(i) => i.to_string(),
                    })
                    .skip_while(|s| s == "body")
                    .collect();
                if loc.is_empty() {
                    f.msg.clone()
                } else {
                    format!("{}: {}", loc.join("."), f.msg)
                }
            })
            .collect(),
        ApiError::NotFound(m) | ApiError::Conflict(m) | ApiError::BadRequest(m) | ApiError::Unauthorized(m) => {
            vec![m.clone()]
        }
        ApiError::Internal(_) => vec!["the server could not do that; the details are in its log".into()],
    }
}

fn redirect_with_cookies(to: &str, cookies: &[String]) -> Response {
    let mut response = Redirect::to(to).into_response();
    for cookie in cookies {
        if let Ok(value) = header::HeaderValue::from_str(cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// Only paths on this site are followed after signing in: `/` and then not
/// another `/` or `\\`, and only visible ASCII (browsers drop tabs and line
/// breaks from URLs, so `/\t/evil.example` would become `//evil.example`).
fn safe_next(next: Option<&String>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n[1..].starts_with('/')
                && !n.contains('\\')
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n.clone()
        }
        _ => "/workflows".into(),
    }
}

// ---- sign in and out ----

pub async fn index(State(app): State<Arc<App>>, headers: HeaderMap, Query(query): Query<FormMap>) -> Response {
    if session::from_headers(&app, &headers).await.is_some() {
        return Redirect::to(&safe_next(query.get("next"))).into_response();
    }
    sign_in_page(&app, StatusCode::OK, query.get("next").map_or("", String::as_str), None)
}

fn sign_in_page(app: &App, status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let nonce = session::random_token();
    let mut response = render_status(
        status,
        "login.html",
        None,
        "",
        context! { login_csrf => session::csrf_for(app, &nonce), next => next, error => error },
    );
    let cookie = session::set_cookie(app, LOGIN_COOKIE, &nonce, Duration::from_secs(3600));
    if let Ok(value) = header::HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

pub async fn login(State(app): State<Arc<App>>, headers: HeaderMap, Form(form): Form<FormMap>) -> Response {
    let next = form.get("next").cloned().unwrap_or_default();
    let nonce = session::cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if nonce.is_empty() || !session::csrf_matches(&app, nonce, form.get("csrf")) {
        return sign_in_page(&app, StatusCode::FORBIDDEN, &next, Some("The sign-in form expired. Please try again."));
    }
    let key = form.get("key").map_or("", |k| k.trim());
    let hash = crate::auth::hash_key(key);
    match app.store.find_api_key(&hash).await {
        Ok(Some(key)) => {
            let (cookie, _) = session::issue(&app, key.id);
            redirect_with_cookies(
                &safe_next(Some(&next)),
                &[session::set_cookie(&app, SESSION_COOKIE, &cookie, SESSION_TTL), session::clear_cookie(LOGIN_COOKIE)],
            )
        }
        Ok(None) => sign_in_page(&app, StatusCode::UNAUTHORIZED, &next, Some("That API key is not valid.")),
        Err(err) => failure(None, err.into()),
    }
}

pub async fn logout(State(app): State<Arc<App>>, SignedForm { session, .. }: SignedForm) -> Response {
    if let Err(err) = session::end(&app, &session).await {
        return failure(Some(&session), err.into());
    }
    redirect_with_cookies("/", &[session::clear_cookie(SESSION_COOKIE)])
}

// ---- workflows ----

pub async fn workflows(
    State(app): State<Arc<App>>,
    SignedIn(session): SignedIn,
    Query(query): Query<FormMap>,
) -> Response {
    match app.store.list_workflows(Page { limit: 50, cursor: query.get("cursor").cloned() }).await {
        Ok(page) => {
            let items: Vec<Workflow> = page.items.into_iter().map(Workflow::from_record).collect();
            render(
                "workflows.html",
                Some(&session),
                "workflows",
                context! { workflows => items, next_cursor => page.next_cursor },
            )
        }
        Err(err) => failure(Some(&session), err.into()),
    }
}

#[derive(Serialize, Default, Clone)]
struct EditorForm {
    name: String,
    slug: String,
    description: String,
    specification: String,
}

const NEW_SPEC: &str =
    "# The steps run in order; strings are templates: {{ input.x }}, {{ vars.y }}, {{ secrets.Z }}.\n\
timeout: 300\n\
steps:\n  - goto: https://example.com\n  - extract: {name: title, selector: h1}\n";

pub async fn new_workflow(SignedIn(session): SignedIn) -> Response {
    let form = EditorForm { specification: NEW_SPEC.into(), ..Default::default() };
    render("editor.html", Some(&session), "workflows", context! { form => form })
}

/// The editor's text as a specification (YAML, which includes JSON).
/// Longest specification the editor takes, in bytes.
const MAX_SPEC_TEXT: usize = 1024 * 1024;
/// Deepest `[`/`{` nesting the editor's YAML may have: the YAML scanner
/// takes time quadratic in it (30,000 levels: seconds of CPU).
const MAX_FLOW_NESTING: usize = 64;

/// Parses the editor's YAML (or JSON) off the async runtime, after cheap
/// checks that keep a hostile text from costing minutes of CPU.
async fn parse_spec_text(text: &str) -> Result<Value, Vec<String>> {
    if text.len() > MAX_SPEC_TEXT {
        return Err(vec![format!(
            "specification: {} KiB is too long; at most {} KiB",
            text.len() / 1024,
            MAX_SPEC_TEXT / 1024
        )]);
    }
    if flow_nesting(text) > MAX_FLOW_NESTING {
        return Err(vec![format!("specification: brackets nest more than {MAX_FLOW_NESTING} deep")]);
    }
    let text = text.to_owned();
    let parsed = tokio::task::spawn_blocking(move || serde_yaml_ng::from_str::<Value>(&text))
        .await
        .map_err(|_| vec!["specification: could not be read".to_owned()])?;
    parsed.map_err(|e| vec![format!("specification: not valid YAML or JSON: {e}")])
}

/// The deepest nesting of `[` and `{`, counted everywhere (in quotes and
/// comments too: an upper bound that no quote can hide brackets from).
fn flow_nesting(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for c in text.chars() {
        match c {
            '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn editor_form(form: &FormMap) -> EditorForm {
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    EditorForm {
        name: get("name"),
        slug: get("slug"),
        description: get("description"),
        specification: get("specification"),
    }
}

fn non_empty(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

pub async fn create_workflow(
    State(app): State<Arc<App>>,
    SignedForm { session, fields: form }: SignedForm,
) -> Response {
    let fields = editor_form(&form);
    let again = |errors: Vec<String>| {
        render_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "editor.html",
            Some(&session),
            "workflows",
            context! { form => &fields, errors => errors },
        )
    };
    let spec = match parse_spec_text(&fields.specification).await {
        Ok(spec) => spec,
        Err(errors) => return again(errors),
    };
    let body = CreateWorkflow {
        name: fields.name.clone(),
        description: non_empty(&fields.description),
        slug: non_empty(&fields.slug),
        specification: Some(spec),
        configuration: None,
    };
    match wf_ops::create(&app, body).await {
        Ok((record, warnings)) if warnings.is_empty() => {
            Redirect::to(&format!("/workflows/{}?saved={}", record.slug, record.current_version)).into_response()
        }
        Ok((record, warnings)) => {
            let workflow = Workflow::from_record(record);
            let form = EditorForm { slug: workflow.slug.clone(), ..fields.clone() };
            render(
                "editor.html",
                Some(&session),
                "workflows",
                context! { form => form, workflow => workflow, warnings => warnings },
            )
        }
        Err(err) => again(messages(&err)),
    }
}

fn spec_yaml(spec: &Value) -> String {
    serde_yaml_ng::to_string(spec).unwrap_or_else(|_| serde_json::to_string_pretty(spec).unwrap_or_default())
}

pub async fn workflow(
    State(app): State<Arc<App>>,
    SignedIn(session): SignedIn,
    Path(id): Path<String>,
    Query(query): Query<FormMap>,
) -> Response {
    let record = match app.store.get_workflow(&id).await {
        Ok(r) => r,
        Err(err) => return failure(Some(&session), err.into()),
    };
    let versions = match app.store.list_versions(record.uuid).await {
        Ok(v) => v,
        Err(err) => return failure(Some(&session), err.into()),
    };
    let yaml = spec_yaml(&record.specification);
    let notice = query.get("saved").map(|v| format!("Saved. This is version {v}."));
    let versions: Vec<WorkflowVersion> = versions.into_iter().map(WorkflowVersion::from).collect();
    render(
        "workflow.html",
        Some(&session),
        "workflows",
        context! { workflow => Workflow::from_record(record), versions => versions, spec_yaml => yaml, notice => notice },
    )
}

pub async fn edit_workflow(
    State(app): State<Arc<App>>,
    SignedIn(session): SignedIn,
    Path(id): Path<String>,
) -> Response {
    match app.store.get_workflow(&id).await {
        Ok(record) => {
            let form = EditorForm {
                name: record.name.clone(),
                slug: record.slug.clone(),
                description: record.description.clone(),
                specification: spec_yaml(&record.specification),
            };
            render(
                "editor.html",
                Some(&session),
                "workflows",
                context! { form => form, workflow => Workflow::from_record(record) },
            )
        }
        Err(err) => failure(Some(&session), err.into()),
    }
}

pub async fn update_workflow(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    SignedForm { session, fields: form }: SignedForm,
) -> Response {
    let current = match app.store.get_workflow(&id).await {
        Ok(r) => Workflow::from_record(r),
        Err(err) => return failure(Some(&session), err.into()),
    };
    let fields = editor_form(&form);
    let again = |errors: Vec<String>| {
        render_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "editor.html",
            Some(&session),
            "workflows",
            context! { form => &fields, workflow => &current, errors => errors },
        )
    };
    let spec = match parse_spec_text(&fields.specification).await {
        Ok(spec) => spec,
        Err(errors) => return again(errors),
    };
    let body = UpdateWorkflow {
        name: Some(fields.name.clone()),
        description: Some(fields.description.trim().to_owned()),
        slug: non_empty(&fields.slug),
        specification: Some(spec),
        configuration: None,
    };
    match wf_ops::update(&app, &current.workflow_uuid.to_string(), body).await {
        Ok((record, warnings)) if warnings.is_empty() => {
            Redirect::to(&format!("/workflows/{}?saved={}", record.slug, record.current_version)).into_response()
        }
        Ok((record, warnings)) => {
            let workflow = Workflow::from_record(record);
            render(
                "editor.html",
                Some(&session),
                "workflows",
                context! { form => &fields, workflow => workflow, warnings => warnings },
            )
        }
        Err(err) => again(messages(&err)),
    }
}

#[derive(Serialize)]
struct DiffRow {
    left: String,
    right: String,
    left_class: &'static str,
    right_class: &'static str,
}

pub async fn versions(
    State(app): State<Arc<App>>,
    SignedIn(session): SignedIn,
    Path(id): Path<String>,
    Query(query): Query<FormMap>,
) -> Response {
    let record = match app.store.get_workflow(&id).await {
        Ok(r) => r,
        Err(err) => return failure(Some(&session), err.into()),
    };
    let pick = |key: &str, default: i64| query.get(key).and_then(|v| v.parse::<i64>().ok()).unwrap_or(default);
    let (a, b) = (pick("a", (record.current_version - 1).max(1)), pick("b", record.current_version));
    let (left, right) = match (
        app.store.get_version(record.uuid, VersionRef::Number(a)).await,
        app.store.get_version(record.uuid, VersionRef::Number(b)).await,
    ) {
        (Ok(l), Ok(r)) => (l, r),
        (Err(err), _) | (_, Err(err)) => return failure(Some(&session), err.into()),
    };
    let (old, new) = (spec_yaml(&left.specification), spec_yaml(&right.specification));
    let diff = similar::TextDiff::from_lines(&old, &new);
    let rows: Vec<DiffRow> = diff
        .iter_all_changes()
        .map(|change| {
            let line = change.value().trim_end_matches('\n').to_owned();
            match change.tag() {
                similar::ChangeTag::Equal => {
                    DiffRow { left: line.clone(), right: line, left_class: "", right_class: "" }
                }
                similar::ChangeTag::Delete => {
                    DiffRow { left: line, right: String::new(), left_class: "del", right_class: "blank" }
                }
                similar::ChangeTag::Insert => {
                    DiffRow { left: String::new(), right: line, left_class: "blank", right_class: "ins" }
                }
            }
        })
        .collect();
    render(
        "versions.html",
        Some(&session),
        "workflows",
        context! {
            workflow => Workflow::from_record(record),
            left => WorkflowVersion::from(left),
            right => WorkflowVersion::from(right),
            rows => rows,
        },
    )
}

pub async fn confirm_delete(
    State(app): State<Arc<App>>,
    SignedIn(session): SignedIn,
    Path(id): Path<String>,
) -> Response {
    let record = match app.store.get_workflow(&id).await {
        Ok(r) => r,
        Err(err) => return failure(Some(&session), err.into()),
    };
    let versions = record.current_version;
    render(
        "confirm_delete.html",
        Some(&session),
        "workflows",
        context! { workflow => Workflow::from_record(record), versions => versions },
    )
}

pub async fn delete_workflow(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    SignedForm { session, .. }: SignedForm,
) -> Response {
    match wf_ops::delete(&app, &id).await {
        Ok(()) => Redirect::to("/workflows").into_response(),
        Err(err) => failure(Some(&session), err),
    }
}

// ---- execute ----

async fn execute_page(
    app: &App,
    session: &Session,
    id: &str,
    status: StatusCode,
    errors: Vec<String>,
    submitted: Option<&FormMap>,
) -> Response {
    let record = match app.store.get_workflow(id).await {
        Ok(r) => r,
        Err(err) => return failure(Some(session), err.into()),
    };
    let spec = &record.specification;
    let example = spec.get("payload_example").filter(|v| !v.is_null());
    let mut fields = spec.get("payload_schema").and_then(|s| payload_form::fields(s, example));
    if let (Some(fields), Some(form)) = (fields.as_mut(), submitted) {
        for field in fields.iter_mut() {
            field.value = form.get(&format!("field.{}", field.name)).cloned().unwrap_or_default();
        }
    }
    let input_json = match submitted.and_then(|f| f.get("input")) {
        Some(text) => text.clone(),
        None => serde_json::to_string_pretty(example.unwrap_or(&Value::Object(Default::default()))).unwrap_or_default(),
    };
    render_status(
        status,
        "execute.html",
        Some(session),
        "workflows",
        context! { workflow => Workflow::from_record(record), fields => fields, input_json => input_json, errors => errors },
    )
}

pub async fn execute_form(
    State(app): State<Arc<App>>,
    SignedIn(session): SignedIn,
    Path(id): Path<String>,
) -> Response {
    execute_page(&app, &session, &id, StatusCode::OK, Vec::new(), None).await
}

pub async fn execute(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    SignedForm { session, fields: form }: SignedForm,
) -> Response {
    let record = match app.store.get_workflow(&id).await {
        Ok(r) => r,
        Err(err) => return failure(Some(&session), err.into()),
    };
    let schema = record.specification.get("payload_schema").cloned().unwrap_or(Value::Null);
    let input = if form.get("mode").map(String::as_str) == Some("form") {
        let example = record.specification.get("payload_example");
        let fields = payload_form::fields(&schema, example).unwrap_or_default();
        payload_form::parse(&fields, &schema, &form)
    } else {
        let text = form.get("input").map_or("", |t| t.trim());
        if text.is_empty() {
            Ok(Value::Object(Default::default()))
        } else {
            serde_json::from_str::<Value>(text).map_err(|e| vec![format!("input: not valid JSON: {e}")])
        }
    };
    let input = match input {
        Ok(input) => input,
        Err(errors) => {
            return execute_page(&app, &session, &id, StatusCode::UNPROCESSABLE_ENTITY, errors, Some(&form)).await
        }
    };
    match exec_ops::queue_execution(&app, &record.uuid.to_string(), input, "input", None).await {
        Ok(execution) => Redirect::to(&format!("/executions/{}", execution.uuid)).into_response(),
        Err(err @ ApiError::Validation(_)) => {
            execute_page(&app, &session, &id, StatusCode::UNPROCESSABLE_ENTITY, messages(&err), Some(&form)).await
        }
        Err(err) => failure(Some(&session), err),
    }
}

// ---- executions ----

#[derive(Serialize)]
struct Period {
    value: &'static str,
    label: &'static str,
}

const PERIODS: &[(&str, &str, i64)] =
    &[("", "Any time", 0), ("1h", "Last hour", 3600), ("24h", "Last 24 hours", 86_400), ("7d", "Last 7 days", 604_800)];

pub async fn executions(
    State(app): State<Arc<App>>,
    SignedIn(session): SignedIn,
    Query(query): Query<FormMap>,
) -> Response {
    let get = |k: &str| query.get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let workflow_filter = get("workflow");
    let status_filter = get("status").and_then(|s| s.parse::<ExecutionStatus>().ok());
    let since_filter = get("since").filter(|s| PERIODS.iter().any(|(v, _, _)| v == s));
    let workflow = match &workflow_filter {
        Some(id) => match app.store.get_workflow(id).await {
            Ok(w) => Some(w),
            Err(StoreError::NotFound(_)) => {
                return error_page(StatusCode::NOT_FOUND, Some(&session), "Not found", "No such workflow.")
            }
            Err(err) => return failure(Some(&session), err.into()),
        },
        None => None,
    };
    let created_after = since_filter
        .as_deref()
        .and_then(|s| PERIODS.iter().find(|(v, _, _)| *v == s))
        .map(|(_, _, secs)| flywheel_model::time::now_ms() - secs * 1000);
    let filter =
        ExecutionFilter { workflow_uuid: workflow.as_ref().map(|w| w.uuid), status: status_filter, created_after };
    let cursor = get("cursor");
    let first_page = cursor.is_none();
    let page = match app.store.list_executions(filter, Page { limit: 50, cursor }).await {
        Ok(p) => p,
        Err(err) => return failure(Some(&session), err.into()),
    };
    let all_workflows =
        app.store.list_workflows(Page { limit: 500, cursor: None }).await.map(|p| p.items).unwrap_or_default();
    // The page's script polls the newest executions of the workflow and
    // period (any status) to update the rows on screen and, on the first
    // page, to notice new ones; the status filter it applies itself.
    let mut page_query = Vec::new();
    let mut live_query = vec!["limit=100".to_owned()];
    if let Some(w) = &workflow {
        page_query.push(format!("workflow={}", w.slug));
        live_query.push(format!("workflow_uuid={}", w.uuid));
    }
    if let Some(s) = status_filter {
        page_query.push(format!("status={s}"));
    }
    if let (Some(since), Some(after)) = (&since_filter, created_after) {
        page_query.push(format!("since={since}"));
        live_query.push(format!("since={}", url_escape(&rfc3339(after))));
    }
    let items: Vec<Execution> = page.items.into_iter().map(|r| Execution::from_record(r, &app.signer)).collect();
    let workflows: Vec<Workflow> = all_workflows.into_iter().map(Workflow::from_record).collect();
    let periods: Vec<Period> = PERIODS.iter().map(|(value, label, _)| Period { value, label }).collect();
    let statuses: Vec<&str> = ExecutionStatus::ALL.iter().map(|s| s.as_str()).collect();
    render(
        "executions.html",
        Some(&session),
        "executions",
        context! {
            executions => items,
            next_cursor => page.next_cursor,
            workflows => workflows,
            statuses => statuses,
            periods => periods,
            filter => context! { workflow => workflow.as_ref().map(|w| w.slug.clone()), status => status_filter.map(|s| s.as_str()), since => since_filter },
            page_query => page_query.join("&"),
            live_query => live_query.join("&"),
            first_page => first_page,
        },
    )
}

#[derive(Serialize)]
struct ActionRow {
    ts: String,
    action: String,
    outcome: String,
    reasoning: Option<String>,
    /// Seconds into the video when it started.
    offset: String,
}

pub async fn execution(State(app): State<Arc<App>>, SignedIn(session): SignedIn, Path(id): Path<String>) -> Response {
    let Ok(id) = uuid::Uuid::parse_str(&id) else {
        return error_page(StatusCode::NOT_FOUND, Some(&session), "Not found", "No such execution.");
    };
    let (record, logs) = match app.store.get_execution_with_logs(id, app.config.inline_log_limit).await {
        Ok(found) => found,
        Err(err) => return failure(Some(&session), err.into()),
    };
    let (logs, _) = flywheel_model::log::newest_within(logs, crate::INLINE_LOG_BYTES);
    let artifacts = app.store.list_artifacts(id).await.unwrap_or_default();
    // The video starts when the agent does.
    let video_zero_ms = logs
        .iter()
        .find(|l| l.message.starts_with("agent ") && l.message.ends_with(" started"))
        .map(|l| l.ts)
        .or(record.started_at)
        .unwrap_or(record.created_at);
    let actions: Vec<ActionRow> = logs
        .iter()
        .filter(|l| l.kind == flywheel_model::LogKind::Action)
        .map(|l| {
            let data = l.data.clone().unwrap_or(Value::Null);
            let started = l.ts - data["duration_ms"].as_i64().unwrap_or(0);
            ActionRow {
                ts: rfc3339(l.ts),
                action: data["action"].as_str().unwrap_or("action").to_owned(),
                outcome: data["outcome"].as_str().unwrap_or(&l.message).to_owned(),
                reasoning: data["reasoning"].as_str().map(str::to_owned),
                offset: format!("{:.2}", ((started - video_zero_ms) as f64 / 1000.0).max(0.0)),
            }
        })
        .collect();
    let truncated = record.log_count > logs.len() as i64;
    let last_seq = logs.last().map_or(0, |l| l.seq);
    let views: Vec<Artifact> = artifacts.into_iter().map(|a| Artifact::from_record(a, &app.signer)).collect();
    let screenshots: Vec<&Artifact> = views.iter().filter(|a| a.kind == "screenshot").collect();
    let failure_shot = screenshots.iter().rev().find(|a| a.name.contains("failure")).copied();
    let files: Vec<&Artifact> = views.iter().filter(|a| a.kind == "file" || a.kind == "download").collect();
    let view = Execution::from_record(record, &app.signer);
    let output_json =
        view.output.as_ref().map_or_else(|| "–".to_owned(), |o| serde_json::to_string_pretty(o).unwrap_or_default());
    let input_json = serde_json::to_string_pretty(&view.input_payload).unwrap_or_default();
    let logs: Vec<LogEntryView> = logs.into_iter().map(LogEntryView::from).collect();
    render(
        "execution.html",
        Some(&session),
        "executions",
        context! {
            e => view,
            logs => logs,
            logs_truncated => truncated,
            last_seq => last_seq,
            actions => actions,
            screenshots => screenshots,
            failure_shot => failure_shot,
            files => files,
            output_json => output_json,
            input_json => input_json,
            video_zero => format!("{:.3}", video_zero_ms as f64 / 1000.0),
        },
    )
}

pub async fn retry(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    SignedForm { session, .. }: SignedForm,
) -> Response {
    let Ok(id) = uuid::Uuid::parse_str(&id) else {
        return error_page(StatusCode::NOT_FOUND, Some(&session), "Not found", "No such execution.");
    };
    match exec_ops::retry(&app, id).await {
        Ok(new) => Redirect::to(&format!("/executions/{}", new.uuid)).into_response(),
        Err(err) => failure(Some(&session), err),
    }
}

pub async fn stop(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    SignedForm { session, .. }: SignedForm,
) -> Response {
    let Ok(id) = uuid::Uuid::parse_str(&id) else {
        return error_page(StatusCode::NOT_FOUND, Some(&session), "Not found", "No such execution.");
    };
    match exec_ops::stop(&app, id).await {
        Ok(_) => Redirect::to(&format!("/executions/{id}")).into_response(),
        Err(err) => failure(Some(&session), err),
    }
}
