//! The dashboard: server-side checks of sign-in, sessions and CSRF, and
//! browser tests in the machine's headless Chromium that sign in, create a
//! workflow, execute it from the form, watch its status turn completed
//! without a reload, open a screenshot, play the video, retry and stop.
//! With UPDATE_SCREENSHOTS=1 they also save the main pages to
//! docs/screenshots/.

mod common;

use common::*;
use flywheel_agent::browser::{Browser, BrowserOptions, Page, Target};
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};

/// An HTTP client that keeps cookies and does not follow redirects.
fn browserless() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn hidden_field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no {name} field in {html}")) + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

/// Signs in with `key`; returns the client and the response of the sign-in post.
async fn sign_in(server: &Server, key: &str) -> (reqwest::Client, reqwest::Response) {
    let client = browserless();
    let page = client.get(format!("{}/", server.url)).send().await.unwrap().text().await.unwrap();
    let csrf = hidden_field(&page, "csrf");
    let response = client
        .post(format!("{}/login", server.url))
        .form(&[("csrf", csrf.as_str()), ("key", key), ("next", "")])
        .send()
        .await
        .unwrap();
    (client, response)
}

#[tokio::test]
async fn sign_in_sessions_and_csrf() {
    let server = Server::start(&["--load-examples"]).await;
    // Pages need a session.
    let anonymous = browserless();
    let r = anonymous.get(format!("{}/workflows", server.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/?next=/workflows");

    // A wrong key, and a sign-in form from elsewhere, are refused.
    let (_, r) = sign_in(&server, "fw_wrong_wrong_wrong_wrong_wrong_wrong").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("That API key is not valid."));
    let r = browserless()
        .post(format!("{}/login", server.url))
        .form(&[("csrf", "forged"), ("key", KEY)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // The right key: an HttpOnly, SameSite=Strict session cookie.
    let (client, r) = sign_in(&server, KEY).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("flywheel_session="))
        .unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains(KEY), "the key itself is not in the cookie");
    let page = client.get(format!("{}/workflows", server.url)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("hello-flywheel") && html.contains("acme-invoices"));
    let csrf = hidden_field(&html, "csrf");

    // The session reads the API (what the pages' script does), but cannot change anything through it.
    assert_eq!(client.get(format!("{}/api/workflows", server.url)).send().await.unwrap().status(), StatusCode::OK);
    let r = client
        .post(format!("{}/api/workflows/hello-flywheel/execute", server.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Forms need the CSRF token.
    let spec = "steps:\n  - set: {name: a, value: 1}\n";
    let r = client
        .post(format!("{}/workflows", server.url))
        .form(&[("name", "Forged"), ("specification", spec)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = client
        .post(format!("{}/workflows", server.url))
        .form(&[("csrf", "nope"), ("name", "Forged"), ("specification", spec)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(
        server.get("/api/workflows").await["items"].as_array().unwrap().iter().all(|w| w["name"] != "Forged"),
        "nothing was created"
    );
    let r = client
        .post(format!("{}/workflows", server.url))
        .form(&[("csrf", csrf.as_str()), ("name", "Real"), ("specification", spec), ("slug", ""), ("description", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/workflows/real?saved=1");
    // Every other form needs the token too, and a forged one changes nothing.
    let done = server.wait_terminal(&id(&server.execute("real", json!({})).await), Duration::from_secs(20)).await;
    let execution = id(&done);
    let forged_paths = [
        "/workflows/real".to_owned(),
        "/workflows/real/delete".to_owned(),
        "/workflows/real/execute".to_owned(),
        format!("/executions/{execution}/retry"),
        format!("/executions/{execution}/stop"),
        "/logout".to_owned(),
    ];
    for path in &forged_paths {
        let r = client
            .post(format!("{}{path}", server.url))
            .form(&[("name", "Forged"), ("specification", spec), ("input", "{}"), ("slug", ""), ("description", "")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "POST {path} without the CSRF token");
    }
    let real = server.get("/api/workflows/real").await;
    assert_eq!((real["name"].as_str(), real["current_version"].as_i64()), (Some("Real"), Some(1)), "{real}");
    assert_eq!(
        server.get("/api/executions").await["items"].as_array().unwrap().len(),
        1,
        "nothing was executed or retried"
    );
    assert!(server.execution(&execution).await["retried_by"].is_null());
    assert_eq!(
        client.get(format!("{}/workflows", server.url)).send().await.unwrap().status(),
        StatusCode::OK,
        "still signed in"
    );
    // Bad specifications come back with the reasons, and change nothing.
    let r = client
        .post(format!("{}/workflows", server.url))
        .form(&[("csrf", csrf.as_str()), ("name", "Broken"), ("specification", "steps:\n  - teleport: mars\n")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text().await.unwrap().contains("specification.steps.0: unknown action &quot;teleport&quot;"));

    // A tampered cookie is no session; signing out ends the session.
    let tampered = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let value = cookie.split(';').next().unwrap().replace("flywheel_session=", "");
    let last = if value.ends_with('x') { 'y' } else { 'x' };
    let forged = format!("flywheel_session={}{last}", &value[..value.len() - 1]);
    let r = tampered.get(format!("{}/workflows", server.url)).header("cookie", forged).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let copied = cookie.split(';').next().unwrap().to_owned();
    let r = tampered.get(format!("{}/workflows", server.url)).header("cookie", &copied).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the genuine cookie works from anywhere");
    let r = client.post(format!("{}/logout", server.url)).form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(client.get(format!("{}/workflows", server.url)).send().await.unwrap().status(), StatusCode::SEE_OTHER);
    let r = tampered.get(format!("{}/workflows", server.url)).header("cookie", &copied).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "signing out ends the session on the server, not only in the browser"
    );

    // After signing in, only same-site paths are followed.
    for (next, to) in [
        ("//evil.example", "/workflows"),
        ("/\t/evil.example", "/workflows"),
        ("/\\evil.example", "/workflows"),
        ("https://evil.example/", "/workflows"),
        ("/executions?status=failed", "/executions?status=failed"),
    ] {
        let client = browserless();
        let page = client.get(format!("{}/", server.url)).send().await.unwrap().text().await.unwrap();
        let r = client
            .post(format!("{}/login", server.url))
            .form(&[("csrf", hidden_field(&page, "csrf").as_str()), ("key", KEY), ("next", next)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{next:?}");
        assert_eq!(r.headers()["location"], to, "{next:?}");
    }
}

struct Ui {
    browser: Option<Browser>,
    _scratch: tempfile::TempDir,
}

impl Ui {
    async fn open(width: u32, height: u32) -> Ui {
        let scratch = tempfile::tempdir().unwrap();
        let options = BrowserOptions {
            executable: "/usr/lib/chromium/chromium".into(),
            width,
            height,
            allowlist: Default::default(),
            proxy: None,
            video: None,
            downloads_dir: scratch.path().join("downloads"),
            scratch_dir: scratch.path().join("scratch"),
            run_started: 0.0,
        };
        let emitter = flywheel_agent::emit::Emitter::to_writer(Box::new(std::io::sink()), vec![]);
        let browser = Browser::launch(&options, emitter).await.map_err(|e| e.0).expect("Chromium starts");
        Ui { browser: Some(browser), _scratch: scratch }
    }

    fn page(&self) -> &Page {
        &self.browser.as_ref().unwrap().page
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(20)
    }

    async fn go(&self, url: &str) {
        self.page().navigate(url, Self::deadline()).await.unwrap();
    }

    async fn click(&self, target: Target) {
        let el = self.page().locate(&target, true, Self::deadline()).await.unwrap_or_else(|e| panic!("{e:#}"));
        self.page().click(el.x, el.y, "left", 1).await.unwrap();
    }

    /// Clicks and waits until the page is another one.
    async fn click_to_navigate(&self, target: Target) {
        self.page().evaluate("window.__stillHere = true").await.unwrap();
        self.click(target).await;
        self.until("a new page", "window.__stillHere === undefined && document.readyState === 'complete'").await;
    }

    async fn fill(&self, selector: &str, text: &str) {
        self.click(Target::Selector(selector.into())).await;
        self.page().dom("prepareTyping(false)").await.unwrap();
        self.page().insert_text(text).await.unwrap();
    }

    async fn eval(&self, script: &str) -> serde_json::Value {
        self.page().evaluate(script).await.unwrap()
    }

    /// Waits until `script` is true on the page.
    async fn until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(serde_json::Value::Bool(true)) = self.page().evaluate(script).await {
                return;
            }
            assert!(Instant::now() < deadline, "waited in vain for {what} ({script}) on {}", self.page().url());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn save_screenshot(&self, name: &str) {
        if std::env::var_os("UPDATE_SCREENSHOTS").is_none() {
            return;
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.page().screenshot(false).await.unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }

    async fn close(mut self) {
        if let Some(browser) = self.browser.take() {
            let _ = browser.close().await;
        }
    }
}

async fn sign_in_ui(ui: &Ui, server: &Server) {
    ui.go(&format!("{}/", server.url)).await;
    ui.save_screenshot("sign-in.png").await;
    ui.fill("#key", KEY).await;
    ui.click_to_navigate(Target::Text("Sign in".into())).await;
    assert!(ui.page().url().ends_with("/workflows"), "{}", ui.page().url());
}

#[tokio::test]
async fn a_day_in_the_dashboard() {
    let server = Server::start(&["--load-examples"]).await;
    let ui = Ui::open(1280, 800).await;
    sign_in_ui(&ui, &server).await;

    // Create a workflow in the editor.
    ui.click_to_navigate(Target::Text("New workflow".into())).await;
    ui.fill("#name", "Greeter").await;
    let spec = "payload_schema:\\n  type: object\\n  required: [who]\\n  properties:\\n    who: {type: string, description: Who to greet}\\n    times: {type: integer}\\nsteps:\\n  - set: {name: greeting, value: \\\"Hello {{ input.who }}\\\"}\\n  - wait: 1\\n";
    ui.eval(&format!("document.getElementById('specification').value = \"{spec}\"")).await;
    ui.click_to_navigate(Target::Text("Save".into())).await;
    assert!(ui.page().url().contains("/workflows/greeter?saved=1"), "{}", ui.page().url());
    assert_eq!(ui.eval("document.querySelector('.notice').textContent").await, "Saved. This is version 1.");

    // Execute it from the form generated from its payload schema.
    ui.click_to_navigate(Target::Selector("a.button.primary".into())).await;
    assert_eq!(ui.eval("document.getElementById('f-who').required").await, true);
    assert_eq!(ui.eval("document.getElementById('f-times').type").await, "number");
    ui.fill("#f-who", "Dashboard").await;
    ui.click_to_navigate(Target::Selector("form.execute button[type=submit]".into())).await;
    assert!(ui.page().url().contains("/executions/"), "{}", ui.page().url());
    // Its status turns completed without a reload.
    ui.eval("window.__sameDocument = true").await;
    ui.until("completed", "document.querySelector('[data-field=status]').textContent.startsWith('completed')").await;
    assert_eq!(ui.eval("window.__sameDocument").await, true, "no reload");
    ui.until("the output", "document.querySelector('[data-field=output]').textContent.includes('Hello Dashboard')")
        .await;
    ui.until("the live log", "document.querySelector('[data-field=log]').textContent.includes('Execution completed')")
        .await;

    // The browser example: screenshots and the video.
    ui.go(&format!("{}/workflows/acme-invoices/execute", server.url)).await;
    ui.save_screenshot("execute.png").await;
    ui.click_to_navigate(Target::Selector("form.execute button[type=submit]".into())).await;
    ui.until("completed", "document.querySelector('[data-field=status]').textContent.startsWith('completed')").await;
    ui.until("the video", "!!document.querySelector('video')").await;
    ui.until("the screenshots", "document.querySelectorAll('[data-field=gallery] .thumb').length >= 1").await;
    // Open a screenshot.
    ui.click(Target::Selector("[data-field=gallery] .thumb".into())).await;
    ui.until(
        "the viewer",
        "document.getElementById('viewer').open && document.querySelector('#viewer img').naturalWidth === 1280",
    )
    .await;
    ui.save_screenshot("screenshot-viewer.png").await;
    ui.page().press("Escape").await.unwrap();
    ui.until("the viewer closes", "!document.getElementById('viewer').open").await;
    // Reload the page to render the whole timeline, then jump the video to an action.
    ui.go(&ui.page().url()).await;
    ui.until(
        "the video's metadata",
        "document.querySelector('video').readyState >= 1 && document.querySelector('video').duration > 1",
    )
    .await;
    ui.save_screenshot("execution.png").await;
    // The live refresh after the reload adds nothing twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let shown = ui.eval("document.querySelectorAll('[data-field=gallery] .thumb').length").await;
    let counted = ui.eval("parseInt(document.querySelector('[data-field=n_screenshots]').textContent, 10)").await;
    assert_eq!(shown, counted, "one thumbnail per screenshot");
    let offsets =
        ui.eval("Array.from(document.querySelectorAll('[data-offset]')).map(b => parseFloat(b.dataset.offset))").await;
    let last = offsets.as_array().unwrap().iter().filter_map(|v| v.as_f64()).fold(0.0, f64::max);
    assert!(last > 0.3, "actions have offsets into the video: {offsets}");
    ui.eval("document.querySelector('video').muted = true").await;
    ui.click(Target::Selector("[data-field=timeline] li:last-child [data-offset]".into())).await;
    ui.until(
        "the video plays from the action",
        &format!(
            "!document.querySelector('video').paused && document.querySelector('video').currentTime >= {}",
            last - 0.05
        ),
    )
    .await;

    // Retry it: a new execution, linked both ways.
    let first = ui.page().url();
    ui.click_to_navigate(Target::Text("Retry".into())).await;
    assert_ne!(ui.page().url(), first);
    let old_id = first.rsplit('/').next().unwrap().to_owned();
    assert_eq!(
        ui.eval(&format!("!!document.querySelector('a[href=\"/executions/{old_id}\"]')")).await,
        true,
        "retry of"
    );

    // Stop a long one.
    server.workflow("Long", json!({"steps": [{"shell": "sleep 60"}]})).await;
    let long = id(&server.execute("long", json!({})).await);
    server.wait_status(&long, "running", Duration::from_secs(20)).await;
    ui.go(&format!("{}/executions/{long}", server.url)).await;
    ui.click_to_navigate(Target::Selector("form[data-field=stop] button".into())).await;
    ui.until("stopped", "document.querySelector('[data-field=status]').textContent.startsWith('failed')").await;
    assert_eq!(ui.eval("document.querySelector('[data-field=error_code]').textContent").await, "stopped");
    assert_no_sandbox_left(&long, Duration::from_secs(3)).await;

    // The lists.
    ui.go(&format!("{}/executions", server.url)).await;
    ui.until("rows", "document.querySelectorAll('tbody tr').length >= 4").await;
    ui.save_screenshot("executions.png").await;
    ui.go(&format!("{}/executions?status=failed", server.url)).await;
    assert_eq!(ui.eval("document.querySelectorAll('tbody tr').length").await, 1, "the status filter");
    ui.go(&format!("{}/workflows", server.url)).await;
    ui.save_screenshot("workflows.png").await;
    ui.go(&format!("{}/workflows/greeter/edit", server.url)).await;
    ui.save_screenshot("editor.png").await;
    ui.close().await;
}

#[tokio::test]
async fn the_list_updates_live_and_versions_compare_side_by_side() {
    let server = Server::start(&[]).await;
    server.workflow("Slow", json!({"steps": [{"wait": 2}]})).await;
    let ui = Ui::open(1280, 800).await;
    sign_in_ui(&ui, &server).await;
    let e = id(&server.execute("slow", json!({})).await);
    ui.go(&format!("{}/executions", server.url)).await;
    ui.eval("window.__sameDocument = true").await;
    ui.until(
        "completed in the list",
        &format!(
            "document.querySelector('tr[data-id=\"{e}\"] [data-field=status]').textContent.startsWith('completed')"
        ),
    )
    .await;
    assert_eq!(ui.eval("window.__sameDocument").await, true);

    // A row of a filtered list keeps updating after it no longer matches the filter.
    let e = id(&server.execute("slow", json!({})).await);
    server.wait_status(&e, "running", Duration::from_secs(20)).await;
    ui.go(&format!("{}/executions?status=running", server.url)).await;
    ui.until(
        "completed in the filtered list",
        &format!(
            "document.querySelector('tr[data-id=\"{e}\"] [data-field=status]').textContent.startsWith('completed')"
        ),
    )
    .await;

    // Two versions, side by side.
    server
        .request(
            reqwest::Method::PATCH,
            "/api/workflows/slow",
            Some(json!({"specification": {"steps": [{"wait": 3}]}})),
        )
        .await;
    ui.go(&format!("{}/workflows/slow/versions?a=1&b=2", server.url)).await;
    assert_eq!(ui.eval("document.querySelector('.diff .del pre').textContent").await, "- wait: 2");
    assert_eq!(ui.eval("document.querySelector('.diff .ins pre').textContent").await, "- wait: 3");

    // Delete, with confirmation.
    ui.go(&format!("{}/workflows/slow", server.url)).await;
    ui.click_to_navigate(Target::Text("Delete".into())).await;
    assert!(ui.page().url().ends_with("/workflows/slow/delete"));
    ui.click_to_navigate(Target::Text("Delete Slow".into())).await;
    let (status, _) = server.request(reqwest::Method::GET, "/api/workflows/slow", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    ui.close().await;
}

#[tokio::test]
async fn it_works_on_a_phone_sized_screen() {
    let server = Server::start(&["--load-examples"]).await;
    let e = id(&server.execute("hello-flywheel", json!({"name": "Phone"})).await);
    server.wait_terminal(&e, Duration::from_secs(30)).await;
    let ui = Ui::open(390, 844).await;
    sign_in_ui(&ui, &server).await;
    ui.go(&format!("{}/executions/{e}", server.url)).await;
    // Nothing wider than the screen.
    assert_eq!(ui.eval("document.documentElement.scrollWidth <= window.innerWidth").await, true);
    ui.save_screenshot("phone.png").await;
    // Keyboard: the skip link is the first stop and leads to the content.
    ui.page().press("Tab").await.unwrap();
    assert_eq!(ui.eval("document.activeElement.className").await, "skip");
    ui.close().await;
}
