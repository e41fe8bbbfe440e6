//! Crash safety: after `kill -9` of the server and a restart on the same
//! data dir nothing acknowledged is lost, what was running becomes
//! `worker_lost`, and no sandbox process survives. SIGTERM drains.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn kill_9_loses_nothing_acknowledged_and_leaves_no_process() {
    let mut server = Server::start(&["--max-concurrent", "1"]).await;
    server.workflow("Sleepy", json!({"steps": [{"shell": "sleep 60"}]})).await;
    server.workflow("Quick", json!({"steps": [{"set": {"name": "ok", "value": true}}]})).await;
    let running = id(&server.execute("sleepy", json!({})).await);
    server.wait_status(&running, "running", Duration::from_secs(10)).await;
    // bwrap, its init, the agent, the shell and its children.
    wait_for_sandbox_processes(&running, 3).await;

    // A burst of executes, with the server killed in the middle of it.
    let mut burst = Vec::new();
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for i in 0..300 {
        let (http, url, acks) = (server.http.clone(), server.url.clone(), acks.clone());
        burst.push(tokio::spawn(async move {
            let r = http
                .post(format!("{url}/api/workflows/quick/execute"))
                .bearer_auth(KEY)
                .json(&json!({"inputPayload": {"i": i}}))
                .send()
                .await
                .ok()?;
            if r.status() != StatusCode::CREATED {
                return None;
            }
            let body: serde_json::Value = r.json().await.ok()?;
            acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Some(body["execution_uuid"].as_str()?.to_owned())
        }));
    }
    // Kill once some were acknowledged and others are still in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while acks.load(std::sync::atomic::Ordering::SeqCst) < 30 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.kill9();
    let mut acknowledged = Vec::new();
    for task in burst {
        if let Some(id) = task.await.unwrap() {
            acknowledged.push(id);
        }
    }
    assert!(acknowledged.len() >= 30, "some executes were acknowledged before the kill");
    assert!(acknowledged.len() < 300, "and some were cut off by it");

    // The sandbox died with the server.
    assert_no_sandbox_left(&running, Duration::from_secs(3)).await;

    server.spawn().await;
    let lost = server.wait_terminal(&running, Duration::from_secs(10)).await;
    assert_eq!(lost["status"], "failed");
    assert_eq!(lost["error"]["code"], "worker_lost", "{lost:#}");
    for id in &acknowledged {
        let (status, _) = server.request(reqwest::Method::GET, &format!("/api/executions/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "acknowledged execution {id} survived the crash");
    }
    for id in &acknowledged {
        let e = server.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(e["status"], "completed", "{e:#}");
    }
}

#[tokio::test]
async fn a_lost_run_is_retried_when_the_policy_says_so() {
    let mut server = Server::start(&[]).await;
    server.workflow("Sleepy retry", json!({"retry_attempts": 1, "steps": [{"shell": "sleep {{ input.secs }}"}]})).await;
    let id = id(&server.execute("sleepy-retry", json!({"secs": 60})).await);
    server.wait_status(&id, "running", Duration::from_secs(10)).await;
    server.kill9();
    assert_no_sandbox_left(&id, Duration::from_secs(3)).await;
    server.spawn().await;
    let lost = server.wait_until(&id, Duration::from_secs(10), |e| e["retried_by"].is_string()).await;
    assert_eq!(lost["error"]["code"], "worker_lost");
    let retry = lost["retried_by"].as_str().unwrap().to_owned();
    server.wait_status(&retry, "running", Duration::from_secs(10)).await;
    server.post(&format!("/api/executions/{retry}/stop"), json!({})).await;
    assert_no_sandbox_left(&retry, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn sigterm_lets_running_executions_finish_within_the_grace_period() {
    let mut server = Server::start(&[]).await;
    server.workflow("Short", json!({"steps": [{"wait": 1}, {"set": {"name": "done", "value": true}}]})).await;
    let id = id(&server.execute("short", json!({})).await);
    server.wait_status(&id, "running", Duration::from_secs(10)).await;
    let code = server.terminate(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "a clean exit: {}", server.stderr());
    assert_no_sandbox_left(&id, Duration::from_secs(1)).await;
    server.spawn().await;
    let e = server.execution(&id).await;
    assert_eq!(e["status"], "completed", "it finished during the drain: {e:#}");
    assert_eq!(e["output"]["done"], true);
}

#[tokio::test]
async fn sigterm_ends_what_outlasts_the_grace_period() {
    let mut server = Server::start(&["--shutdown-grace", "1"]).await;
    server.workflow("Endless", json!({"steps": [{"shell": "sleep 60"}]})).await;
    let id = id(&server.execute("endless", json!({})).await);
    server.wait_status(&id, "running", Duration::from_secs(10)).await;
    let started = std::time::Instant::now();
    let code = server.terminate(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{}", server.stderr());
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    assert_no_sandbox_left(&id, Duration::from_secs(1)).await;
    server.spawn().await;
    let e = server.execution(&id).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(e["error"]["code"], "worker_lost", "{e:#}");
    assert!(e["error"]["message"].as_str().unwrap().contains("shut down"));
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let server = Server::start(&[]).await;
    let output = std::process::Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already using the data dir"), "{stderr}");
}
