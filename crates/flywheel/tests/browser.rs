//! The browser steps against fixture pages served by the test on localhost:
//! every step kind in success and failure, counters, screenshot pixels, the
//! video, the allowlist, secrets, downloads, console errors, and that no
//! Chromium process outlives its execution.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

fn logs(e: &Value) -> Vec<Value> {
    e["logs"].as_array().cloned().unwrap_or_default()
}

fn has_log(e: &Value, needle: &str) -> bool {
    logs(e).iter().any(|l| l["message"].as_str().unwrap_or("").contains(needle))
}

#[tokio::test]
async fn every_browser_step_does_its_job() {
    let fixture = Fixture::start().await;
    let server = Server::start(&[]).await;
    let f = &fixture.url;
    server
        .workflow(
            "All steps",
            json!({"steps": [
                {"goto": format!("{f}/form")},
                {"type": {"selector": "#name", "text": "{{ input.name }}"}},
                {"type": {"selector": "#prefilled", "text": "new"}},
                {"evaluate": {"name": "replaced", "script": "document.querySelector('#prefilled').value"}},
                {"type": {"selector": "#prefilled", "text": " more", "append": true}},
                {"evaluate": {"name": "appended", "script": "document.querySelector('#prefilled').value"}},
                {"select": {"selector": "#state", "label": "New York"}},
                {"evaluate": {"name": "by_label", "script": "document.querySelector('#state').value"}},
                {"select": {"selector": "#state", "value": "CA"}},
                {"check": "#agree"},
                {"hover": "#hovered"},
                {"press": {"key": "Enter", "selector": "#enter"}},
                {"wait_for": {"selector": "#late"}},
                {"wait_for": {"text": "Late text"}},
                {"click": {"text": "Go"}},
                {"extract": {"name": "result", "selector": "#result"}},
                {"extract": {"name": "prices", "selector": ".item", "all": true, "regex": "\\$([0-9.]+)"}},
                {"extract": {"name": "href", "selector": "#link", "attr": "href"}},
                {"extract": {"name": "hovered", "selector": "#hovered"}},
                {"extract": {"name": "pressed", "selector": "#pressed"}},
                {"evaluate": {"name": "count", "script": "document.querySelectorAll('.item').length"}},
                {"scroll": {"selector": "#bottom"}},
                {"evaluate": {"name": "scrolled", "script": "window.scrollY > 1000"}},
                {"scroll": {"dy": -5000}},
                {"evaluate": {"name": "back_up", "script": "window.scrollY < 100"}},
                {"screenshot": {"name": "whole form", "full_page": true}},
                {"click": "#submit"},
                {"extract": {"name": "submitted", "selector": "#submitted"}},
                {"click": {"x": 5, "y": 5}},
                {"click": "#link"},
                {"wait_for": {"url": "/next"}},
                {"assert": {"text": "Next"}},
                {"assert": {"selector": "h1"}},
                {"assert": {"url": "*/next?x=1"}},
                {"assert": {"expression": "document.title === 'Next page'"}},
            ]}),
        )
        .await;
    let id = id(&server.execute("all-steps", json!({"name": "Ada"})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{:#}", e);
    let out = &e["output"];
    assert_eq!(out["replaced"], "new", "type clears first");
    assert_eq!(out["appended"], "new more", "append keeps what is there");
    assert_eq!(out["by_label"], "NY");
    assert_eq!(
        out["result"], "Hello Ada from CA (agreed)",
        "input templated into typed text, select, check, click by text"
    );
    assert_eq!(out["prices"], json!(["1.50", "0.25"]), "all + regex capture group");
    assert_eq!(out["href"], "/next?x=1");
    assert_eq!(out["hovered"], "hovered!");
    assert_eq!(out["pressed"], "Enter pressed");
    assert_eq!(out["count"], 2);
    assert_eq!((out["scrolled"].clone(), out["back_up"].clone()), (json!(true), json!(true)));
    assert_eq!(out["submitted"], "submitted", "the click waited for the button to be enabled");
    // goto 1, type 3, select 2, check 1, hover 1, press 1, click 4, scroll 2.
    let actions: Vec<Value> = logs(&e).into_iter().filter(|l| l["kind"] == "action").collect();
    assert_eq!(e["n_agent_actions"], 15, "{:#}", json!(actions));
    assert_eq!(e["n_steps"], 35);
    assert_eq!(e["n_screenshots"], 1);
    let action = logs(&e).into_iter().find(|l| l["kind"] == "action" && l["data"]["action"] == "click").unwrap();
    assert_eq!(action["data"]["target"], json!({"text": "Go"}));
    assert!(action["data"]["outcome"].as_str().unwrap().contains("<button>"), "{action}");
    assert!(action["data"]["duration_ms"].is_u64());
    assert!(has_log(&e, "console.error: fixture console error"), "console errors are logged");
    assert!(has_log(&e, "request failed: http://127.0.0.1:1/nope"), "failed requests are logged");

    // The full-page screenshot is taller than the viewport.
    let png = std::fs::read(artifact_path(&server.data_dir, &id, "screenshot-001-whole-form.png")).unwrap();
    let (w, h, _) = decode_png(&png);
    assert_eq!(w, 1280);
    assert!(h > 3000, "full page: {h}");
    assert!(e["video_url"].is_string());
}

/// (width, height, RGBA pixels)
fn decode_png(png: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut reader = png::Decoder::new(png).read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let rgba = match info.color_type {
        png::ColorType::Rgba => buf[..info.buffer_size()].to_vec(),
        png::ColorType::Rgb => buf[..info.buffer_size()].chunks(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect(),
        other => panic!("unexpected PNG color type {other:?}"),
    };
    (info.width, info.height, rgba)
}

#[tokio::test]
async fn every_browser_step_fails_clearly_and_leaves_a_screenshot() {
    let fixture = Fixture::start().await;
    let server = Server::start(&[]).await;
    let f = &fixture.url;
    let coe = |mut step: Value| {
        step["continue_on_error"] = json!(true);
        step["timeout"] = json!(0.5);
        step
    };
    let failing = vec![
        (coe(json!({"click": "#missing"})), "\"#missing\": no such element"),
        (coe(json!({"click": {"text": "No such words"}})), "text \"No such words\": no such element"),
        (coe(json!({"type": {"selector": "#missing", "text": "x"}})), "no such element"),
        (coe(json!({"select": {"selector": "#state", "value": "ZZ"}})), "no option \"ZZ\""),
        (coe(json!({"check": "#late-missing"})), "no such element"),
        (coe(json!({"hover": "#missing"})), "no such element"),
        (coe(json!({"press": "NotAKey"})), "unknown key \"NotAKey\""),
        (coe(json!({"wait_for": {"selector": "#never"}})), "no visible element matches \"#never\""),
        (coe(json!({"extract": {"name": "x", "selector": "#title", "regex": "zzz"}})), "does not match the regex"),
        (coe(json!({"evaluate": {"script": "throw new Error('kaboom')"}})), "kaboom"),
        (coe(json!({"assert": {"text": "Not on the page"}})), "does not show the text \"Not on the page\""),
        (coe(json!({"assert": {"url": "/elsewhere"}})), "does not match \"/elsewhere\""),
        (coe(json!({"scroll": "#missing"})), "no such element"),
        (coe(json!({"goto": "http://127.0.0.1:1/"})), "could not open http://127.0.0.1:1/"),
    ];
    let mut steps = vec![json!({"goto": format!("{f}/form")})];
    steps.extend(failing.iter().map(|(step, _)| step.clone()));
    steps.push(json!({"name": "final check", "assert": {"selector": "#missing", "message": "the missing element should be there"}, "timeout": 0.5}));
    steps.push(json!({"set": {"name": "never", "value": true}}));
    server.workflow("Failures", json!({"steps": steps})).await;
    let id = id(&server.execute("failures", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(e["error"]["code"], "step_failed");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "step {} (final check) failed: the missing element should be there",
            failing.len() + 2
        )),
        "{message}"
    );
    for (step, why) in &failing {
        assert!(
            has_log(&e, why),
            "the failure of {step} says {why:?}; logs: {:#}",
            json!(logs(&e).iter().map(|l| l["message"].clone()).collect::<Vec<_>>())
        );
    }
    assert!(e["output"].get("never").is_none(), "nothing ran after the failure");
    let shots: Vec<String> = server.get(&format!("/api/executions/{id}/artifacts")).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "screenshot")
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(e["n_screenshots"], failing.len() + 1, "a screenshot of each failure: {shots:?}\n{}", server.stderr());
    let shot = artifact_path(
        &server.data_dir,
        &id,
        &format!("screenshot-{:03}-failure-step-{}.png", failing.len() + 1, failing.len() + 2),
    );
    let (w, h, _) = decode_png(&std::fs::read(&shot).unwrap_or_else(|_| panic!("{} exists", shot.display())));
    assert_eq!((w, h), (1280, 720));
}

#[tokio::test]
async fn screenshots_show_the_page_and_the_video_plays() {
    let fixture = Fixture::start().await;
    let server = Server::start(&[]).await;
    server
        .workflow(
            "Pictures",
            json!({"start_url": format!("{}/red", fixture.url), "steps": [
                {"screenshot": {"name": "red"}},
                {"goto": format!("{}/animated", fixture.url)},
                {"wait": 3},
            ]}),
        )
        .await;
    let id = id(&server.execute("pictures", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(e["n_screenshots"], 1);
    assert_eq!(e["n_agent_actions"], 2, "start_url and goto are navigations");

    let shot = artifact_path(&server.data_dir, &id, "screenshot-001-red.png");
    let (w, h, rgba) = decode_png(&std::fs::read(&shot).unwrap());
    assert_eq!((w, h), (1280, 720), "the viewport's size");
    let center = ((h / 2 * w + w / 2) * 4) as usize;
    assert_eq!(&rgba[center..center + 3], &[255, 0, 0], "the page is red");

    // The artifacts list announces it, with a signed URL that works.
    let list = server.get(&format!("/api/executions/{id}/artifacts")).await;
    let shot_entry = list["items"].as_array().unwrap().iter().find(|a| a["kind"] == "screenshot").unwrap().clone();
    let body = reqwest::get(shot_entry["url"].as_str().unwrap()).await.unwrap();
    assert_eq!(body.headers()["content-type"], "image/png");

    // The video: H.264 MP4 of about the run's length, served for a <video> tag.
    let video = artifact_path(&server.data_dir, &id, "video.mp4");
    let probe = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration:stream=codec_name,width,height,nb_frames",
            "-of",
            "json",
        ])
        .arg(&video)
        .output()
        .expect("ffprobe runs");
    let info: Value = serde_json::from_slice(&probe.stdout).unwrap();
    assert_eq!(info["streams"][0]["codec_name"], "h264", "{info}");
    assert_eq!(
        (info["streams"][0]["width"].clone(), info["streams"][0]["height"].clone()),
        (json!(1280), json!(720)),
        "{info}"
    );
    let seconds: f64 = info["format"]["duration"].as_str().unwrap().parse().unwrap();
    // The video runs from the agent's start to the browser's close: at
    // least from the browser's launch ("browser ready in N ms" says when)
    // to the end of the last step, and no longer than the run. (The run
    // adds the sandbox's setup and the storing of files, which a loaded
    // machine stretches; the encoder may finish later still.)
    let at = |needle: &str| {
        let entry = logs(&e).into_iter().rev().find(|l| l["message"].as_str().unwrap_or("").contains(needle)).unwrap();
        let ts = chrono::DateTime::parse_from_rfc3339(entry["ts"].as_str().unwrap()).unwrap();
        (ts.timestamp_millis() as f64 / 1000.0, entry["message"].as_str().unwrap().to_owned())
    };
    let (ready_at, ready) = at("browser ready in ");
    let launch_secs: f64 =
        ready.trim_start_matches("browser ready in ").trim_end_matches(" ms").parse::<f64>().unwrap() / 1000.0;
    let (steps_done_at, _) = at("Step 3 (");
    let steps_span = steps_done_at - (ready_at - launch_secs);
    let run = e["duration_ms"].as_f64().unwrap() / 1000.0;
    assert!(
        seconds >= steps_span - 0.5 && seconds <= run + 0.25,
        "video {seconds:.2} s vs the steps' {steps_span:.2} s and the run's {run:.2} s"
    );
    let frames: u64 = info["streams"][0]["nb_frames"].as_str().unwrap().parse().unwrap();
    assert!(frames >= 20, "{frames} frames");
    let url = e["video_url"].as_str().unwrap();
    let ranged = reqwest::Client::new().get(url).header("range", "bytes=0-99").send().await.unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.headers()["content-type"], "video/mp4");
    assert_eq!(ranged.bytes().await.unwrap().len(), 100);
}

#[tokio::test]
async fn the_allowlist_blocks_other_origins() {
    let allowed = Fixture::start().await;
    let other = Fixture::start().await;
    let server = Server::start(&[]).await;
    server
        .workflow(
            "Fenced",
            json!({"url_allowlist": [allowed.url], "steps": [
                {"goto": format!("{}/embed?other={}", allowed.url, other.url)},
                {"wait": 1},
                {"goto": format!("{}/next", other.url)},
            ]}),
        )
        .await;
    let id = id(&server.execute("fenced", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(other.hits(), 0, "no request reached the other origin");
    assert!(allowed.hits() >= 1);
    assert!(
        has_log(&e, &format!("blocked a request to {}/pixel.png", other.url)),
        "sub-requests are blocked and logged"
    );
    assert!(has_log(&e, &format!("blocked a request to {}/next", other.url)), "frames too");
    assert_eq!(e["error"]["code"], "step_failed");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("is blocked: it is not in url_allowlist"),
        "{}",
        e["error"]
    );
}

#[tokio::test]
async fn the_server_wide_allowlist_applies_unless_a_workflow_opts_out() {
    let allowed = Fixture::start().await;
    let other = Fixture::start().await;
    let server = Server::start(&["--url-allowlist", &allowed.url]).await;
    server
        .workflow(
            "Global",
            json!({"steps": [{"goto": format!("{}/next", allowed.url)}, {"goto": format!("{}/next", other.url)}]}),
        )
        .await;
    let e = server.wait_terminal(&id(&server.execute("global", json!({})).await), Duration::from_secs(60)).await;
    assert!(e["error"]["message"].as_str().unwrap().contains("not in url_allowlist"), "{e}");
    server
        .workflow("Own list", json!({"use_global_allowlist": false, "url_allowlist": [other.url], "steps": [{"goto": format!("{}/next", other.url)}]}))
        .await;
    let e = server.wait_terminal(&id(&server.execute("own-list", json!({})).await), Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
}

#[tokio::test]
async fn a_secret_is_typed_but_never_shown() {
    let fixture = Fixture::start().await;
    let server = Server::start(&[]).await;
    let secret = "s3cr3t-Pa55-word";
    let (status, body) =
        server.request(Method::PUT, "/api/secrets/PORTAL_PASSWORD", Some(json!({"value": secret}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(!body.to_string().contains(secret));
    let list = server.get("/api/secrets").await;
    assert_eq!(list["items"][0]["name"], "PORTAL_PASSWORD");
    assert!(!list.to_string().contains(secret));
    let (status, _) = server.request(Method::PUT, "/api/secrets/bad-name", Some(json!({"value": "x"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    server
        .workflow(
            "Login",
            json!({"start_url": format!("{}/login", fixture.url), "steps": [
                {"type": {"selector": "#password", "text": "{{ secrets.PORTAL_PASSWORD }}", "secret": true}},
                {"type": {"selector": "#echo", "text": "{{ secrets.PORTAL_PASSWORD }}"}},
                {"evaluate": {"name": "typed", "script": "document.querySelector('#password').value"}},
                {"evaluate": {"name": "length", "script": "document.querySelector('#password').value.length"}},
                {"shell": {"command": "echo the password is {{ secrets.PORTAL_PASSWORD }}", "name": "echoed"}},
                {"shell": "echo 'saved: {{ secrets.PORTAL_PASSWORD }}' > artifacts/notes.txt"},
            ]}),
        )
        .await;
    let id = id(&server.execute("login", json!({})).await);
    // Watch the events while it runs.
    let events = tokio::spawn({
        let (http, url, id) = (server.http.clone(), server.url.clone(), id.clone());
        async move {
            http.get(format!("{url}/api/executions/{id}/events"))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    let e = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(e["output"]["length"], secret.len(), "the real value was typed");
    assert_eq!(e["output"]["typed"], "***");
    assert_eq!(e["output"]["echoed"], "the password is ***");
    let events = tokio::time::timeout(Duration::from_secs(20), events).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut places = vec![("execution", e.to_string()), ("events", events)];
    for name in ["logs.jsonl", "output.json", "notes.txt"] {
        places.push((name, read_artifact(&server.data_dir, &id, name).await));
    }
    assert_eq!(places.last().unwrap().1, "saved: ***\n", "a file the run wrote is masked too");
    for (place, text) in places {
        assert!(!text.contains(secret), "the secret leaked into {place}");
    }
    // At rest it is sealed: not in the database.
    assert!(server.database_contains("PORTAL_PASSWORD").await, "the check sees what the database holds");
    assert!(!server.database_contains(secret).await, "the secret is stored in plain text");

    // A workflow using a secret nobody set fails before it starts.
    server.workflow("Unset", json!({"steps": [{"shell": "echo {{ secrets.NOPE }}"}]})).await;
    let e = server.wait_terminal(&id_of(server.execute("unset", json!({})).await), Duration::from_secs(30)).await;
    assert_eq!(e["error"]["code"], "invalid_input");
    assert!(e["error"]["message"].as_str().unwrap().contains("NOPE"));
}

fn id_of(e: Value) -> String {
    id(&e)
}

#[tokio::test]
async fn downloads_become_artifacts() {
    let fixture = Fixture::start().await;
    let server = Server::start(&[]).await;
    server
        .workflow("Download", json!({"start_url": format!("{}/form", fixture.url), "steps": [{"click": {"text": "Download report"}}, {"wait": 1}]}))
        .await;
    let id = id(&server.execute("download", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    let list = server.get(&format!("/api/executions/{id}/artifacts")).await;
    let csv = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "report.csv")
        .cloned()
        .unwrap_or_else(|| panic!("{list:#}\n{:#}", e["logs"]));
    assert_eq!(csv["kind"], "download");
    let text = reqwest::get(csv["url"].as_str().unwrap()).await.unwrap().text().await.unwrap();
    assert_eq!(text, "a,b\n1,2\n");

    // A download still coming when the steps end is waited for, whole.
    server
        .workflow(
            "Slow download",
            json!({"start_url": format!("{}/slow", fixture.url), "steps": [{"click": {"text": "Slow report"}}, {"wait": 0.5}]}),
        )
        .await;
    let id = id_of(server.execute("slow-download", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(read_artifact(&server.data_dir, &id, "slow.csv").await, "a,b\n1,2\n", "{e:#}");
}

#[tokio::test]
async fn no_chromium_survives_a_stop_a_timeout_or_a_crash() {
    let fixture = Fixture::start().await;
    let mut server = Server::start(&[]).await;
    let page = format!("{}/animated", fixture.url);
    server.workflow("Stopped", json!({"start_url": page, "steps": [{"wait": 60}]})).await;
    server.workflow("Timed out", json!({"timeout": 3, "start_url": page, "steps": [{"wait": 60}]})).await;

    // Stop.
    let stopped = id(&server.execute("stopped", json!({})).await);
    server.wait_until(&stopped, Duration::from_secs(30), |e| e["n_agent_actions"] == 1).await;
    assert!(sandbox_processes(&stopped).len() > 4, "Chromium runs in the sandbox");
    server.post(&format!("/api/executions/{stopped}/stop"), json!({})).await;
    assert_no_sandbox_left(&stopped, Duration::from_secs(2)).await;

    // Timeout.
    let timed = id(&server.execute("timed-out", json!({})).await);
    let e = server.wait_terminal(&timed, Duration::from_secs(30)).await;
    assert_eq!(e["error"]["code"], "timeout");
    assert_no_sandbox_left(&timed, Duration::from_secs(2)).await;

    // kill -9 of the server.
    let crashed = id(&server.execute("stopped", json!({})).await);
    server.wait_until(&crashed, Duration::from_secs(30), |e| e["n_agent_actions"] == 1).await;
    assert!(sandbox_processes(&crashed).len() > 4);
    server.kill9();
    assert_no_sandbox_left(&crashed, Duration::from_secs(3)).await;
    server.spawn().await;
    assert_eq!(server.wait_terminal(&crashed, Duration::from_secs(10)).await["error"]["code"], "worker_lost");
}

#[tokio::test]
async fn a_missing_browser_is_a_sandbox_error_that_says_what_to_install() {
    let server = Server::start(&["--chromium-path", "/nonexistent/chromium"]).await;
    server.workflow("No browser", json!({"steps": [{"goto": "about:blank"}]})).await;
    let e = server.wait_terminal(&id(&server.execute("no-browser", json!({})).await), Duration::from_secs(30)).await;
    assert_eq!(e["error"]["code"], "sandbox_error");
    assert!(e["error"]["message"].as_str().unwrap().contains("apt-get install chromium"), "{}", e["error"]);
}

#[tokio::test]
async fn a_screenshot_after_every_action_and_no_video_when_asked() {
    let fixture = Fixture::start().await;
    let server = Server::start(&[]).await;
    server
        .workflow(
            "Snappy",
            json!({"screenshot_every_action": true, "record_video": false, "start_url": format!("{}/form", fixture.url), "steps": [
                {"type": {"selector": "#name", "text": "x"}},
                {"click": {"text": "Go"}},
                {"extract": {"name": "r", "selector": "#result"}},
            ]}),
        )
        .await;
    let id = id(&server.execute("snappy", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(e["n_agent_actions"], 3, "start_url, type, click");
    assert_eq!(e["n_screenshots"], 2, "one after each step's action (start_url has none)");
    assert!(e["video_url"].is_null());
    let list = server.get(&format!("/api/executions/{id}/artifacts")).await;
    let names: Vec<&str> = list["items"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert!(
        names.contains(&"screenshot-001-after-type.png") && names.contains(&"screenshot-002-after-click.png"),
        "{names:?}"
    );
    assert!(!names.contains(&"video.mp4"));
}

#[tokio::test]
async fn the_example_browser_workflow_runs_against_the_demo_portal() {
    let server = Server::start(&["--load-examples"]).await;
    let id = id(&server.execute("acme-invoices", json!({"customer": "Globex"})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(e["output"]["newest_total"], "1,280.00");
    assert_eq!(e["output"]["invoices"], json!(["INV-1042", "INV-1040"]));
    assert!(e["n_agent_actions"].as_i64().unwrap() >= 5);
    assert_eq!(e["n_screenshots"], 1);
    assert!(e["video_url"].is_string());
    let list = server.get(&format!("/api/executions/{id}/artifacts")).await;
    assert!(
        list["items"].as_array().unwrap().iter().any(|a| a["name"] == "invoices.csv" && a["kind"] == "download"),
        "{list:#}"
    );
    // The typed password is masked in the log.
    let typed: Vec<&Value> = e["logs"].as_array().unwrap().iter().filter(|l| l["data"]["action"] == "type").collect();
    assert!(typed.iter().any(|l| l["message"].as_str().unwrap().contains("(secret)")), "{typed:?}");
}
