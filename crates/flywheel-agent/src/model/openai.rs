//! OpenAI's Responses API with the `computer_use_preview` tool. Requests go
//! to `{base_url}/responses` (the base URL is OpenAI's SDK's: with `/v1`),
//! turns are chained with `previous_response_id`, and each `computer_call`
//! is answered by a `computer_call_output` holding the screenshot as an
//! `input_image` PNG data URL and the page's `current_url`. Pending safety
//! checks stop the run unless the workflow acknowledges them.

use super::transport::ModelClient;
use super::{
    secrets_note, type_secret_parameters, xy, Button, Call, CallResult, ComputerAction, Display, Model, ModelError,
    Screen, Turn,
};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub struct OpenAi {
    client: ModelClient,
    model: String,
    display: Display,
    secret_names: Vec<String>,
    previous_response_id: Option<String>,
}

impl OpenAi {
    pub fn new(client: ModelClient, model: &str, display: Display, secret_names: &[String]) -> OpenAi {
        OpenAi {
            client,
            model: model.to_owned(),
            display,
            secret_names: secret_names.to_vec(),
            previous_response_id: None,
        }
    }

    fn tools(&self) -> Vec<Value> {
        let mut tools = vec![json!({
            "type": "computer_use_preview",
            "display_width": self.display.width,
            "display_height": self.display.height,
            "environment": "browser",
        })];
        if !self.secret_names.is_empty() {
            tools.push(json!({
                "type": "function",
                "name": "type_secret",
                "description": "Types the value of a named secret into the focused field. You never see the value.",
                "parameters": type_secret_parameters(&self.secret_names),
                "strict": true,
            }));
        }
        tools
    }

    async fn request(&mut self, input: Vec<Value>) -> Result<Turn, ModelError> {
        let mut body = json!({
            "model": self.model,
            "tools": self.tools(),
            "input": input,
            "truncation": "auto",
            "reasoning": {"summary": "concise"},
        });
        match &self.previous_response_id {
            Some(id) => body["previous_response_id"] = json!(id),
            None => {
                let mut instructions = String::from(
                    "You control a web browser through the computer tool to reach the user's goal. When the goal is \
                     reached, reply with the result as text and no tool call.",
                );
                if let Some(note) = secrets_note(&self.secret_names) {
                    instructions.push(' ');
                    instructions.push_str(&note);
                }
                body["instructions"] = json!(instructions);
            }
        }
        let answer = self.client.post("/responses", &BTreeMap::new(), &body).await?;
        self.previous_response_id = answer["id"].as_str().map(str::to_owned);
        let output = answer["output"]
            .as_array()
            .cloned()
            .ok_or_else(|| ModelError(format!("OpenAI's answer has no output: {answer}")))?;
        let mut turn = Turn::default();
        let mut texts = Vec::new();
        for item in &output {
            match item["type"].as_str() {
                Some("reasoning") => {
                    for part in item["summary"].as_array().into_iter().flatten() {
                        if let Some(text) = part["text"].as_str() {
                            texts.push(text.to_owned());
                        }
                    }
                }
                Some("message") => {
                    for part in item["content"].as_array().into_iter().flatten() {
                        if let Some(text) = part["text"].as_str() {
                            texts.push(text.to_owned());
                        }
                    }
                }
                Some("computer_call") => turn.calls.push(Call {
                    id: item["call_id"].as_str().unwrap_or_default().to_owned(),
                    action: parse_action(&item["action"]),
                    safety_checks: item["pending_safety_checks"].as_array().cloned().unwrap_or_default(),
                }),
                Some("function_call") => {
                    let arguments: Value =
                        serde_json::from_str(item["arguments"].as_str().unwrap_or("{}")).unwrap_or(Value::Null);
                    let action = match (item["name"].as_str(), arguments["name"].as_str()) {
                        (Some("type_secret"), Some(name)) => Ok(ComputerAction::TypeSecret { name: name.to_owned() }),
                        (Some("type_secret"), None) => Err("type_secret needs a name".to_owned()),
                        (other, _) => Err(format!("there is no function {other:?}")),
                    };
                    turn.calls.push(Call {
                        id: item["call_id"].as_str().unwrap_or_default().to_owned(),
                        action,
                        safety_checks: Vec::new(),
                    });
                }
                _ => {}
            }
        }
        let text = texts.join("\n").trim().to_owned();
        turn.text = (!text.is_empty()).then_some(text);
        Ok(turn)
    }
}

