//! Docker helpers of the tests: the execution image (built once per test
//! binary from docker/Dockerfile around this build's binary, on the
//! debootstrap base image) and the containers of an execution.

use super::binary;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BASE_IMAGE: &str = "flywheel-sandbox-base:bookworm";
pub const TEST_IMAGE: &str = "flywheel-test-sandbox:latest";

pub fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("the docker CLI runs")
}

/// Builds the execution image once per test binary with
/// docker/build-image.sh, around this build's `flywheel` binary.
pub fn test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        assert!(
            docker(&["image", "inspect", BASE_IMAGE]).status.success(),
            "the base image {BASE_IMAGE} is missing: build it with docker/build-base-image.sh (make test does)"
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker/build-image.sh");
        let out = Command::new(script).args([TEST_IMAGE, binary(), BASE_IMAGE]).output().expect("build-image.sh runs");
        assert!(out.status.success(), "docker/build-image.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    });
    TEST_IMAGE
}

/// IDs of the containers (running or not) labelled for `execution`.
pub fn containers_of(execution: &str) -> Vec<String> {
    let out = docker(&["ps", "-a", "-q", "--filter", &format!("label=flywheel.execution={execution}")]);
    assert!(out.status.success(), "docker ps: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
}

/// Removes the containers of the listed executions when a test ends, passed
/// or not: a node killed by the test (or a failing assertion) must not leave
/// containers on the machine.
#[derive(Default)]
pub struct RemoveOnDrop(pub Vec<String>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for execution in &self.0 {
            for container in containers_of(execution) {
                docker(&["rm", "-f", &container]);
            }
        }
    }
}

pub fn label_of(container: &str, label: &str) -> String {
    let out = docker(&["inspect", "-f", &format!("{{{{index .Config.Labels \"{label}\"}}}}"), container]);
    assert!(out.status.success(), "docker inspect: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `true` while the container runs.
pub fn container_running_state(container: &str) -> String {
    let out = docker(&["inspect", "-f", "{{.State.Running}}", container]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub async fn wait_for_containers(execution: &str, present: bool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let found = containers_of(execution);
        if found.is_empty() != present {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "containers of {execution} after {within:?}: {found:?} (expected {})",
            if present { "one" } else { "none" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
