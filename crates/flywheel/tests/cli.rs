//! The CLI client against a real server: create, list, get, execute
//! (--wait), executions list/get/logs --follow/retry/stop, --json, and
//! errors as one clear line with a non-zero exit.

mod common;

use common::*;
use std::process::{Command, Output};

fn cli(server: &Server, args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env("FLYWHEEL_URL", &server.url)
        .env("FLYWHEEL_API_KEY", KEY)
        .env_remove("FLYWHEEL_LOG")
        .output()
        .expect("run the CLI")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(server: &Server, args: &[&str]) -> String {
    let o = cli(server, args);
    assert!(o.status.success(), "flywheel {args:?} failed: {}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

fn repo_file(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn workflows_and_executions_from_the_command_line() {
    let server = Server::start(&[]).await;
    let out = ok(&server, &["workflows", "create", "-f", &repo_file("examples/hello.yaml")]);
    assert!(out.contains("Created workflow Hello Flywheel (hello-flywheel), version 1"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("fails.yaml");
    std::fs::write(&bare, "name: Fails\nsteps:\n  - shell: exit 4\n").unwrap();
    ok(&server, &["workflows", "create", "--file", bare.to_str().unwrap()]);

    let list = ok(&server, &["workflows", "list"]);
    assert!(list.contains("hello-flywheel") && list.contains("fails") && list.starts_with("SLUG"), "{list}");
    let got: serde_json::Value =
        serde_json::from_str(&ok(&server, &["workflows", "get", "hello-flywheel", "--json"])).unwrap();
    assert_eq!(got["slug"], "hello-flywheel");
    let human = ok(&server, &["workflows", "get", "hello-flywheel"]);
    assert!(human.contains("specification:") && human.contains("payload_schema"), "{human}");

    // execute --wait: the result, exit 0.
    let o = cli(&server, &["execute", "hello-flywheel", "--input", r#"{"name": "Ada"}"#, "--wait"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("COMPLETED") && out.contains("Hello, Ada!"), "{out}");
    assert!(out.contains("output_url: http"), "{out}");

    // A failure exits 1 and says why.
    let o = cli(&server, &["execute", "fails", "--wait"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("step_failed"), "{}", stdout(&o));

    // --json without --wait: the queued execution.
    let queued: serde_json::Value =
        serde_json::from_str(&ok(&server, &["execute", "hello-flywheel", "--json"])).unwrap();
    let id = queued["execution_uuid"].as_str().unwrap().to_owned();
    assert_eq!(queued["status"], "queued");

    // logs --follow ends when the execution does, with everything in order.
    let logs = ok(&server, &["executions", "logs", &id, "--follow"]);
    assert!(logs.contains("Execution queued"), "{logs}");
    assert!(logs.trim_end().ends_with("Execution completed"), "{logs}");
    assert!(logs.contains("Hello, world!"), "default input: {logs}");
    let json_logs = ok(&server, &["executions", "logs", &id, "--json"]);
    assert!(json_logs.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));

    let listed = ok(&server, &["executions", "list", "--workflow", "hello-flywheel"]);
    assert!(listed.contains(&id) && listed.contains("completed"), "{listed}");
    assert_eq!(listed.lines().count(), 3, "header + 2 executions of hello-flywheel: {listed}");
    let failed = ok(&server, &["executions", "list", "--status", "failed"]);
    assert!(failed.contains("step_failed"), "{failed}");
    let shown = ok(&server, &["executions", "get", &id]);
    assert!(shown.contains("COMPLETED") && shown.contains("log:") && shown.contains("steps: 3"), "{shown}");

    let retried = ok(&server, &["executions", "retry", &id, "--wait"]);
    assert!(retried.contains("COMPLETED") && retried.contains(&format!("retry of {id}")), "{retried}");

    // Stopping a finished execution: one line, non-zero.
    let o = cli(&server, &["executions", "stop", &id]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains("already completed") && err.contains("409"), "{err}");
}

#[tokio::test]
async fn errors_are_one_clear_line() {
    let server = Server::start(&[]).await;
    let o = Command::new(binary())
        .args(["workflows", "list"])
        .env("FLYWHEEL_URL", &server.url)
        .env("FLYWHEEL_API_KEY", "fw_not_the_key_at_all_0000000000000000")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).trim(), "error: Invalid API key (401)");

    let o = Command::new(binary())
        .args(["workflows", "list"])
        .env("FLYWHEEL_URL", "http://127.0.0.1:1")
        .env("FLYWHEEL_API_KEY", KEY)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("could not reach Flywheel at http://127.0.0.1:1"), "{}", stderr(&o));

    let o = cli(&server, &["execute", "nothing-here"]);
    assert!(stderr(&o).contains("Workflow not found (404)"), "{}", stderr(&o));
    let o = cli(&server, &["execute", "x", "--input", "{nope"]);
    assert!(stderr(&o).contains("--input is not valid JSON"), "{}", stderr(&o));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: Bad\nsteps:\n  - teleport: mars\n").unwrap();
    let o = cli(&server, &["workflows", "create", "-f", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("specification.steps.0: unknown action \"teleport\""), "{}", stderr(&o));

    let help = Command::new(binary()).args(["execute", "--help"]).output().unwrap();
    assert!(stdout(&help).contains("--wait") && stdout(&help).contains("FLYWHEEL_URL"), "{}", stdout(&help));
}

#[tokio::test]
async fn apply_publishes_versions_and_delete_asks_first() {
    let server = Server::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wf.yaml");
    std::fs::write(&file, "name: Applied\nsteps:\n  - set: {name: v, value: 1}\n").unwrap();
    let f = file.to_str().unwrap();
    assert!(ok(&server, &["workflows", "apply", "-f", f]).contains("Created workflow Applied (applied), version 1"));
    assert!(ok(&server, &["workflows", "apply", "-f", f]).contains("Unchanged workflow Applied (applied), version 1"));
    std::fs::write(&file, "name: Applied\nsteps:\n  - set: {name: v, value: 2}\n").unwrap();
    assert!(ok(&server, &["workflows", "apply", "-f", f]).contains("Updated workflow Applied (applied), version 2"));

    // Not on a terminal and no --yes: nothing is deleted.
    let o = cli(&server, &["workflows", "delete", "applied"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("pass --yes"), "{}", stderr(&o));
    assert!(ok(&server, &["workflows", "get", "applied"]).contains("version:     2 of 2"));
    ok(&server, &["workflows", "delete", "applied", "--yes"]);
    assert_eq!(cli(&server, &["workflows", "get", "applied"]).status.code(), Some(1));
}

#[tokio::test]
async fn output_piped_into_head_ends_quietly() {
    let server = Server::start(&[]).await;
    server.workflow("Chatty", serde_json::json!({"steps": [{"shell": "seq 1 3000"}]})).await;
    let e = server.execute("chatty", serde_json::json!({})).await;
    let id = id(&e);
    server.wait_terminal(&id, std::time::Duration::from_secs(20)).await;
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("'{}' executions logs {id} | head -n 1; echo \"status=${{PIPESTATUS:-done}}\"", binary()))
        .env("FLYWHEEL_URL", &server.url)
        .env("FLYWHEEL_API_KEY", KEY)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    assert_eq!(stdout(&out).lines().count(), 2, "one log line, then the status: {}", stdout(&out));
}

#[tokio::test]
async fn secrets_from_the_command_line() {
    use std::io::Write;
    let server = Server::start(&[]).await;
    let mut child = Command::new(binary())
        .args(["secrets", "set", "API_TOKEN"])
        .env("FLYWHEEL_URL", &server.url)
        .env("FLYWHEEL_API_KEY", KEY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"tok-123\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("Saved secret API_TOKEN"));
    let listed = ok(&server, &["secrets", "list"]);
    assert!(listed.contains("API_TOKEN") && !listed.contains("tok-123"), "{listed}");
    server.workflow("Uses token", serde_json::json!({"steps": [{"shell": {"command": "printf %s '{{ secrets.API_TOKEN }}' | wc -c", "name": "len"}}]})).await;
    let e = server.execute("uses-token", serde_json::json!({})).await;
    let done = server.wait_terminal(&id(&e), std::time::Duration::from_secs(20)).await;
    assert_eq!(done["output"]["len"], "7", "the trailing newline was dropped: {done:#}");
    ok(&server, &["secrets", "delete", "API_TOKEN"]);
    assert!(ok(&server, &["secrets", "list"]).contains("No secrets"));
}
