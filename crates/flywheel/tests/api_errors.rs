//! Success and error paths of every endpoint: 401 without a valid key, 404
//! for unknown ids, 409 for forbidden transitions and taken slugs, 422 in
//! FastAPI's shape, and that bad input changes nothing.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

fn assert_detail_string(body: &Value) {
    assert!(body["detail"].is_string(), "FastAPI error shape: {body}");
}

fn assert_422(status: StatusCode, body: &Value, loc: &[Value]) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let details = body["detail"].as_array().unwrap_or_else(|| panic!("422 detail is a list: {body}"));
    for d in details {
        assert!(d["loc"].is_array() && d["msg"].is_string() && d["type"].is_string(), "{d}");
    }
    assert!(details.iter().any(|d| d["loc"].as_array().unwrap().as_slice() == loc), "no error at {loc:?} in {body}");
}

#[tokio::test]
async fn every_protected_endpoint_needs_a_valid_key() {
    let server = Server::start(&[]).await;
    let wf = server.workflow("Auth", json!({"steps": [{"shell": "true"}]})).await;
    let e = server.execute("auth", json!({})).await;
    let (w, x) = (wf["workflow_uuid"].as_str().unwrap(), id(&e));
    let endpoints = [
        (Method::POST, "/api/workflows".to_owned()),
        (Method::GET, "/api/workflows".to_owned()),
        (Method::GET, format!("/api/workflows/{w}")),
        (Method::PATCH, format!("/api/workflows/{w}")),
        (Method::DELETE, format!("/api/workflows/{w}")),
        (Method::GET, format!("/api/workflows/{w}/versions")),
        (Method::GET, format!("/api/workflows/{w}/version/1")),
        (Method::POST, format!("/api/workflows/{w}/execute")),
        (Method::POST, format!("/api/workflows/{w}/run")),
        (Method::GET, "/api/executions".to_owned()),
        (Method::GET, format!("/api/executions/{x}")),
        (Method::POST, format!("/api/executions/{x}/retry")),
        (Method::POST, format!("/api/executions/{x}/stop")),
        (Method::GET, format!("/api/executions/{x}/logs")),
        (Method::GET, format!("/api/executions/{x}/events")),
        (Method::GET, format!("/api/executions/{x}/artifacts")),
        (Method::GET, format!("/api/executions/{x}/artifacts/output.json")),
        (Method::GET, "/metrics".to_owned()),
    ];
    for (method, path) in &endpoints {
        for key in [None, Some("fw_wrong_key_wrong_key_wrong_key_wrong_k")] {
            let (status, body) = server.request_with_key(method.clone(), path, Some(json!({})), key).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with {key:?}: {body}");
            assert_detail_string(&body);
        }
    }
    // Nothing changed.
    assert_eq!(server.get("/api/workflows").await["items"].as_array().unwrap().len(), 1);
    assert!(server.execution(&x).await["retried_by"].is_null());

    // All three headers are accepted.
    for header in ["authorization", "x-api-key", "kinetic-api-key"] {
        let value = if header == "authorization" { format!("Bearer {KEY}") } else { KEY.to_owned() };
        let r = server.http.get(format!("{}/api/workflows", server.url)).header(header, value).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{header}");
    }
}

