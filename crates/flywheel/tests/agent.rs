//! The AI agent against local fake providers that speak each protocol and
//! check every request field by field: tool definitions, headers, image
//! payloads, call ids, previous_response_id. Scripted plans run against a
//! real page in a real browser; the tests look at the page after the plan,
//! the counters, the stored screenshots and reasoning, max_steps, the
//! timeout, retries of 429, failing 401, output_schema, and that the key
//! reaches no log, event, output or artifact.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const ANTHROPIC_KEY: &str = "sk-ant-test-0123456789abcdef";
const OPENAI_KEY: &str = "sk-openai-test-0123456789abcdef";

fn anthropic_turn(text: Option<&str>, tool: Option<(&str, Value)>, usage: (u32, u32)) -> FakeReply {
    let mut content = Vec::new();
    if let Some(text) = text {
        content.push(json!({"type": "text", "text": text}));
    }
    let stop = match &tool {
        Some((id, input)) => {
            let name = if input.get("action").is_some() { "computer" } else { "type_secret" };
            content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
            "tool_use"
        }
        None => "end_turn",
    };
    FakeReply::Ok(json!({
        "id": "msg_x", "type": "message", "role": "assistant", "model": "claude-test", "content": content,
        "stop_reason": stop, "usage": {"input_tokens": usage.0, "output_tokens": usage.1},
    }))
}

async fn anthropic_server(fake: &FakeProvider, extra: &[&str]) -> Server {
    let mut args = vec!["--anthropic-base-url", fake.url.as_str(), "--anthropic-model", "claude-test"];
    args.extend_from_slice(extra);
    Server::start_with_env(&args, &[("ANTHROPIC_API_KEY", ANTHROPIC_KEY)]).await
}

