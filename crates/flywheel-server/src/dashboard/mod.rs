//! The web dashboard `flywheel serve` serves at `/`: sign in with an API key,
//! workflows (list, create, edit, versions side by side, delete), execute from
//! a form generated from the payload schema, executions (filters, paging,
//! live statuses) and an execution's page (live log, action timeline that
//! seeks the video, screenshots, output, error, retry and stop).
//!
//! Server-rendered with minijinja; a little plain JavaScript; every template
//! and asset is embedded in the binary. The pages read the store directly
//! and change things through the same functions as the API; the page's
//! JavaScript reads the JSON API with the session cookie (GET only).

pub mod pages;
pub mod payload_form;
pub mod session;

use crate::App;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use minijinja::{context, Environment, Value as Ctx};
use session::Session;
use std::sync::{Arc, OnceLock};

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../templates/base.html")),
    ("login.html", include_str!("../../templates/login.html")),
    ("workflows.html", include_str!("../../templates/workflows.html")),
    ("workflow.html", include_str!("../../templates/workflow.html")),
    ("editor.html", include_str!("../../templates/editor.html")),
    ("versions.html", include_str!("../../templates/versions.html")),
    ("confirm_delete.html", include_str!("../../templates/confirm_delete.html")),
    ("execute.html", include_str!("../../templates/execute.html")),
    ("executions.html", include_str!("../../templates/executions.html")),
    ("execution.html", include_str!("../../templates/execution.html")),
    ("error.html", include_str!("../../templates/error.html")),
];
const APP_CSS: &str = include_str!("../../assets/app.css");
const APP_JS: &str = include_str!("../../assets/app.js");

/// Changes with the assets, so browsers fetch new ones after an upgrade.
fn asset_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(format!("{APP_CSS}{APP_JS}").as_bytes())[..6])
    })
}

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            // The templates are part of the binary; one that does not parse is a bug caught by the tests.
            if let Err(err) = env.add_template(name, source) {
                tracing::error!(template = name, error = %err, "a dashboard template does not parse");
            }
        }
        env.add_filter("short_time", |ts: Option<String>| -> String {
            ts.and_then(|t| t.get(..19).map(|s| s.replace('T', " "))).unwrap_or_else(|| "–".into())
        });
        // Artifact URLs as paths on this site: the page's Content-Security-Policy
        // allows only its own origin, which need not be the configured public URL.
        env.add_filter("local_url", |url: Option<String>| -> String {
            url.map(|u| local_url(&u).to_owned()).unwrap_or_default()
        });
        // UUIDv7s share their leading (time) digits; the random tail tells them apart.
        env.add_filter("short_id", |id: String| -> String {
            id.get(id.len().saturating_sub(8)..).unwrap_or_default().to_owned()
        });
        env.add_filter("clock", |ts: Option<String>| -> String {
            ts.and_then(|t| t.get(11..19).map(str::to_owned)).unwrap_or_default()
        });
        env.add_filter("duration", |ms: Option<i64>| -> String {
            match ms {
                None => "–".into(),
                Some(ms) if ms < 1000 => format!("{ms} ms"),
                Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
                Some(ms) => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
            }
        });
        env
    })
}

/// `https://host/path?q` → `/path?q`; a path stays as it is.
fn local_url(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => url,
    }
}

/// Renders a page; `session` fills the header and the forms' CSRF token.
pub fn render(name: &str, session: Option<&Session>, nav: &str, page: Ctx) -> Response {
    render_status(StatusCode::OK, name, session, nav, page)
}

/// Renders a page with this status (validation errors are 422, and so on).
pub fn render_status(status: StatusCode, name: &str, session: Option<&Session>, nav: &str, page: Ctx) -> Response {
    let ctx = context! {
        session => session.is_some(),
        csrf => session.map(|s| s.csrf.clone()),
        nav => nav,
        asset_version => asset_version(),
        ..page
    };
    match environment().get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => {
            let mut response = (status, Html(html)).into_response();
            secure_headers(response.headers_mut());
            response
        }
        Err(err) => {
            tracing::error!(template = name, error = format!("{err:#}"), "could not render a page");
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal server error").into_response()
        }
    }
}

/// Pages are never framed, never sniffed, and only run our own script.
fn secure_headers(headers: &mut HeaderMap) {
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, header::HeaderValue::from_static(value));
    };
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "same-origin");
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
    );
    set(headers, header::CACHE_CONTROL, "no-store");
}

/// An error page.
pub fn error_page(status: StatusCode, session: Option<&Session>, title: &str, message: &str) -> Response {
    render_status(status, "error.html", session, "", context! { title => title, message => message })
}

/// To the sign-in page, coming back to `next` afterwards.
pub fn to_sign_in(next: &str) -> Response {
    let next: String = url_escape(next);
    Redirect::to(&format!("/?next={next}")).into_response()
}

/// Percent-encodes everything but unreserved characters and `/`.
pub(crate) fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=31536000, immutable")], body)
        .into_response()
}

/// The dashboard's routes.
pub fn router() -> Router<Arc<App>> {
    use pages::*;
    Router::new()
        .route("/", get(index))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/workflows", get(workflows).post(create_workflow))
        .route("/workflows/new", get(new_workflow))
        .route("/workflows/{id}", get(workflow).post(update_workflow))
        .route("/workflows/{id}/edit", get(edit_workflow))
        .route("/workflows/{id}/versions", get(versions))
        .route("/workflows/{id}/delete", get(confirm_delete).post(delete_workflow))
        .route("/workflows/{id}/execute", get(execute_form).post(execute))
        .route("/executions", get(executions))
        .route("/executions/{id}", get(execution))
        .route("/executions/{id}/retry", post(retry))
        .route("/executions/{id}/stop", post(stop))
        .route("/static/app.css", get(stylesheet))
        .route("/static/app.js", get(script))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_template_parses() {
        let mut check = minijinja::Environment::new();
        for (name, source) in super::TEMPLATES {
            check.add_template(name, source).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
        let env = super::environment();
        for (name, _) in super::TEMPLATES {
            env.get_template(name).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }
}
