//! `--runtime docker`: executions in real containers of an image built from
//! the repo's docker/Dockerfile (on the debootstrap base image of
//! docker/build-base-image.sh, since nothing can be pulled), with limits,
//! labels, a read-only root, and no container left after a completion, a
//! stop, a crash of the node, or a container nobody owns.

mod common;

use common::containers::*;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

async fn docker_server(extra: &[&str]) -> Server {
    let image = test_image();
    let mut args = vec!["--runtime", "docker", "--docker-image", image, "--lease-secs", "3"];
    args.extend_from_slice(extra);
    Server::start(&args).await
}

/// A Docker server whose sandboxes reach no private address.
async fn strict_docker_server(extra: &[&str]) -> Server {
    let image = test_image();
    let mut args = vec!["--runtime", "docker", "--docker-image", image, "--lease-secs", "3"];
    args.extend_from_slice(extra);
    Server::start_strict(&args, &[]).await
}

const PROBE: &str = r#"
report() { echo "$1=$2" >> /work/report.txt; }
: > /work/report.txt
report hostname "$(hostname)"
report memory "$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
report pids "$(cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max)"
report cpu "$(cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo "$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)")"
if touch /usr/flywheel-probe 2>/dev/null; then report root writable; else report root read-only; fi
if touch /tmp/probe 2>/dev/null; then report tmp writable; else report tmp read-only; fi
report caps "$(grep CapEff /proc/self/status | tr -d '\t' | cut -d: -f2)"
report key "${FLYWHEEL_API_KEY:-unset}"
report uid "$(id -u)"
cat /work/report.txt
"#;