/// Everything a run left behind that a user can read.
async fn everything_visible(server: &Server, id: &str) -> String {
    let e = server.execution(id).await;
    let events = server
        .http
        .get(format!("{}/api/executions/{id}/events", server.url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut text = format!("{e}\n{events}\n");
    for name in ["logs.jsonl", "output.json"] {
        text.push_str(&std::fs::read_to_string(artifact_path(&server.data_dir, id, name)).unwrap_or_default());
    }
    text
}

#[tokio::test]
async fn anthropic_computer_use_drives_the_browser() {
    let page = agent_page().await;
    let fake = FakeProvider::start(
        "/v1/messages",
        vec![
            anthropic_turn(
                Some("I will click the name field."),
                Some(("toolu_1", json!({"action": "left_click", "coordinate": [200, 115]}))),
                (100, 10),
            ),
            anthropic_turn(None, Some(("toolu_2", json!({"action": "type", "text": "Ada"}))), (100, 10)),
            anthropic_turn(
                Some("Now I save."),
                Some(("toolu_3", json!({"action": "left_click", "coordinate": [150, 220]}))),
                (100, 10),
            ),
            anthropic_turn(Some("Saved Ada."), None, (100, 10)),
        ],
    )
    .await;
    let server = anthropic_server(&fake, &[]).await;
    server
        .workflow(
            "Agent",
            json!({"steps": [
                {"goto": page},
                {"agent": {"prompt": "Type {{ input.name }} into the field and save it", "name": "answer"}},
                {"extract": {"name": "saved", "selector": "#saved"}},
            ]}),
        )
        .await;
    let id = id(&server.execute("agent", json!({"name": "Ada"})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(e["output"]["saved"], "Saved: Ada", "the page after the plan");
    assert_eq!(e["output"]["answer"], "Saved Ada.");
    assert_eq!(e["n_steps"], 3 + 4, "three steps and four model turns");
    assert_eq!(e["n_agent_actions"], 1 + 3, "goto, click, type, click");
    assert_eq!(e["n_screenshots"], 4, "the first look and one after each action");
    assert_eq!(e["usage"], json!({"input_tokens": 400, "output_tokens": 40}));
    let logs = e["logs"].as_array().unwrap();
    let clicks: Vec<&Value> = logs.iter().filter(|l| l["kind"] == "action" && l["data"]["action"] == "click").collect();
    assert_eq!(clicks[0]["data"]["reasoning"], "I will click the name field.");
    assert_eq!(clicks[0]["data"]["target"], json!({"x": 200.0, "y": 115.0}));
    assert!(logs.iter().any(|l| l["data"]["event"] == "turn" && l["data"]["text"] == "Now I save."));

    let requests = fake.requests();
    assert_eq!(requests.len(), 4);
    for (headers, body) in &requests {
        assert_eq!(headers["x-api-key"], ANTHROPIC_KEY);
        assert_eq!(headers["anthropic-version"], "2023-06-01");
        assert_eq!(headers["anthropic-beta"], "computer-use-2025-01-24");
        assert_eq!(body["model"], "claude-test");
        assert!(body["max_tokens"].as_u64().unwrap() > 0);
        assert_eq!(
            body["tools"][0],
            json!({"type": "computer_20250124", "name": "computer", "display_width_px": 1280, "display_height_px": 720})
        );
    }
    let first = &requests[0].1["messages"][0];
    assert_eq!(first["role"], "user");
    assert_eq!(first["content"][0]["text"], "Type Ada into the field and save it");
    assert_eq!(first["content"][1]["source"]["media_type"], "image/png");
    assert_eq!(png_size(first["content"][1]["source"]["data"].as_str().unwrap()), (1280, 720));
    for (turn, tool_use_id) in [(1, "toolu_1"), (2, "toolu_2"), (3, "toolu_3")] {
        let messages = requests[turn].1["messages"].as_array().unwrap();
        let assistant = &messages[messages.len() - 2];
        assert_eq!(assistant["role"], "assistant");
        assert_eq!(
            assistant["content"].as_array().unwrap().iter().find(|b| b["type"] == "tool_use").unwrap()["id"],
            tool_use_id
        );
        let result = &messages[messages.len() - 1]["content"][0];
        assert_eq!(result["type"], "tool_result");
        assert_eq!(result["tool_use_id"], tool_use_id);
        let image = result["content"].as_array().unwrap().iter().find(|b| b["type"] == "image").unwrap();
        assert_eq!(png_size(image["source"]["data"].as_str().unwrap()), (1280, 720), "the screenshot after the action");
    }
    read_artifact(&server.data_dir, &id, "logs.jsonl").await;
    assert!(!everything_visible(&server, &id).await.contains(ANTHROPIC_KEY), "the key leaked");
}

#[tokio::test]
async fn a_large_viewport_is_scaled_for_the_model_and_back() {
    let page = agent_page().await;
    let fake = FakeProvider::start(
        "/v1/messages",
        vec![
            // (160, 92) on a 1280x720 display is (200, 115) on the 1600x900 page.
            anthropic_turn(None, Some(("t1", json!({"action": "left_click", "coordinate": [160, 92]}))), (1, 1)),
            anthropic_turn(None, Some(("t2", json!({"action": "type", "text": "Scaled"}))), (1, 1)),
            anthropic_turn(Some("done"), None, (1, 1)),
        ],
    )
    .await;
    let server = anthropic_server(&fake, &["--viewport", "1600x900"]).await;
    server
        .workflow(
            "Scaled",
            json!({"start_url": page, "steps": [
                {"agent": "Type Scaled"},
                {"evaluate": {"name": "typed", "script": "document.getElementById('name').value"}},
            ]}),
        )
        .await;
    let e = server.wait_terminal(&id(&server.execute("scaled", json!({})).await), Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(e["output"]["typed"], "Scaled", "the click landed on the field the model aimed at");
    let requests = fake.requests();
    let tool = &requests[0].1["tools"][0];
    assert_eq!((tool["display_width_px"].clone(), tool["display_height_px"].clone()), (json!(1280), json!(720)));
    assert_eq!(png_size(requests[0].1["messages"][0]["content"][1]["source"]["data"].as_str().unwrap()), (1280, 720));
}

#[tokio::test]
async fn max_steps_ends_a_model_that_never_finishes() {
    let page = agent_page().await;
    let fake = FakeProvider::start(
        "/v1/messages",
        vec![anthropic_turn(
            Some("again"),
            Some(("t", json!({"action": "left_click", "coordinate": [10, 10]}))),
            (5, 5),
        )],
    )
    .await;
    let server = anthropic_server(&fake, &[]).await;
    server.workflow("Loops", json!({"start_url": page, "prompt": "Never done", "max_steps": 3})).await;
    let e = server.wait_terminal(&id(&server.execute("loops", json!({})).await), Duration::from_secs(60)).await;
    assert_eq!(e["error"]["code"], "max_steps", "{e:#}");
    assert!(e["error"]["message"].as_str().unwrap().contains("3 turns"));
    assert_eq!(fake.requests().len(), 3);
    assert_eq!(e["n_steps"], 3);
}

#[tokio::test]
async fn the_timeout_ends_a_slow_model() {
    let page = agent_page().await;
    let slow = match anthropic_turn(Some("thinking"), None, (1, 1)) {
        FakeReply::Ok(json) => FakeReply::Slow(Duration::from_secs(30), json),
        other => other,
    };
    let fake = FakeProvider::start("/v1/messages", vec![slow]).await;
    let server = anthropic_server(&fake, &[]).await;
    server.workflow("Slow", json!({"start_url": page, "prompt": "Think", "timeout": 3})).await;
    let id = id(&server.execute("slow", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(e["error"]["code"], "timeout", "{e:#}");
    assert!(e["duration_ms"].as_i64().unwrap() < 6000);
    assert_no_sandbox_left(&id, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn rate_limits_are_retried_and_bad_keys_fail_at_once() {
    let page = agent_page().await;
    let fake = FakeProvider::start(
        "/v1/messages",
        vec![
            FakeReply::Status(
                429,
                json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}),
                vec![("retry-after", "1")],
            ),
            FakeReply::Status(
                529,
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                vec![("retry-after", "0")],
            ),
            anthropic_turn(Some("All good."), None, (3, 4)),
        ],
    )
    .await;
    let server = anthropic_server(&fake, &[]).await;
    server.workflow("Limited", json!({"start_url": page, "prompt": "Say hi"})).await;
    let e = server.wait_terminal(&id(&server.execute("limited", json!({})).await), Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(e["output"]["result"], "All good.");
    assert_eq!(fake.requests().len(), 3, "429, then 529, then the answer");
    assert!(e["logs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["message"].as_str().unwrap().contains("answered 429: slow down; retrying in 1.0 s")));
    assert_eq!(e["usage"], json!({"input_tokens": 3, "output_tokens": 4}), "failed calls use no tokens");

    let denied = FakeProvider::start(
        "/v1/messages",
        vec![FakeReply::Status(401, json!({"type": "error", "error": {"type": "authentication_error", "message": format!("invalid x-api-key {ANTHROPIC_KEY}")}}), vec![])],
    )
    .await;
    let server = anthropic_server(&denied, &[]).await;
    server.workflow("Denied", json!({"start_url": page, "prompt": "Say hi", "retry_attempts": 0})).await;
    let id = id(&server.execute("denied", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(e["error"]["code"], "agent_error");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("refused the request (401): invalid x-api-key ***"),
        "the provider's message, key masked: {message}"
    );
    assert_eq!(denied.requests().len(), 1, "no retry of a 401");
    read_artifact(&server.data_dir, &id, "logs.jsonl").await;
    assert!(!everything_visible(&server, &id).await.contains(ANTHROPIC_KEY));
}

#[tokio::test]
async fn output_schema_is_asked_for_and_checked() {
    let page = agent_page().await;
    let schema = json!({"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}});
    let good = FakeProvider::start("/v1/messages", vec![anthropic_turn(Some("{\"total\": 12.5}"), None, (1, 1))]).await;
    let server = anthropic_server(&good, &[]).await;
    server.workflow("Typed", json!({"start_url": page, "prompt": "What is the total?", "output_schema": schema})).await;
    let e = server.wait_terminal(&id(&server.execute("typed", json!({})).await), Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(e["output"]["result"], json!({"total": 12.5}));
    let goal = good.requests()[0].1["messages"][0]["content"][0]["text"].as_str().unwrap().to_owned();
    assert!(goal.contains("JSON Schema") && goal.contains("\"total\""), "the model is asked for the schema: {goal}");

    let bad =
        FakeProvider::start("/v1/messages", vec![anthropic_turn(Some("{\"total\": \"twelve\"}"), None, (1, 1))]).await;
    let server = anthropic_server(&bad, &[]).await;
    server.workflow("Typed", json!({"start_url": page, "prompt": "What is the total?", "output_schema": schema})).await;
    let e = server.wait_terminal(&id(&server.execute("typed", json!({})).await), Duration::from_secs(60)).await;
    assert_eq!(e["error"]["code"], "agent_error");
    assert!(e["error"]["message"].as_str().unwrap().contains("does not satisfy output_schema"), "{}", e["error"]);
}

#[tokio::test]
async fn secrets_are_typed_for_the_model_without_it_seeing_them() {
    let page = agent_page().await;
    let secret = "hunter2-very-secret";
    let fake = FakeProvider::start(
        "/v1/messages",
        vec![
            anthropic_turn(None, Some(("t1", json!({"action": "left_click", "coordinate": [200, 115]}))), (1, 1)),
            anthropic_turn(None, Some(("t2", json!({"name": "PORTAL_PASSWORD"}))), (1, 1)),
            anthropic_turn(Some("typed it"), None, (1, 1)),
        ],
    )
    .await;
    let server = anthropic_server(&fake, &[]).await;
    server.request(reqwest::Method::PUT, "/api/secrets/PORTAL_PASSWORD", Some(json!({"value": secret}))).await;
    server
        .workflow(
            "Secretive",
            json!({"start_url": page, "steps": [
                {"agent": "Log in with {{ secrets.PORTAL_PASSWORD }}"},
                {"evaluate": {"name": "length", "script": "document.getElementById('name').value.length"}},
            ]}),
        )
        .await;
    let id = id(&server.execute("secretive", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(e["output"]["length"], secret.len(), "the real value was typed");
    let requests = fake.requests();
    let tools = &requests[0].1["tools"];
    assert_eq!(tools[1]["name"], "type_secret");
    assert_eq!(tools[1]["input_schema"]["properties"]["name"]["enum"], json!(["PORTAL_PASSWORD"]));
    assert!(requests[0].1["messages"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("[the secret PORTAL_PASSWORD"));
    for (_, body) in &requests {
        assert!(!body.to_string().contains(secret), "the model never sees the secret");
    }
    let answer = &requests[2].1["messages"].as_array().unwrap().last().unwrap()["content"][0];
    assert_eq!(answer["tool_use_id"], "t2");
    assert_eq!(answer["content"][0]["text"], "typed the secret PORTAL_PASSWORD");
    read_artifact(&server.data_dir, &id, "logs.jsonl").await;
    assert!(!everything_visible(&server, &id).await.contains(secret));
}

fn openai_response(id: &str, output: Vec<Value>) -> FakeReply {
    FakeReply::Ok(
        json!({"id": id, "object": "response", "status": "completed", "output": output, "usage": {"input_tokens": 50, "output_tokens": 5}}),
    )
}

fn computer_call(call_id: &str, action: Value, checks: Value) -> Value {
    json!({"type": "computer_call", "id": format!("cu_{call_id}"), "call_id": call_id, "action": action, "pending_safety_checks": checks, "status": "completed"})
}

#[tokio::test]
async fn openai_computer_use_drives_the_browser() {
    let page = agent_page().await;
    let fake = FakeProvider::start(
        "/v1/responses",
        vec![
            openai_response("resp_1", vec![
                json!({"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Click the field first."}]}),
                computer_call("call_1", json!({"type": "click", "button": "left", "x": 200, "y": 115}), json!([])),
            ]),
            openai_response("resp_2", vec![computer_call("call_2", json!({"type": "type", "text": "Grace"}), json!([]))]),
            openai_response("resp_3", vec![computer_call("call_3", json!({"type": "click", "button": "left", "x": 150, "y": 220}), json!([]))]),
            openai_response("resp_4", vec![json!({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Saved Grace."}]})]),
        ],
    )
    .await;
    let base = format!("{}/v1", fake.url);
    let server = Server::start_with_env(
        &["--openai-base-url", &base, "--agent-provider", "openai"],
        &[("OPENAI_API_KEY", OPENAI_KEY)],
    )
    .await;
    server.workflow("Openai", json!({"start_url": page, "prompt": "Type Grace and save", "steps": [], "agent": {"model": "computer-use-preview"}})).await;
    let id = id(&server.execute("openai", json!({})).await);
    let e = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(e["output"]["result"], "Saved Grace.");
    assert_eq!(e["n_agent_actions"], 1 + 3);
    assert_eq!(e["usage"], json!({"input_tokens": 200, "output_tokens": 20}));
    let requests = fake.requests();
    assert_eq!(requests.len(), 4);
    for (headers, body) in &requests {
        assert_eq!(headers["authorization"], format!("Bearer {OPENAI_KEY}"));
        assert_eq!(body["model"], "computer-use-preview");
        assert_eq!(body["truncation"], "auto");
        assert_eq!(
            body["tools"][0],
            json!({"type": "computer_use_preview", "display_width": 1280, "display_height": 720, "environment": "browser"})
        );
    }
    let first = &requests[0].1;
    assert!(first.get("previous_response_id").is_none());
    assert_eq!(first["input"][0]["content"][0], json!({"type": "input_text", "text": "Type Grace and save"}));
    let image = first["input"][0]["content"][1]["image_url"].as_str().unwrap();
    assert_eq!(png_size(image.strip_prefix("data:image/png;base64,").unwrap()), (1280, 720));
    for (turn, previous, call_id) in [(1, "resp_1", "call_1"), (2, "resp_2", "call_2"), (3, "resp_3", "call_3")] {
        let body = &requests[turn].1;
        assert_eq!(body["previous_response_id"], previous);
        let output = &body["input"][0];
        assert_eq!(output["type"], "computer_call_output");
        assert_eq!(output["call_id"], call_id);
        assert_eq!(output["output"]["type"], "input_image");
        assert!(output["output"]["image_url"].as_str().unwrap().starts_with("data:image/png;base64,"));
        assert_eq!(output["output"]["current_url"], page);
    }
    let logs = e["logs"].as_array().unwrap();
    assert!(logs.iter().any(|l| l["kind"] == "action" && l["data"]["reasoning"] == "Click the field first."));
    read_artifact(&server.data_dir, &id, "logs.jsonl").await;
    assert!(!everything_visible(&server, &id).await.contains(OPENAI_KEY));
}

#[tokio::test]
async fn openai_safety_checks_stop_the_run_unless_acknowledged() {
    let page = agent_page().await;
    let checks =
        json!([{"id": "sc_1", "code": "malicious_instructions", "message": "The page may hold instructions for you."}]);
    let script = || {
        vec![
            openai_response(
                "resp_1",
                vec![computer_call(
                    "call_1",
                    json!({"type": "click", "button": "left", "x": 200, "y": 115}),
                    checks.clone(),
                )],
            ),
            openai_response(
                "resp_2",
                vec![
                    json!({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}),
                ],
            ),
        ]
    };
    for acknowledge in [false, true] {
        let fake = FakeProvider::start("/v1/responses", script()).await;
        let base = format!("{}/v1", fake.url);
        let server = Server::start_with_env(&["--openai-base-url", &base], &[("OPENAI_API_KEY", OPENAI_KEY)]).await;
        server
            .workflow("Checked", json!({"start_url": page, "prompt": "Click", "agent": {"provider": "openai"}, "acknowledge_safety_checks": acknowledge}))
            .await;
        let e = server.wait_terminal(&id(&server.execute("checked", json!({})).await), Duration::from_secs(60)).await;
        if acknowledge {
            assert_eq!(e["status"], "completed", "{e:#}");
            assert_eq!(fake.requests()[1].1["input"][0]["acknowledged_safety_checks"], checks);
        } else {
            assert_eq!(e["error"]["code"], "agent_error");
            let message = e["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("The page may hold instructions for you.")
                    && message.contains("acknowledge_safety_checks"),
                "{message}"
            );
            assert_eq!(fake.requests().len(), 1);
        }
    }
}

fn chat_reply(content: &str) -> FakeReply {
    FakeReply::Ok(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "qwen-vl",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37},
    }))
}

#[tokio::test]
async fn an_openai_compatible_model_follows_the_json_action_schema() {
    let page = agent_page().await;
    let fake = FakeProvider::start(
        "/v1/chat/completions",
        vec![
            chat_reply(r#"{"thought": "the field", "action": {"type": "click", "x": 200, "y": 115}}"#),
            chat_reply(
                "```json\n{\"thought\": \"typing\", \"action\": {\"type\": \"type\", \"text\": \"Linus\"}}\n```",
            ),
            chat_reply(r#"{"thought": "submit", "action": {"type": "key", "keys": "Tab"}}"#),
            chat_reply(r#"{"thought": "save", "action": {"type": "click", "x": 150, "y": 220}}"#),
            chat_reply(r#"{"thought": "finished", "action": {"type": "done", "answer": "Saved Linus"}}"#),
        ],
    )
    .await;
    let base = format!("{}/v1", fake.url);
    let server = Server::start(&[]).await;
    server
        .workflow(
            "Local model",
            json!({"start_url": page, "agent": {"provider": "openai-compatible", "model": "qwen-vl", "base_url": base},
                   "steps": [{"agent": {"prompt": "Type Linus and save", "name": "answer"}}, {"extract": {"name": "saved", "selector": "#saved"}}]}),
        )
        .await;
    let e = server.wait_terminal(&id(&server.execute("local-model", json!({})).await), Duration::from_secs(60)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(e["output"]["saved"], "Saved: Linus");
    assert_eq!(e["output"]["answer"], "Saved Linus");
    assert_eq!(e["usage"], json!({"input_tokens": 150, "output_tokens": 35}));
    let requests = fake.requests();
    assert_eq!(requests.len(), 5);
    for (headers, body) in &requests {
        assert!(!headers.contains_key("authorization"), "no key set, none sent");
        assert_eq!(body["model"], "qwen-vl");
        assert_eq!(body["response_format"], json!({"type": "json_object"}));
        assert_eq!(body["messages"][0]["role"], "system");
        assert!(body["messages"][0]["content"].as_str().unwrap().contains("\"type\": \"click\""));
    }
    let user = &requests[0].1["messages"][1];
    assert!(user["content"][0]["text"].as_str().unwrap().contains("Type Linus and save"));
    let url = user["content"][1]["image_url"]["url"].as_str().unwrap();
    assert_eq!(png_size(url.strip_prefix("data:image/png;base64,").unwrap()), (1280, 720));
}

#[tokio::test]
async fn a_missing_key_is_a_clear_error() {
    let page = agent_page().await;
    let server = Server::start(&[]).await;
    server.workflow("Keyless", json!({"start_url": page, "prompt": "Anything"})).await;
    let e = server.wait_terminal(&id(&server.execute("keyless", json!({})).await), Duration::from_secs(30)).await;
    assert_eq!(e["error"]["code"], "agent_error");
    assert!(e["error"]["message"].as_str().unwrap().contains("ANTHROPIC_API_KEY is not set"), "{}", e["error"]);
}

#[tokio::test]
async fn the_provider_key_never_reaches_the_sandbox() {
    let fake = FakeProvider::start("/v1/messages", Vec::new()).await;
    let server = anthropic_server(&fake, &[]).await;
    // Everything a program in the sandbox could read the key from: its
    // environment and every process's it can see.
    let probe = format!(
        "if env | grep -q '{ANTHROPIC_KEY}' || cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -q '{ANTHROPIC_KEY}'; \
         then echo leaked; else echo clean; fi; env | grep -c ANTHROPIC || true"
    );
    server.workflow("Probe", json!({"steps": [{"shell": {"command": probe, "name": "probe"}}]})).await;
    let e = server.wait_terminal(&id(&server.execute("probe", json!({})).await), Duration::from_secs(20)).await;
    assert_eq!(e["status"], "completed", "{e:#}");
    assert_eq!(e["output"]["probe"], "clean\n0", "{e:#}");
}
