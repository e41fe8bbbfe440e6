//! The full lifecycle of an execution through the API: queued → running →
//! completed with counters, timestamps, output, logs, artifacts, signed
//! links, the SSE stream and metrics.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn an_execution_runs_to_completion_with_everything_recorded() {
    let server = Server::start(&[]).await;
    let wf = server
        .workflow(
            "Greeter",
            json!({
                "steps": [
                    {"name": "greet", "set": {"name": "greeting", "value": "Hello {{ input.name }}"}},
                    {"shell": {"command": "echo \"{{ vars.greeting }}\" && echo report > artifacts/report.txt", "name": "echoed"}},
                    {"wait": 0.3},
                ],
                "timeout": 30,
            }),
        )
        .await;
    assert_eq!(wf["slug"], "greeter");
    assert_eq!(wf["current_version"], 1);

    let created = server.execute("greeter", json!({"name": "Ada"})).await;
    let id = id(&created);
    assert_eq!(created["executionId"], created["execution_uuid"]);
    assert_eq!(created["status"], "queued", "execute answers once the execution is durably queued");
    assert_eq!(created["workflow_version_uuid"], wf["workflow_version_uuid"]);
    assert_eq!(created["input_payload"], json!({"name": "Ada"}));
    assert_eq!(created["attempt"], 1);
    assert!(created["queued_at"].is_string() && created["started_at"].is_null());

    let running = server.wait_status(&id, "running", Duration::from_secs(10)).await;
    assert!(running["started_at"].is_string());
    assert!(running["finished_at"].is_null() && running["duration_ms"].is_null());

    let done = server.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert!(done["error"].is_null());
    assert_eq!(done["n_steps"], 3);
    assert_eq!(done["n_agent_actions"], 0);
    assert_eq!(done["n_screenshots"], 0);
    assert_eq!(done["output"], json!({"greeting": "Hello Ada", "echoed": "Hello Ada"}));
    let created_at = chrono::DateTime::parse_from_rfc3339(done["created_at"].as_str().unwrap()).unwrap();
    let started_at = chrono::DateTime::parse_from_rfc3339(done["started_at"].as_str().unwrap()).unwrap();
    let finished_at = chrono::DateTime::parse_from_rfc3339(done["finished_at"].as_str().unwrap()).unwrap();
    assert!(created_at <= started_at && started_at <= finished_at);
    let duration = done["duration_ms"].as_i64().unwrap();
    assert_eq!(duration, (finished_at - started_at).num_milliseconds());
    assert!(duration >= 300, "the wait step alone takes 300 ms: {duration}");
    assert!(done["video_url"].is_null());

    // The log: statuses in order, each step, the shell's output.
    let logs = done["logs"].as_array().unwrap();
    assert_eq!(done["logs_truncated"], false);
    let statuses: Vec<&str> =
        logs.iter().filter(|l| l["kind"] == "status").map(|l| l["data"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["queued", "running", "completed"]);
    assert!(logs.iter().any(|l| l["kind"] == "log" && l["message"] == "Hello Ada"));
    assert_eq!(logs.iter().filter(|l| l["kind"] == "step" && l["data"]["event"] == "started").count(), 3);
    let seqs: Vec<i64> = logs.iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seq numbers are consecutive: {seqs:?}");

    // Artifacts: the output, the full log, and the file the step wrote.
    let artifacts = server.get(&format!("/api/executions/{id}/artifacts")).await;
    let names: Vec<&str> = artifacts["items"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    for name in ["output.json", "logs.jsonl", "report.txt"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    for name in ["output.json", "report.txt"] {
        assert!(artifact_path(&server.data_dir, &id, name).is_file(), "{name} is on disk");
    }
    // The log file is written right after the final status.
    read_artifact(&server.data_dir, &id, "logs.jsonl").await;

    // Signed links work without the key, only for their artifact, and not when tampered with.
    let plain = reqwest::Client::new();
    let output_url = done["output_url"].as_str().unwrap();
    assert!(output_url.starts_with(&server.url), "absolute: {output_url}");
    let response = plain.get(output_url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, done["output"]);
    let log_text = plain.get(done["logs_url"].as_str().unwrap()).send().await.unwrap().text().await.unwrap();
    let lines: Vec<serde_json::Value> = log_text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), logs.len(), "the full log holds every entry");
    assert_eq!(lines.last().unwrap()["data"]["status"], "completed");
    let swapped = output_url.replace("output.json", "logs.jsonl");
    assert_eq!(plain.get(&swapped).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // Change the signature's last character to a different one (a fixed
    // replacement would leave it unchanged when it already was that character).
    let last = if output_url.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &output_url[..output_url.len() - 1]);
    assert_eq!(plain.get(&tampered).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let (base, query) = output_url.split_once('?').unwrap();
    let signature = query.split('&').find_map(|p| p.strip_prefix("signature=")).unwrap();
    let expired = format!("{base}?expires=100&signature={signature}");
    assert_eq!(plain.get(&expired).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let bare = output_url.split('?').next().unwrap();
    assert_eq!(plain.get(bare).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(plain.get(bare).bearer_auth(KEY).send().await.unwrap().status(), StatusCode::OK);

    // A byte range, as a video player asks for.
    let ranged = plain.get(output_url).header("range", "bytes=0-3").send().await.unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.text().await.unwrap().len(), 4);

    // Paged logs.
    let page = server.get(&format!("/api/executions/{id}/logs?after=2&limit=3")).await;
    let page_seqs: Vec<i64> = page["items"].as_array().unwrap().iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert_eq!(page_seqs, [3, 4, 5]);
    assert_eq!(page["next_after"], 5);

    // The workflow's counters.
    let wf = server.get("/api/workflows/greeter").await;
    assert_eq!(wf["executions"], 1);
    assert_eq!(wf["success_rate"], 1.0);
    assert!(wf["last_run"].is_string());
}

#[tokio::test]
async fn the_event_stream_replays_follows_and_resumes() {
    let server = Server::start(&[]).await;
    server.workflow("Slow", json!({"steps": [{"wait": 0.5}, {"shell": "echo second"}]})).await;
    let id = id(&server.execute("slow", json!({})).await);

    // Follow live from the start until `end`.
    let events = read_sse(&server, &id, None).await;
    let kinds: Vec<&str> = events.iter().map(|(_, kind, _)| kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"status"));
    assert_eq!(kinds.last(), Some(&"end"));
    assert!(kinds.contains(&"step") && kinds.contains(&"log"));
    let ids: Vec<i64> = events.iter().filter_map(|(id, _, _)| id.as_ref().map(|i| i.parse().unwrap())).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "every entry once, in order");
    let end: serde_json::Value = serde_json::from_str(&events.last().unwrap().2).unwrap();
    assert_eq!(end["status"], "completed");

    // Resume after entry 4: exactly the rest.
    let resumed = read_sse(&server, &id, Some(4)).await;
    let resumed_ids: Vec<i64> =
        resumed.iter().filter_map(|(id, _, _)| id.as_ref().map(|i| i.parse().unwrap())).collect();
    assert_eq!(resumed_ids, ids[4..].to_vec());
}

