//! The sandbox: what an execution can see and touch, and what happens when
//! bubblewrap is missing or cannot create namespaces.

mod common;

use common::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const PROBE: &str = r#"
report() { echo "$1=$2"; }
if [ -e "{{ input.data_dir }}" ]; then report data_dir visible; else report data_dir hidden; fi
if [ -e "{{ input.data_dir }}/api-key" ]; then report key_file visible; else report key_file hidden; fi
if [ -e "{{ input.data_dir }}/flywheel.db" ]; then report database visible; else report database hidden; fi
if env | grep -q FLYWHEEL_API_KEY; then report key_env visible; else report key_env hidden; fi
for target in /usr/flywheel-probe /etc/flywheel-probe /flywheel-probe /opt/flywheel/probe /root/flywheel-probe; do
  if touch "$target" 2>/dev/null; then report "write:$target" allowed; else report "write:$target" denied; fi
done
if echo ok > /work/probe.txt; then report write:/work allowed; fi
if echo ok > /tmp/{{ input.tmp_marker }}; then report write:/tmp allowed; fi
report hostname "$(hostname)"
report pids "$(ls /proc | grep -cE '^[0-9]+$')"
report env_vars "$(env | wc -l)"
report root_entries "$(ls / | tr '\n' ' ')"
setsid sleep 300 > /dev/null 2>&1 < /dev/null &
"#;

#[tokio::test]
async fn the_agent_sees_only_its_work_dir_and_no_secrets() {
    let server = Server::start(&[]).await;
    server.workflow("Probe", json!({"steps": [{"shell": {"command": PROBE, "name": "report"}}]})).await;
    let marker = format!("flywheel-tmp-marker-{}", std::process::id());
    let id = id(&server
        .execute("probe", json!({"data_dir": server.data_dir.to_string_lossy(), "tmp_marker": marker}))
        .await);
    let e = server.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    let report = e["output"]["report"].as_str().unwrap();
    let facts: std::collections::HashMap<&str, &str> = report.lines().filter_map(|l| l.split_once('=')).collect();
    for hidden in ["data_dir", "key_file", "database", "key_env"] {
        assert_eq!(facts[hidden], "hidden", "{hidden}: {report}");
    }
    for target in
        ["/usr/flywheel-probe", "/etc/flywheel-probe", "/flywheel-probe", "/opt/flywheel/probe", "/root/flywheel-probe"]
    {
        assert_eq!(facts[format!("write:{target}").as_str()], "denied", "{target}: {report}");
        assert!(!std::path::Path::new(target).exists());
    }
    assert_eq!(facts["write:/work"], "allowed");
    assert_eq!(facts["write:/tmp"], "allowed");
    assert!(!std::path::Path::new("/tmp").join(&marker).exists(), "the sandbox's /tmp is its own");
    assert_eq!(facts["hostname"], "flywheel-sandbox");
    let pids: usize = facts["pids"].parse().unwrap();
    assert!(pids < 10, "a PID namespace of its own, not the host's processes: {pids}");
    let env_vars: usize = facts["env_vars"].parse().unwrap();
    assert!(env_vars < 15, "a clean environment: {report}");
    assert!(!facts["root_entries"].contains("data"), "{report}");
    // Nothing of the key anywhere the execution could put it.
    let everything = format!("{e}");
    assert!(!everything.contains(KEY));
    let log = read_artifact(&server.data_dir, &id, "logs.jsonl").await;
    assert!(!log.contains(KEY));
    // The detached `sleep 300` died with the sandbox.
    assert_no_sandbox_left(&id, Duration::from_secs(2)).await;
    // The work dir is gone once the execution ended.
    assert!(!server.data_dir.join("sandboxes").join(&id).exists());
}

#[tokio::test]
async fn without_bubblewrap_nothing_runs_and_the_error_says_what_to_install() {
    let server = Server::start(&["--bwrap-path", "/nonexistent/bwrap"]).await;
    let marker = std::env::temp_dir().join(format!("flywheel-unsandboxed-{}", std::process::id()));
    server.workflow("Escape", json!({"steps": [{"shell": format!("touch {}", marker.display())}]})).await;
    let id = id(&server.execute("escape", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(e["error"]["code"], "sandbox_error");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("apt-get install bubblewrap"), "{message}");
    assert!(!marker.exists(), "nothing ran unsandboxed");
    assert_eq!(e["n_steps"], 0);
}

#[tokio::test]
async fn when_bubblewrap_cannot_create_namespaces_the_error_says_what_to_enable() {
    // A bwrap that fails the way it does on kernels without unprivileged
    // user namespaces.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("bwrap");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace, likely because the kernel does not allow non-privileged user namespaces. On e.g. debian this can be enabled with sysctl kernel.unprivileged_userns_clone=1.' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Server::start(&["--bwrap-path", fake.to_str().unwrap()]).await;
    server.workflow("Nope", json!({"steps": [{"shell": "true"}]})).await;
    let id = id(&server.execute("nope", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(e["error"]["code"], "sandbox_error", "{e:#}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("No permissions to creating new namespace"), "bwrap's own words: {message}");
    assert!(message.contains("unprivileged user namespaces"), "and what to enable: {message}");
}

#[tokio::test]
async fn an_agent_that_dies_is_an_agent_error() {
    let server = Server::start(&[]).await;
    // The shell kills its own agent (the parent of sh) mid-run.
    server.workflow("Suicide", json!({"steps": [{"shell": "kill -9 $PPID; sleep 5"}]})).await;
    let id = id(&server.execute("suicide", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(e["error"]["code"], "agent_error", "{e:#}");
    assert!(e["error"]["message"].as_str().unwrap().contains("ended unexpectedly"), "{e}");
    assert_no_sandbox_left(&id, Duration::from_secs(2)).await;
}