#[tokio::test]
async fn shell_and_browser_steps_run_in_a_limited_container() {
    let fixture = Fixture::start().await;
    // The container has no network of its own: it reaches the fixture on
    // 127.0.0.1 through the egress proxy.
    let server = docker_server(&["--sandbox-memory", "1g", "--sandbox-pids", "512", "--sandbox-cpus", "1.5"]).await;
    server
        .workflow(
            "In a container",
            json!({"steps": [
                {"shell": {"command": PROBE, "name": "report"}},
                {"goto": format!("{}/form", fixture.url)},
                {"type": {"selector": "#name", "text": "{{ input.name }}"}},
                {"click": {"text": "Go"}},
                {"extract": {"name": "result", "selector": "#result"}},
                {"screenshot": {"name": "form"}},
            ]}),
        )
        .await;
    let id = id(&server.execute("in-a-container", json!({"name": "Ada"})).await);
    let _cleanup = RemoveOnDrop(vec![id.clone()]);
    let e = server.wait_terminal(&id, Duration::from_secs(90)).await;
    assert_eq!(e["status"], "completed", "{e:#}\n{}", server.stderr());
    let report = e["output"]["report"].as_str().expect("the probe's report");
    let facts: std::collections::HashMap<&str, &str> = report.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(facts["hostname"], "flywheel-sandbox", "{report}");
    assert_eq!(facts["memory"], (1u64 << 30).to_string(), "the memory limit: {report}");
    assert_eq!(facts["pids"], "512", "the pids limit: {report}");
    assert_eq!(facts["cpu"], "150000 100000", "one and a half CPUs: {report}");
    assert_eq!(facts["root"], "read-only", "{report}");
    assert_eq!(facts["tmp"], "writable", "{report}");
    assert_eq!(facts["caps"], "0000000000000000", "no capabilities: {report}");
    assert_eq!(facts["key"], "unset", "a clean environment: {report}");
    assert_ne!(facts["uid"], "0", "nothing in a container is root: {report}");
    assert_eq!(e["output"]["result"], "Hello Ada from", "the browser in the container drove the page");
    assert!(fixture.hits() >= 1);
    assert_eq!(e["n_screenshots"], 1);
    let png = std::fs::read(artifact_path(&server.data_dir, &id, "screenshot-001-form.png"))
        .expect("the screenshot artifact");
    assert_eq!(&png[1..4], b"PNG");
    let artifacts = server.get(&format!("/api/executions/{id}/artifacts")).await;
    let names: Vec<&str> = artifacts["items"].as_array().unwrap().iter().filter_map(|a| a["name"].as_str()).collect();
    assert!(names.iter().any(|n| n.ends_with(".mp4") || n.ends_with(".webm")), "a video was recorded: {names:?}");
    wait_for_containers(&id, false, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_stop_removes_the_container_at_once() {
    let server = docker_server(&[]).await;
    server.workflow("Sleeper", json!({"steps": [{"shell": "sleep 300"}]})).await;
    let id = id(&server.execute("sleeper", json!({})).await);
    let _cleanup = RemoveOnDrop(vec![id.clone()]);
    server.wait_status(&id, "running", Duration::from_secs(30)).await;
    wait_for_containers(&id, true, Duration::from_secs(10)).await;
    let started = Instant::now();
    let (status, _) = server.request(reqwest::Method::POST, &format!("/api/executions/{id}/stop"), None).await;
    assert!(status.is_success(), "{status}");
    let e = server.wait_terminal(&id, Duration::from_secs(5)).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(e["error"]["code"], "stopped");
    wait_for_containers(&id, false, Duration::from_secs(3)).await;
    assert!(started.elapsed() < Duration::from_secs(4), "stopped and removed in {:?}", started.elapsed());
}

#[tokio::test]
async fn a_crashed_node_leaves_no_container_behind() {
    let mut server = docker_server(&[]).await;
    server.workflow("Sleeper", json!({"steps": [{"shell": "sleep 300"}]})).await;
    let id = id(&server.execute("sleeper", json!({})).await);
    let _cleanup = RemoveOnDrop(vec![id.clone()]);
    server.wait_status(&id, "running", Duration::from_secs(30)).await;
    wait_for_containers(&id, true, Duration::from_secs(10)).await;
    let labels = ["flywheel.managed", "flywheel.execution", "flywheel.node", "flywheel.deployment"];
    let container = containers_of(&id).remove(0);
    for label in labels {
        assert!(!label_of(&container, label).is_empty(), "the container is labelled {label}");
    }
    assert_eq!(label_of(&container, "flywheel.execution"), id);
    server.kill9();
    // The agent sees its worker go (its stdin closes) and ends the run at
    // once: nothing keeps acting for an execution another node may retry…
    let deadline = Instant::now() + Duration::from_secs(5);
    while container_running_state(&container) == "true" {
        assert!(Instant::now() < deadline, "the container still runs 5 s after its node died");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(containers_of(&id).len(), 1, "the stopped container stays until someone cleans up");
    // …and when the node comes back the execution is lost and the reconciler removes the container.
    server.spawn().await;
    let e = server.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(e["error"]["code"], "worker_lost");
    wait_for_containers(&id, false, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn the_reconciler_removes_its_deployments_containers_of_executions_that_are_not_running() {
    let image = test_image();
    let server = docker_server(&[]).await;
    server.workflow("Sleeper", json!({"steps": [{"shell": "sleep 300"}]})).await;
    let id = id(&server.execute("sleeper", json!({})).await);
    let (stray, foreign) = (uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7().to_string());
    let _cleanup = RemoveOnDrop(vec![id.clone(), stray.clone(), foreign.clone()]);
    server.wait_status(&id, "running", Duration::from_secs(30)).await;
    wait_for_containers(&id, true, Duration::from_secs(10)).await;
    let deployment = label_of(&containers_of(&id)[0], "flywheel.deployment");
    let leftover = |execution: &str, deployment: &str| {
        let out = docker(&[
            "run",
            "-d",
            "--label",
            "flywheel.managed=true",
            "--label",
            &format!("flywheel.deployment={deployment}"),
            "--label",
            &format!("flywheel.execution={execution}"),
            "--entrypoint",
            "/bin/sleep",
            image,
            "300",
        ]);
        assert!(out.status.success(), "docker run: {}", String::from_utf8_lossy(&out.stderr));
    };
    // A container of this deployment for an execution it does not know…
    leftover(&stray, &deployment);
    // …and one of another deployment sharing the Docker engine.
    leftover(&foreign, "another-deployment");
    wait_for_containers(&stray, false, Duration::from_secs(10)).await;
    assert_eq!(containers_of(&foreign).len(), 1, "another deployment's container was left alone");
    assert_eq!(containers_of(&id).len(), 1, "the running execution's container was left alone");
    assert_eq!(server.execution(&id).await["status"], "running");
}

#[tokio::test]
async fn a_missing_image_is_a_sandbox_error_that_says_how_to_build_it() {
    let server = Server::start(&["--runtime", "docker", "--docker-image", "flywheel-no-such-image:never"]).await;
    server.workflow("Echo", json!({"steps": [{"shell": "echo hi"}]})).await;
    let id = id(&server.execute("echo", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(e["error"]["code"], "sandbox_error", "{e:#}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("flywheel-no-such-image:never") && message.contains("make docker-image"), "{message}");
}

#[tokio::test]
async fn hostile_steps_in_a_container_get_nothing_out() {
    let server = strict_docker_server(&["--sandbox-pids", "64", "--sandbox-disk", "64m"]).await;
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let host_secret = std::fs::read(server.data_dir.join("secrets.key")).unwrap();
    let attack = r#"
ln -s /etc/passwd artifacts/passwd; ln -s ../../secrets.key artifacts/key; mkfifo artifacts/fifo
for fd in /proc/[0-9]*/fd/*; do printf '%s\n' '{"type":"output","name":"forged","value":1}' > "$fd" 2>/dev/null; done
mv /work/artifacts /work/x; ln -s /etc /work/artifacts
"#;
    // The server's own API, through the only way out there is.
    let api = json!({"http": {"url": format!("http://127.0.0.1:{port}/api/health")}, "continue_on_error": true});
    server.workflow("Hostile", json!({"steps": [api, {"shell": attack}]})).await;
    let run = id(&server.execute("hostile", json!({})).await);
    let _cleanup = RemoveOnDrop(vec![run.clone()]);
    let e = server.wait_terminal(&run, Duration::from_secs(90)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert!(e["output"].get("forged").is_none(), "a forged event was taken: {e:#}");
    let log = e["logs"].to_string();
    assert!(log.contains("no files were collected"), "{log}");
    assert!(log.contains("network: refused GET http://127.0.0.1:"), "the API is out of reach: {log}");
    let list = server.get(&format!("/api/executions/{run}/artifacts")).await;
    for item in list["items"].as_array().unwrap() {
        let name = item["name"].as_str().unwrap();
        let bytes = std::fs::read(artifact_path(&server.data_dir, &run, name)).unwrap_or_default();
        assert!(!bytes.windows(host_secret.len()).any(|w| w == host_secret), "{name}");
        assert!(!bytes.windows(10).any(|w| w == b"root:x:0:0"), "{name}");
    }
    // Limits hold in containers too, and are named.
    server.workflow("Forks", json!({"steps": [{"shell": "for i in $(seq 200); do sleep 30 & done; sleep 1"}]})).await;
    server.workflow("Fills", json!({"steps": [{"shell": "head -c 100m /dev/zero > /work/big.bin"}]})).await;
    for (slug, named) in [("fills", "--sandbox-disk"), ("forks", "--sandbox-pids")] {
        let run = id(&server.execute(slug, json!({})).await);
        let _cleanup = RemoveOnDrop(vec![run.clone()]);
        let e = server.wait_terminal(&run, Duration::from_secs(90)).await;
        assert_eq!(e["error"]["code"], "sandbox_error", "{slug}: {e:#}");
        assert!(e["error"]["message"].as_str().unwrap().contains(named), "{slug}: {e:#}");
    }
}