/// A `computer_call` action as an action.
fn parse_action(action: &Value) -> Result<ComputerAction, String> {
    let kind = action["type"].as_str().ok_or("the computer call has no action type")?;
    match kind {
        "click" => {
            let (x, y) = xy(action)?;
            let button = match action["button"].as_str().unwrap_or("left") {
                "right" => Button::Right,
                "wheel" | "middle" => Button::Middle,
                "left" => Button::Left,
                other => return Err(format!("the {other:?} button is not supported")),
            };
            Ok(ComputerAction::Click { x, y, button, count: 1, modifiers: None })
        }
        "double_click" => {
            let (x, y) = xy(action)?;
            Ok(ComputerAction::Click { x, y, button: Button::Left, count: 2, modifiers: None })
        }
        "move" => {
            let (x, y) = xy(action)?;
            Ok(ComputerAction::Move { x, y })
        }
        "drag" => {
            let path: Vec<(f64, f64)> = action["path"]
                .as_array()
                .map(|p| p.iter().filter_map(|pt| Some((pt["x"].as_f64()?, pt["y"].as_f64()?))).collect())
                .unwrap_or_default();
            if path.len() < 2 {
                return Err("drag needs a path of at least two points".into());
            }
            Ok(ComputerAction::Drag { path })
        }
        "keypress" => {
            let keys: Vec<&str> =
                action["keys"].as_array().map(|k| k.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            if keys.is_empty() {
                return Err("keypress needs keys".into());
            }
            Ok(ComputerAction::Key { keys: keys.join("+") })
        }
        "type" => Ok(ComputerAction::Type { text: action["text"].as_str().ok_or("type needs text")?.to_owned() }),
        "scroll" => {
            let (x, y) = xy(action)?;
            Ok(ComputerAction::Scroll {
                x,
                y,
                dx: action["scroll_x"].as_f64().unwrap_or(0.0),
                dy: action["scroll_y"].as_f64().unwrap_or(0.0),
            })
        }
        "wait" => Ok(ComputerAction::Wait { seconds: 1.0 }),
        "screenshot" => Ok(ComputerAction::Screenshot),
        other => Err(format!("unknown computer action {other:?}")),
    }
}

#[async_trait]
impl Model for OpenAi {
    async fn start(&mut self, goal: &str, screen: &Screen) -> Result<Turn, ModelError> {
        let input = vec![json!({
            "role": "user",
            "content": [{"type": "input_text", "text": goal}, {"type": "input_image", "image_url": screen.data_url()}],
        })];
        self.request(input).await
    }

    async fn resume(&mut self, results: Vec<CallResult>) -> Result<Turn, ModelError> {
        let input: Vec<Value> = results
            .iter()
            .map(|r| {
                if r.secret {
                    let output = r.error.clone().or_else(|| r.text.clone()).unwrap_or_else(|| "done".into());
                    return json!({"type": "function_call_output", "call_id": r.id, "output": output});
                }
                let mut item = json!({
                    "type": "computer_call_output",
                    "call_id": r.id,
                    "output": {"type": "input_image", "image_url": r.screen.data_url(), "current_url": r.screen.url},
                });
                if !r.acknowledged.is_empty() {
                    item["acknowledged_safety_checks"] = json!(r.acknowledged);
                }
                item
            })
            .collect();
        self.request(input).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computer_call_actions() {
        assert_eq!(
            parse_action(&json!({"type": "click", "button": "right", "x": 3, "y": 4})).unwrap(),
            ComputerAction::Click { x: 3.0, y: 4.0, button: Button::Right, count: 1, modifiers: None }
        );
        assert_eq!(
            parse_action(&json!({"type": "keypress", "keys": ["CTRL", "A"]})).unwrap(),
            ComputerAction::Key { keys: "CTRL+A".into() }
        );
        assert_eq!(
            parse_action(&json!({"type": "scroll", "x": 1, "y": 2, "scroll_x": 0, "scroll_y": 300})).unwrap(),
            ComputerAction::Scroll { x: 1.0, y: 2.0, dx: 0.0, dy: 300.0 }
        );
        assert!(parse_action(&json!({"type": "drag", "path": [{"x": 1, "y": 1}]})).is_err());
        assert!(parse_action(&json!({"type": "click"})).is_err());
    }
}
