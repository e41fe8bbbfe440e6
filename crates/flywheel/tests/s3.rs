//! `--artifacts s3://bucket/prefix` against a real S3-compatible server
//! started by the test (`s3s-fs`, which checks every request's signature):
//! artifacts land in the bucket and not in the data dir, downloads redirect
//! to presigned URLs that serve the right bytes and types (ranges too) and
//! break when tampered with, deleting a workflow deletes its objects, and a
//! wrong key stops the server at startup with a clear message.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "flywheel-test-access";
const SECRET_KEY: &str = "flywheel-test-secret-0123456789";
const BUCKET: &str = "flywheel-artifacts";

/// A throwaway `s3s-fs` server with one bucket, stopped on drop.
struct S3Server {
    child: Child,
    endpoint: String,
    root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("s3s-fs"))
        .find(|p| p.is_file());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    on_path.or_else(|| cargo_home.map(|c| c.join("bin/s3s-fs")).filter(|p| p.is_file())).expect(
        "s3s-fs is missing: install it with `cargo install --locked s3s-fs --version 0.14.1 --features binary` (make test does)",
    )
}

impl S3Server {
    async fn start() -> S3Server {
        let root = tempfile::tempdir().expect("bucket root");
        std::fs::create_dir(root.path().join(BUCKET)).expect("the bucket's directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        S3Server { child, endpoint: format!("http://127.0.0.1:{port}"), root }
    }

    fn env(&self, secret: &'static str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", secret.to_owned()),
        ]
    }

    /// The object's file in the bucket's directory.
    fn object(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }
}

async fn server_on(s3: &S3Server) -> Server {
    let env = s3.env(SECRET_KEY);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with_env(&["--artifacts", &format!("s3://{BUCKET}/runs/")], &env).await
}

const REPORT: &str = "printf 'report line\\n' > /work/artifacts/report.txt; echo done";

#[tokio::test]
async fn artifacts_live_in_the_bucket_and_downloads_redirect_to_presigned_urls() {
    let s3 = S3Server::start().await;
    let fixture = Fixture::start().await;
    let server = server_on(&s3).await;
    server
        .workflow(
            "Bucketed",
            json!({"steps": [
                {"shell": {"command": REPORT, "name": "said"}},
                {"goto": format!("{}/red", fixture.url)},
                {"screenshot": {"name": "red"}},
            ]}),
        )
        .await;
    let id = id(&server.execute("bucketed", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");

    // The objects are in the bucket under the prefix, not in the data dir.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s3.object(&format!("runs/{id}/logs.jsonl")).is_file() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for name in ["output.json", "logs.jsonl", "report.txt", "screenshot-001-red.png"] {
        assert!(s3.object(&format!("runs/{id}/{name}")).is_file(), "{name} is in the bucket");
    }
    assert!(!server.data_dir.join("artifacts").join(&id).exists(), "nothing in the data dir");
    let report = std::fs::read_to_string(s3.object(&format!("runs/{id}/report.txt"))).unwrap();
    assert_eq!(report, "report line\n");

    // The signed URL redirects to a presigned URL of the bucket…
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let output_url = e["output_url"].as_str().unwrap();
    let response = no_redirects.get(output_url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    let presigned = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(presigned.starts_with(&format!("{}/{BUCKET}/runs/{id}/output.json?", s3.endpoint)), "{presigned}");
    assert!(presigned.contains("X-Amz-Signature="), "{presigned}");
    assert!(!presigned.contains(SECRET_KEY));
    // …which serves the bytes with their type.
    let plain = reqwest::Client::new();
    let response = plain.get(&presigned).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, e["output"]);
    // Followed the way a browser does, a range of the screenshot.
    let artifacts = server.get(&format!("/api/executions/{id}/artifacts")).await;
    let png = artifacts["items"].as_array().unwrap().iter().find(|a| a["name"] == "screenshot-001-red.png").unwrap();
    let ranged = plain.get(png["url"].as_str().unwrap()).header("range", "bytes=0-7").send().await.unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.headers()["content-type"], "image/png");
    assert_eq!(&ranged.bytes().await.unwrap()[..], b"\x89PNG\r\n\x1a\n");
    // A tampered presigned URL is refused by the bucket itself.
    let tampered = presigned.replace("output.json", "logs.jsonl");
    assert_eq!(plain.get(&tampered).send().await.unwrap().status(), StatusCode::FORBIDDEN);
    // The API key works as well, and an unsigned request still does not.
    let with_key = no_redirects
        .get(format!("{}/api/executions/{id}/artifacts/report.txt", server.url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), StatusCode::TEMPORARY_REDIRECT);
    let bare = output_url.split('?').next().unwrap();
    assert_eq!(no_redirects.get(bare).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);

    // Deleting the workflow deletes its executions' objects.
    let (status, _) = server.request(reqwest::Method::DELETE, "/api/workflows/bucketed", None).await;
    assert!(status.is_success(), "{status}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while s3.object(&format!("runs/{id}/output.json")).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!s3.object(&format!("runs/{id}/output.json")).exists(), "the objects were deleted");
}

#[tokio::test]
async fn links_in_the_artifacts_dir_upload_nothing_of_the_host_to_the_bucket() {
    let s3 = S3Server::start().await;
    let server = server_on(&s3).await;
    let host_secret = std::fs::read(server.data_dir.join("secrets.key")).unwrap();
    let attack =
        "ln -s /etc/passwd artifacts/passwd; ln -s ../../../secrets.key artifacts/key; mkfifo artifacts/fifo; \
                  echo fine > artifacts/fine.txt";
    server.workflow("Links", json!({"steps": [{"shell": attack}]})).await;
    let id = id(&server.execute("links", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s3.object(&format!("runs/{id}/logs.jsonl")).is_file() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(s3.object(&format!("runs/{id}/fine.txt")).is_file(), "an ordinary file is uploaded");
    for name in ["passwd", "key", "fifo"] {
        assert!(!s3.object(&format!("runs/{id}/{name}")).exists(), "{name} was uploaded");
    }
    for entry in std::fs::read_dir(s3.object(&format!("runs/{id}"))).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(host_secret.len()).any(|w| w == host_secret));
        assert!(!bytes.windows(10).any(|w| w == b"root:x:0:0"));
    }
}

#[tokio::test]
async fn a_bucket_that_cannot_be_used_stops_the_server_at_startup_saying_why() {
    let s3 = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--artifacts", &format!("s3://{BUCKET}/runs")])
        .env_remove("DATABASE_URL")
        .envs(s3.env("not-the-secret"))
        .stdin(Stdio::null())
        .output()
        .expect("run flywheel serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "cannot use the artifacts bucket s3://flywheel-artifacts/runs: the server refused the credentials"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("AWS_SECRET_ACCESS_KEY"), "it says what to check: {stderr}");
    assert!(!stderr.contains("not-the-secret"), "the secret is not printed");
    // A bucket that does not exist is named as such.
    let out = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--artifacts", "s3://no-such-bucket/runs"])
        .env_remove("DATABASE_URL")
        .envs(s3.env(SECRET_KEY))
        .stdin(Stdio::null())
        .output()
        .expect("run flywheel serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("there is no bucket no-such-bucket at that endpoint: create it first"), "{stderr}");
}
