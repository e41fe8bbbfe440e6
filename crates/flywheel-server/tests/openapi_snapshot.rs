//! The OpenAPI document is part of the contract: any change to it must be
//! deliberate. Regenerate the snapshot with `UPDATE_SNAPSHOTS=1 cargo test`.

use flywheel_server::openapi::document;

#[test]
fn the_openapi_document_matches_its_snapshot() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let current = serde_json::to_string_pretty(document()).unwrap() + "\n";
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, &current).unwrap();
        return;
    }
    let stored = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        stored == current,
        "the OpenAPI document changed; if that is intended, run `UPDATE_SNAPSHOTS=1 cargo test -p flywheel-server` and commit openapi.json"
    );
}

#[test]
fn every_endpoint_of_the_spec_is_documented() {
    let doc = document();
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/workflows", "post"),
        ("/api/workflows", "get"),
        ("/api/workflows/{id}", "get"),
        ("/api/workflows/{id}", "patch"),
        ("/api/workflows/{id}", "delete"),
        ("/api/workflows/{id}/versions", "get"),
        ("/api/workflows/{id}/version/{version_uuid}", "get"),
        ("/api/workflows/{id}/execute", "post"),
        ("/api/workflows/{id}/run", "post"),
        ("/api/executions", "get"),
        ("/api/executions/{id}", "get"),
        ("/api/executions/{id}/retry", "post"),
        ("/api/executions/{id}/stop", "post"),
        ("/api/executions/{id}/logs", "get"),
        ("/api/executions/{id}/events", "get"),
        ("/api/executions/{id}/artifacts", "get"),
        ("/api/executions/{id}/artifacts/{name}", "get"),
        ("/api/health", "get"),
        ("/api/openapi.json", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is missing");
    }
    let execution = &doc["components"]["schemas"]["Execution"]["properties"];
    for field in [
        "execution_uuid",
        "status",
        "n_steps",
        "n_agent_actions",
        "n_screenshots",
        "output_url",
        "video_url",
        "logs_url",
        "duration_ms",
    ] {
        assert!(execution.get(field).is_some(), "Execution.{field}");
    }
}
