//! Controlling executions: stop, retry (of a running one, and automatic
//! retries), timeouts, failing steps, and the concurrency limits.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn stop_ends_a_running_execution_within_two_seconds_and_leaves_nothing() {
    let server = Server::start(&[]).await;
    server.workflow("Sleeper", json!({"steps": [{"shell": "sleep 60 & sleep 60; echo never"}]})).await;
    let id = id(&server.execute("sleeper", json!({})).await);
    server.wait_status(&id, "running", Duration::from_secs(10)).await;
    // bwrap, its init, the agent, the shell and its children.
    wait_for_sandbox_processes(&id, 3).await;

    let asked = Instant::now();
    let (status, stopped) = server.request(Method::POST, &format!("/api/executions/{id}/stop"), None).await;
    assert_eq!(status, StatusCode::OK, "{stopped}");
    assert_eq!(stopped["status"], "failed");
    assert_eq!(stopped["error"]["code"], "stopped");
    assert_no_sandbox_left(&id, Duration::from_secs(2)).await;
    assert!(asked.elapsed() < Duration::from_secs(2));
    let e = server.wait_until(&id, Duration::from_secs(5), |e| e["finished_at"].is_string()).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(e["error"]["code"], "stopped");
    assert!(!e["logs"].as_array().unwrap().iter().any(|l| l["message"] == "never"));
    // A stop is not retried automatically, even with retries configured.
    assert!(e["retried_by"].is_null());
}

