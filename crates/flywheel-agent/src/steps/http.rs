//! `http`: one HTTP request from inside the sandbox. The response
//! (`{status, headers, body}`, the body parsed as JSON when it is JSON)
//! becomes a named value with `name`. A status outside `expect_status`
//! (default: 2xx and 3xx) fails the step.

use crate::RunContext;
use anyhow::{bail, Context};
use flywheel_model::step::HttpStep;
use serde_json::{Map, Value};
use std::time::{Duration, Instant};

/// Default time a request may take, when the step sets no timeout.
const DEFAULT_TIMEOUT_SECS: f64 = 30.0;
/// Largest response body read.
const MAX_BODY: usize = 10 * 1024 * 1024;
/// Most redirects followed.
const MAX_REDIRECTS: usize = 10;

pub async fn run(ctx: &mut RunContext, index: u32, step: &HttpStep, timeout: Option<f64>) -> anyhow::Result<()> {
    let method = reqwest::Method::from_bytes(step.method.to_ascii_uppercase().as_bytes())
        .with_context(|| format!("invalid HTTP method {:?}", step.method))?;
    let url = reqwest::Url::parse(&step.url).with_context(|| format!("invalid URL {:?}", step.url))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("only http and https URLs are supported, not {:?}", url.scheme());
    }
    if !ctx.allowlist.allows(url.as_str()) {
        bail!("{method} {url} is blocked: it is not in url_allowlist");
    }
    // A redirect is a request too: it must stay inside the allowlist.
    let allowlist = ctx.allowlist.clone();
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if allowlist.allows(attempt.url().as_str()) {
            attempt.follow()
        } else {
            let blocked = format!("a redirect to {} is blocked: it is not in url_allowlist", attempt.url());
            attempt.error(blocked)
        }
    });
    // Through the egress proxy when the sandbox has one (HTTP_PROXY says so
    // too; this does not depend on it).
    let mut client = reqwest::Client::builder().redirect(redirects);
    if let Some(proxy) = &ctx.proxy {
        client = client.proxy(reqwest::Proxy::all(proxy).context("the egress proxy's address")?);
    }
    let client = client
        .timeout(Duration::from_secs_f64(timeout.unwrap_or(DEFAULT_TIMEOUT_SECS)))
        .user_agent(concat!("flywheel-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("could not create an HTTP client")?;
    let mut request = client.request(method.clone(), url.clone());
    for (name, value) in &step.headers {
        request = request.header(name, value);
    }
    if let Some(json) = &step.json {
        request = request.json(json);
    } else if let Some(body) = &step.body {
        request = request.body(body.clone());
    }
    let started = Instant::now();
    let mut response = request
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{method} {url} failed: {:#}", anyhow::Error::new(e.without_url())))?;
    // Refused by the egress proxy: say why, not just its status.
    if ctx.proxy.is_some() {
        if let Some(why) = response.headers().get(flywheel_model::protocol::REFUSED_HEADER) {
            bail!("{method} {url}: {}", why.to_str().unwrap_or("refused by the egress proxy"));
        }
    }
    let status = response.status().as_u16();
    let mut headers = Map::new();
    for (name, value) in response.headers() {
        headers.insert(name.as_str().to_owned(), Value::String(value.to_str().unwrap_or_default().to_owned()));
    }
    let is_json = headers.get("content-type").and_then(Value::as_str).is_some_and(|ct| ct.contains("json"));
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.with_context(|| format!("reading the response of {method} {url}"))? {
        if bytes.len() + chunk.len() > MAX_BODY {
            bail!("the response of {method} {url} is larger than {} MiB", MAX_BODY / 1024 / 1024);
        }
        bytes.extend_from_slice(&chunk);
    }
    let body = if is_json {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    } else {
        Value::String(String::from_utf8_lossy(&bytes).into_owned())
    };
    ctx.emitter.log("info", format!("{method} {url} → {status} ({} ms)", started.elapsed().as_millis()), Some(index));
    let accepted = match &step.expect_status {
        Some(codes) => codes.contains(&status),
        None => (200..400).contains(&status),
    };
    if let Some(name) = &step.name {
        let mut value = Map::new();
        value.insert("status".into(), Value::from(status));
        value.insert("headers".into(), Value::Object(headers));
        value.insert("body".into(), body);
        ctx.set_value(name, Value::Object(value));
    }
    if !accepted {
        bail!("{method} {url} answered {status}, which the step does not accept");
    }
    Ok(())
}