#[tokio::test]
async fn unknown_ids_are_404() {
    let server = Server::start(&[]).await;
    let nobody = "01934c3c-0000-7000-8000-000000000000";
    for (method, path) in [
        (Method::GET, format!("/api/workflows/{nobody}")),
        (Method::GET, "/api/workflows/no-such-slug".to_owned()),
        (Method::PATCH, format!("/api/workflows/{nobody}")),
        (Method::DELETE, format!("/api/workflows/{nobody}")),
        (Method::GET, format!("/api/workflows/{nobody}/versions")),
        (Method::POST, format!("/api/workflows/{nobody}/execute")),
        (Method::GET, format!("/api/executions/{nobody}")),
        (Method::GET, "/api/executions/not-a-uuid".to_owned()),
        (Method::POST, format!("/api/executions/{nobody}/retry")),
        (Method::POST, format!("/api/executions/{nobody}/stop")),
        (Method::GET, format!("/api/executions/{nobody}/logs")),
        (Method::GET, format!("/api/executions/{nobody}/events")),
        (Method::GET, format!("/api/executions/{nobody}/artifacts")),
        (Method::GET, format!("/api/executions/{nobody}/artifacts/output.json")),
    ] {
        let (status, body) = server.request(method.clone(), &path, Some(json!({"name": "x"}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert_detail_string(&body);
    }
    let wf = server.workflow("W", json!({"steps": [{"shell": "true"}]})).await;
    let (status, _) = server.request(Method::GET, &format!("/api/workflows/w/version/{nobody}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.request(Method::GET, "/api/workflows/w/version/7", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let e = server.execute("w", json!({})).await;
    server.wait_terminal(&id(&e), Duration::from_secs(20)).await;
    let (status, _) =
        server.request(Method::GET, &format!("/api/executions/{}/artifacts/nope.png", id(&e)), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.request(Method::GET, &format!("/api/executions/{}/artifacts/..", id(&e)), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(wf["executions"], 0);
}

#[tokio::test]
async fn invalid_bodies_are_422_in_fastapi_shape_and_change_nothing() {
    let server = Server::start(&[]).await;
    let post = |body: Value| server.request(Method::POST, "/api/workflows", Some(body));

    let (s, b) = post(json!({"specification": {"steps": [{"shell": "true"}]}})).await;
    assert_422(s, &b, &[json!("body"), json!("name")]);
    let (s, b) = post(json!({"name": "x"})).await;
    assert_422(s, &b, &[json!("body"), json!("specification")]);
    let (s, b) = post(json!({"name": "x", "specification": {"steps": [{"shell": "true"}, {"frobnicate": 1}]}})).await;
    assert_422(s, &b, &[json!("body"), json!("specification"), json!("steps"), json!(1)]);
    let (s, b) = post(json!({"name": "x", "specification": {"timeout": "soon", "steps": [{"shell": "true"}]}})).await;
    assert_422(s, &b, &[json!("body"), json!("specification"), json!("timeout")]);
    let (s, b) = post(json!({"name": "x", "specification": {"prompt": "p", "payload_schema": {"type": 5}}})).await;
    assert_422(s, &b, &[json!("body"), json!("specification"), json!("payload_schema")]);
    let (s, b) = post(json!({"name": "x", "slug": "Not A Slug", "specification": {"prompt": "p"}})).await;
    assert_422(s, &b, &[json!("body"), json!("slug")]);
    let (s, b) = post(json!({"name": 5, "specification": {"prompt": "p"}})).await;
    assert_422(s, &b, &[json!("body"), json!("name")]);

    let raw = server
        .http
        .post(format!("{}/api/workflows", server.url))
        .bearer_auth(KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let b: Value = raw.json().await.unwrap();
    assert_eq!(b["detail"][0]["type"], "json_invalid");

    assert!(server.get("/api/workflows").await["items"].as_array().unwrap().is_empty(), "nothing was created");

    // Query parameters.
    for path in [
        "/api/executions?status=done",
        "/api/executions?limit=0",
        "/api/executions?limit=",
        "/api/executions?since=yesterday",
        "/api/workflows?limit=abc",
        "/api/executions/00000000-0000-7000-8000-000000000000/logs?after=x",
    ] {
        let (s, b) = server.request(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {b}");
        assert_eq!(b["detail"][0]["loc"][0], "query");
    }
    // Ids that cannot exist are 404s, NUL and all.
    for path in
        ["/api/workflows/a%00b", "/api/workflows/Not%20A%20Slug/versions", "/api/executions?workflow_uuid=a%00b"]
    {
        let (s, b) = server.request(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {b}");
    }
    let (s, b) = server.request(Method::DELETE, "/api/secrets/a%00b", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    // An unknown workflow to filter by is a 404, as on /api/workflows/{id}.
    let (s, b) = server.request(Method::GET, "/api/executions?workflow_uuid=xyz", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert_detail_string(&b);
    for cursor in ["garbage", "", "{00000000-0000-7000-8000-000000000000}"] {
        let (s, b) = server.request(Method::GET, &format!("/api/executions?cursor={cursor}"), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{cursor:?}: {b}");
        assert_detail_string(&b);
    }
}

#[tokio::test]
async fn nul_characters_are_kept_as_replacement_characters_on_every_backend() {
    let server = Server::start(&[]).await;
    let wf = server
        .post(
            "/api/workflows",
            json!({"name": "Nul\u{0}name", "description": "\u{0}", "specification": {"prompt": "a\u{0}b", "x\u{0}": 1}}),
        )
        .await;
    assert_eq!(wf["name"], "Nul\u{FFFD}name", "{wf}");
    assert_eq!(wf["specification"]["prompt"], "a\u{FFFD}b", "{wf}");
    let (s, b) = server
        .request(Method::POST, "/api/workflows/nul-name/execute", Some(json!({"inputPayload": {"k": "\u{0}"}})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["input_payload"], json!({"k": "\u{FFFD}"}));
}

#[tokio::test]
async fn payload_schema_warns_or_rejects_when_strict() {
    let server = Server::start(&[]).await;
    let schema = json!({"type": "object", "required": ["email"], "properties": {"email": {"type": "string"}, "n": {"type": "integer"}}});
    server.workflow("Lenient", json!({"steps": [{"shell": "true"}], "payload_schema": schema})).await;
    server
        .workflow("Strict", json!({"steps": [{"shell": "true"}], "payloadSchema": schema, "strictPayload": true}))
        .await;

    let e = server.execute("lenient", json!({"n": "x"})).await;
    let warnings = e["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains("email")));

    let (s, b) =
        server.request(Method::POST, "/api/workflows/strict/execute", Some(json!({"inputPayload": {"n": 1}}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["detail"][0]["loc"], json!(["body", "inputPayload"]));
    let (s, b) = server
        .request(
            Method::POST,
            "/api/workflows/strict/execute",
            Some(json!({"input_payload": {"email": "a@b", "n": "x"}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["detail"][0]["loc"], json!(["body", "input_payload", "n"]));
    let (s, b) =
        server.request(Method::POST, "/api/workflows/strict/execute", Some(json!({"inputPayload": [1]}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let list = server.get("/api/executions").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "rejected executes created nothing");

    let ok = server.post("/api/workflows/strict/run", json!({"input_payload": {"email": "a@b"}})).await;
    assert!(ok["warnings"].as_array().unwrap().is_empty());
    assert_eq!(ok["input_payload"], json!({"email": "a@b"}));
}

#[tokio::test]
async fn workflows_version_on_change_and_executions_stay_pinned() {
    let server = Server::start(&[]).await;
    let wf =
        server.workflow("Pinned", json!({"steps": [{"set": {"name": "v", "value": 1}}], "owner": "finance"})).await;
    assert!(wf["warnings"][0].as_str().unwrap().contains("owner"), "unknown keys warn: {wf}");
    assert_eq!(wf["specification"]["owner"], "finance", "and are kept");
    let (s, b) = server
        .request(
            Method::POST,
            "/api/workflows",
            Some(json!({"name": "Other", "slug": "pinned", "configuration": {"prompt": "x"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_detail_string(&b);
    let auto = server.workflow("Pinned", json!({"prompt": "x"})).await;
    assert_eq!(auto["slug"], "pinned-2", "a derived slug that is taken gets a suffix");

    let e1 = server.execute("pinned", json!({})).await;
    let (s, patched) = server
        .request(
            Method::PATCH,
            "/api/workflows/pinned",
            Some(json!({"description": "now v2", "specification": {"steps": [{"set": {"name": "v", "value": 2}}]}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{patched}");
    assert_eq!(patched["current_version"], 2);
    assert_eq!(patched["description"], "now v2");
    let (_, same) = server.request(Method::PATCH, "/api/workflows/pinned", Some(json!({"name": "Pinned!"}))).await;
    assert_eq!(same["current_version"], 2, "no new version without a changed specification");
    assert_eq!(same["name"], "Pinned!");

    let versions = server.get("/api/workflows/pinned/versions").await;
    let items = versions["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["specification"]["steps"][0]["set"]["value"], 1, "version 1 is immutable");
    assert_eq!((items[0]["is_current"].clone(), items[1]["is_current"].clone()), (json!(false), json!(true)));
    let v1 = server
        .get(&format!("/api/workflows/pinned/version/{}", items[0]["workflow_version_uuid"].as_str().unwrap()))
        .await;
    assert_eq!(v1["version"], 1);

    let e2 = server.execute("pinned", json!({})).await;
    let e_old = server.post("/api/workflows/pinned/execute", json!({"version": 1})).await;
    for (e, expected) in [(&e1, 1), (&e2, 2), (&e_old, 1)] {
        let done = server.wait_terminal(&id(e), Duration::from_secs(20)).await;
        assert_eq!(done["output"]["v"], expected, "{done:#}");
    }
    assert_eq!(e1["workflow_version_uuid"], wf["workflow_version_uuid"]);
    let (s, _) = server.request(Method::POST, "/api/workflows/pinned/execute", Some(json!({"version": 9}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn stop_and_retry_refuse_what_the_state_machine_forbids() {
    let server = Server::start(&[]).await;
    server.workflow("Quick", json!({"steps": [{"shell": "true"}]})).await;
    let e = server.execute("quick", json!({})).await;
    server.wait_terminal(&id(&e), Duration::from_secs(20)).await;
    let (s, b) = server.request(Method::POST, &format!("/api/executions/{}/stop", id(&e)), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(b["detail"].as_str().unwrap().contains("completed"), "{b}");
    assert_eq!(server.execution(&id(&e)).await["status"], "completed", "a terminal status is never overwritten");

    let (s, retry) = server.request(Method::POST, &format!("/api/executions/{}/retry", id(&e)), None).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, b) = server.request(Method::POST, &format!("/api/executions/{}/retry", id(&e)), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "an execution is retried once; retry the retry: {b}");
    assert!(b["detail"].as_str().unwrap().contains(retry["execution_uuid"].as_str().unwrap()));
}

#[tokio::test]
async fn deleting_a_workflow_stops_and_removes_everything() {
    let server = Server::start(&[]).await;
    server.workflow("Doomed", json!({"steps": [{"shell": "echo x > artifacts/x.txt"}, {"shell": "sleep 30"}]})).await;
    let done = server.execute("doomed", json!({})).await;
    let running = server.execute("doomed", json!({})).await;
    server.wait_status(&id(&running), "running", Duration::from_secs(10)).await;
    server.wait_until(&id(&done), Duration::from_secs(10), |e| e["status"] == "running").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, _) = server.request(Method::DELETE, "/api/workflows/doomed", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for e in [&done, &running] {
        assert_no_sandbox_left(&id(e), Duration::from_secs(3)).await;
        let (s, _) = server.request(Method::GET, &format!("/api/executions/{}", id(e)), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    let (s, _) = server.request(Method::GET, "/api/workflows/doomed", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Artifacts leave the disk too, once the stopped runs have wound down.
    for e in [&done, &running] {
        let dir = server.data_dir.join("artifacts").join(id(e));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while dir.exists() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!dir.exists(), "artifacts of {} deleted", id(e));
    }
}

#[tokio::test]
async fn lists_page_newest_first_with_filters() {
    let server = Server::start(&[]).await;
    let a = server.workflow("A", json!({"steps": [{"shell": "true"}]})).await;
    server.workflow("B", json!({"steps": [{"shell": "false"}]})).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(id(&server.execute(if i % 2 == 0 { "a" } else { "b" }, json!({})).await));
    }
    for e in &ids {
        server.wait_terminal(e, Duration::from_secs(30)).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/executions?limit=2&cursor={c}"),
            None => "/api/executions?limit=2".to_owned(),
        };
        let page = server.get(&path).await;
        seen.extend(page["items"].as_array().unwrap().iter().map(id));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
    let only_a = server.get(&format!("/api/executions?workflow_uuid={}", a["workflow_uuid"].as_str().unwrap())).await;
    assert_eq!(only_a["items"].as_array().unwrap().len(), 3);
    let by_slug = server.get("/api/executions?workflow_uuid=a").await;
    assert_eq!(by_slug["items"].as_array().unwrap().len(), 3, "a slug works too");
    let failed = server.get("/api/executions?status=failed").await;
    assert_eq!(failed["items"].as_array().unwrap().len(), 2);
    assert!(failed["items"].as_array().unwrap().iter().all(|e| e["workflow_name"] == "B"));
    // Created since a moment (RFC 3339; `+` encoded as %2B).
    let third = server.get(&format!("/api/executions/{}", ids[2])).await;
    let since = third["created_at"].as_str().unwrap().replace('+', "%2B");
    let recent = server.get(&format!("/api/executions?since={since}")).await;
    let recent: Vec<String> = recent["items"].as_array().unwrap().iter().map(id).collect();
    assert!(recent.contains(&ids[2]) && recent.contains(&ids[0]), "{recent:?}");
    let later = server.get("/api/executions?since=2999-01-01T00:00:00Z").await;
    assert!(later["items"].as_array().unwrap().is_empty());
    let wfs = server.get("/api/workflows?limit=1").await;
    assert_eq!(wfs["items"].as_array().unwrap().len(), 1);
    assert!(wfs["next_cursor"].is_string());
    let b = server.get("/api/workflows/b").await;
    assert_eq!(b["success_rate"], 0.0);
}