#[tokio::test]
async fn a_queued_execution_fails_at_once_when_stopped() {
    let server = Server::start(&["--max-concurrent", "1"]).await;
    server.workflow("Blocker", json!({"steps": [{"shell": "sleep 30"}]})).await;
    let first = id(&server.execute("blocker", json!({})).await);
    server.wait_status(&first, "running", Duration::from_secs(10)).await;
    let queued = id(&server.execute("blocker", json!({})).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.execution(&queued).await["status"], "queued", "one slot, taken");
    let stopped = server.post(&format!("/api/executions/{queued}/stop"), json!({})).await;
    assert_eq!((stopped["status"].as_str(), stopped["error"]["code"].as_str()), (Some("failed"), Some("stopped")));
    assert!(stopped["started_at"].is_null(), "it never ran");
    server.post(&format!("/api/executions/{first}/stop"), json!({})).await;
    assert_no_sandbox_left(&first, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn retrying_a_running_execution_stops_it_and_links_both() {
    let server = Server::start(&[]).await;
    server.workflow("Long", json!({"steps": [{"shell": "sleep {{ input.secs }}"}]})).await;
    let old = id(&server.execute("long", json!({"secs": 30})).await);
    server.wait_status(&old, "running", Duration::from_secs(10)).await;

    let (status, new) = server.request(Method::POST, &format!("/api/executions/{old}/retry"), None).await;
    assert_eq!(status, StatusCode::CREATED, "{new}");
    let new_id = id(&new);
    assert_eq!(new["retry_of"], old.as_str());
    assert_eq!(new["attempt"], 2);
    assert_eq!(new["input_payload"], json!({"secs": 30}));
    assert_no_sandbox_left(&old, Duration::from_secs(2)).await;
    let old_e = server.execution(&old).await;
    assert_eq!(old_e["status"], "failed");
    assert_eq!(old_e["error"]["code"], "stopped");
    assert_eq!(old_e["retried_by"], new_id.as_str());
    server.wait_status(&new_id, "running", Duration::from_secs(10)).await;
    server.post(&format!("/api/executions/{new_id}/stop"), json!({})).await;
    assert_no_sandbox_left(&new_id, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_timeout_fails_the_execution_and_kills_the_sandbox() {
    let server = Server::start(&[]).await;
    server.workflow("Slowpoke", json!({"timeout": 1, "steps": [{"shell": "sleep 30"}]})).await;
    let id = id(&server.execute("slowpoke", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(10)).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(e["error"]["code"], "timeout");
    assert!(e["error"]["message"].as_str().unwrap().contains("timeout of 1 s"), "{e}");
    let duration = e["duration_ms"].as_i64().unwrap();
    assert!((1000..3000).contains(&duration), "ended about when the timeout said: {duration} ms");
    assert_no_sandbox_left(&id, Duration::from_secs(2)).await;

    // A step timeout fails only that step.
    server.workflow("Step timeout", json!({"steps": [{"shell": "sleep 30", "timeout": 0.5, "continue_on_error": true}, {"set": {"name": "after", "value": true}}]})).await;
    let step_timeout = id_of(server.execute("step-timeout", json!({})).await);
    let e = server.wait_terminal(&step_timeout, Duration::from_secs(10)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(e["output"]["after"], true);
    assert!(e["logs"].as_array().unwrap().iter().any(|l| l["message"].as_str().unwrap().contains("timeout of 0.5 s")));
}

#[tokio::test]
async fn a_failing_step_fails_the_run_unless_it_may() {
    let server = Server::start(&[]).await;
    server
        .workflow(
            "Fails",
            json!({"steps": [
                {"set": {"name": "before", "value": 1}},
                {"name": "breaks", "shell": "echo oops >&2; exit 3"},
                {"set": {"name": "after", "value": 1}},
            ]}),
        )
        .await;
    let id = id(&server.execute("fails", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(e["error"]["code"], "step_failed");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("step 2") && message.contains("breaks") && message.contains("status 3"), "{message}");
    assert_eq!(e["n_steps"], 2, "the third step never ran");
    assert_eq!(e["output"], json!({"before": 1}), "the output so far is kept");
    let logs = e["logs"].as_array().unwrap();
    assert!(logs.iter().any(|l| l["message"] == "oops" && l["level"] == "warn"), "stderr is logged");
    assert!(e["output_url"].is_string());

    server
        .workflow(
            "Shrugs",
            json!({"steps": [
                {"shell": "exit 1", "continue_on_error": true},
                {"http": {"url": "http://127.0.0.1:1/nothing", "name": "down"}, "continueOnError": true},
                {"set": {"name": "after", "value": "{{ input.n * 2 }}"}},
            ]}),
        )
        .await;
    let shrugs = id_of(server.execute("shrugs", json!({"n": 21})).await);
    let e = server.wait_terminal(&shrugs, Duration::from_secs(20)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(e["n_steps"], 3);
    assert_eq!(e["output"]["after"], 42, "a lone expression keeps its type");

    // A template that names nothing fails its step, saying what is missing;
    // it is the input's fault, so even with retries configured it is not retried.
    server.workflow("Typo", json!({"retry_attempts": 2, "steps": [{"shell": "echo {{ input.nmae }}"}]})).await;
    let e =
        server.wait_terminal(&id_of(server.execute("typo", json!({"name": "x"})).await), Duration::from_secs(20)).await;
    assert_eq!(e["error"]["code"], "invalid_input");
    assert!(e["error"]["message"].as_str().unwrap().contains("undefined"), "{e}");
    assert!(e["retried_by"].is_null(), "not retried");
}

fn id_of(e: serde_json::Value) -> String {
    id(&e)
}

#[tokio::test]
async fn http_steps_reach_the_network_and_record_the_response() {
    let server = Server::start(&[]).await;
    // The server's own health endpoint is a handy HTTP target.
    server
        .workflow(
            "Caller",
            json!({"steps": [
                {"http": {"name": "health", "url": format!("{}/api/health", server.url)}},
                {"set": {"name": "status", "value": "{{ vars.health.body.status }}"}},
                {"http": {"url": format!("{}/api/workflows", server.url), "expect_status": [401], "name": "denied"}},
            ]}),
        )
        .await;
    let id = id(&server.execute("caller", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(e["output"]["health"]["status"], 200);
    assert_eq!(e["output"]["status"], "ok");
    assert_eq!(e["output"]["denied"]["status"], 401, "the sandbox has no API key");
}

#[tokio::test]
async fn failures_are_retried_automatically_per_retry_attempts() {
    let server = Server::start(&[]).await;
    server.workflow("Flaky", json!({"retry_attempts": 2, "steps": [{"shell": "exit 1"}]})).await;
    let first = id(&server.execute("flaky", json!({"x": 1})).await);
    let e1 = server.wait_until(&first, Duration::from_secs(20), |e| e["retried_by"].is_string()).await;
    let second = e1["retried_by"].as_str().unwrap().to_owned();
    let e2 = server.wait_until(&second, Duration::from_secs(20), |e| e["retried_by"].is_string()).await;
    let third = e2["retried_by"].as_str().unwrap().to_owned();
    let e3 = server.wait_terminal(&third, Duration::from_secs(20)).await;
    assert_eq!((e2["attempt"].as_i64(), e3["attempt"].as_i64()), (Some(2), Some(3)));
    assert_eq!(e3["retry_of"], second.as_str());
    assert_eq!(e3["input_payload"], json!({"x": 1}));
    assert_eq!(e3["status"], "failed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.execution(&third).await["retried_by"].is_null(), "two retries, then it stays failed");
}

#[tokio::test]
async fn fifty_simultaneous_executes_with_concurrency_two_never_run_more_than_two() {
    let server = Server::start(&["--max-concurrent", "8"]).await;
    server.workflow("Narrow", json!({"concurrency": 2, "steps": [{"wait": 0.05}]})).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (http, url) = (server.http.clone(), server.url.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(format!("{url}/api/workflows/narrow/execute"))
                .bearer_auth(KEY)
                .json(&json!({"inputPayload": {"i": i}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            r.json::<serde_json::Value>().await.unwrap()["execution_uuid"].as_str().unwrap().to_owned()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let mut max_running = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = server.get("/api/executions?status=running&limit=200").await["items"].as_array().unwrap().len();
        max_running = max_running.max(running);
        let done = server.get("/api/executions?status=completed&limit=200").await["items"].as_array().unwrap().len();
        if done == 50 {
            break;
        }
        assert!(Instant::now() < deadline, "50 executions did not finish; {done} did");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(max_running <= 2, "seen {max_running} running at once");
    // The intervals between start and finish never overlap more than two deep.
    let mut events = Vec::new();
    for id in &ids {
        let e = server.execution(id).await;
        let start = chrono::DateTime::parse_from_rfc3339(e["started_at"].as_str().unwrap()).unwrap();
        let end = chrono::DateTime::parse_from_rfc3339(e["finished_at"].as_str().unwrap()).unwrap();
        events.push((start, 1));
        events.push((end, -1));
    }
    events.sort_by_key(|(t, delta)| (*t, *delta));
    let (mut depth, mut deepest) = (0, 0);
    for (_, delta) in events {
        depth += delta;
        deepest = deepest.max(depth);
    }
    assert!(deepest <= 2, "{deepest} ran at once");
    assert_eq!(deepest, 2, "and two did run side by side");
}

#[tokio::test]
async fn background_processes_outlive_their_step_but_not_the_execution() {
    let server = Server::start(&[]).await;
    server
        .workflow("Helper", json!({"steps": [
            {"name": "start a helper", "shell": "sleep 300 & echo started"},
            {"shell": {"command": "for p in /proc/[0-9]*; do grep -qs sleep $p/cmdline && echo alive; done | head -n 1", "name": "seen"}},
            {"set": {"name": "done", "value": true}},
        ]}))
        .await;
    let started = Instant::now();
    let id = id(&server.execute("helper", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert!(started.elapsed() < Duration::from_secs(10), "the step did not wait for its background child");
    assert!(e["logs"].as_array().unwrap().iter().any(|l| l["message"] == "started"));
    assert_eq!(e["output"]["seen"], "alive", "the helper still ran in the next step");
    assert_no_sandbox_left(&id, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_nul_character_in_a_program_s_output_does_not_break_the_log() {
    let server = Server::start(&[]).await;
    let command = "printf 'before\\000after\\n'; printf 'err\\000line\\n' >&2";
    server.workflow("Nul", json!({"steps": [{"shell": {"command": command, "name": "out"}}]})).await;
    let id = id(&server.execute("nul", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    let logged = e["logs"].as_array().unwrap().iter().filter_map(|l| l["message"].as_str()).any(|m| m.contains("line"));
    assert!(logged, "the stderr line is in the log: {e:#}");
    assert!(e["output"]["out"].as_str().unwrap().ends_with("after"), "{e:#}");
}