/// Reads an execution's SSE stream to its end: (id, event, data).
async fn read_sse(server: &Server, id: &str, last_event_id: Option<i64>) -> Vec<(Option<String>, String, String)> {
    let mut request = server.http.get(format!("{}/api/executions/{id}/events", server.url)).bearer_auth(KEY);
    if let Some(last) = last_event_id {
        request = request.header("Last-Event-ID", last.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = tokio::time::timeout(Duration::from_secs(20), response.text()).await.expect("the stream ends").unwrap();
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let (mut id, mut kind, mut data) = (None, String::new(), String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ").or_else(|| line.strip_prefix("id:")) {
                id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("event: ").or_else(|| line.strip_prefix("event:")) {
                kind = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                data.push_str(v);
            }
        }
        if !kind.is_empty() {
            events.push((id, kind, data));
        }
    }
    events
}

#[tokio::test]
async fn metrics_count_executions_and_need_a_key() {
    let server = Server::start(&[]).await;
    server.workflow("M", json!({"steps": [{"shell": "true"}]})).await;
    let id = id(&server.execute("m", json!({})).await);
    server.wait_terminal(&id, Duration::from_secs(20)).await;
    let plain = reqwest::Client::new();
    assert_eq!(plain.get(format!("{}/metrics", server.url)).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let text =
        plain.get(format!("{}/metrics", server.url)).bearer_auth(KEY).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("flywheel_executions{status=\"completed\"} 1"), "{text}");
    assert!(text.contains("flywheel_queue_depth 0"), "{text}");
    assert!(text.contains("flywheel_dispatch_latency_seconds_bucket"), "{text}");
    assert!(text.contains("flywheel_run_duration_seconds_count 1"), "{text}");

    // Health and the OpenAPI document need no key.
    assert_eq!(plain.get(format!("{}/api/health", server.url)).send().await.unwrap().status(), StatusCode::OK);
    let doc: serde_json::Value =
        plain.get(format!("{}/api/openapi.json", server.url)).send().await.unwrap().json().await.unwrap();
    assert!(doc["paths"]["/api/workflows/{id}/execute"]["post"].is_object());
    let (status, _) = server.request(Method::GET, "/api/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
