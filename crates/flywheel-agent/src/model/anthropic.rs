//! Anthropic's Messages API with the computer-use tool
//! (`computer_20250124`, beta `computer-use-2025-01-24`). Requests go to
//! `{base_url}/v1/messages` (the base URL is Anthropic's SDK's: no `/v1`).
//! Every `tool_result` answers its `tool_use_id` and carries the screenshot
//! taken after the action as a base64 PNG image block.

use super::transport::ModelClient;
use super::{
    keep_newest_images, secrets_note, type_secret_parameters, Button, Call, CallResult, ComputerAction, Display, Model,
    ModelError, Screen, Turn,
};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const API_VERSION: &str = "2023-06-01";
pub const BETA: &str = "computer-use-2025-01-24";
/// Screenshots kept in the conversation.
const KEEP_IMAGES: usize = 3;
/// Pixels per scroll "click".
const SCROLL_STEP: f64 = 100.0;

pub struct Anthropic {
    client: ModelClient,
    model: String,
    display: Display,
    secret_names: Vec<String>,
    messages: Vec<Value>,
}

impl Anthropic {
    pub fn new(client: ModelClient, model: &str, display: Display, secret_names: &[String]) -> Anthropic {
        Anthropic {
            client,
            model: model.to_owned(),
            display,
            secret_names: secret_names.to_vec(),
            messages: Vec::new(),
        }
    }

    fn tools(&self) -> Vec<Value> {
        let mut tools = vec![json!({
            "type": "computer_20250124",
            "name": "computer",
            "display_width_px": self.display.width,
            "display_height_px": self.display.height,
        })];
        if !self.secret_names.is_empty() {
            tools.push(json!({
                "name": "type_secret",
                "description": "Types the value of a named secret into the focused field. You never see the value.",
                "input_schema": type_secret_parameters(&self.secret_names),
            }));
        }
        tools
    }

    fn system(&self) -> String {
        let mut system = format!(
            "You control a web browser through the computer tool to reach the user's goal. The screen is {}x{} pixels. \
             Act step by step and look at the screenshot after each action. When the goal is reached, reply with the \
             result as text and no tool call.",
            self.display.width, self.display.height
        );
        if let Some(note) = secrets_note(&self.secret_names) {
            system.push(' ');
            system.push_str(&note);
        }
        system
    }

    async fn request(&mut self) -> Result<Turn, ModelError> {
        keep_newest_images(&mut self.messages, KEEP_IMAGES, |b| b["type"] == "image");
        let body = json!({
            "model": self.model,
            "max_tokens": 4096,
            "system": self.system(),
            "tools": self.tools(),
            "messages": self.messages,
        });
        let mut headers = BTreeMap::new();
        headers.insert("anthropic-version".to_owned(), API_VERSION.to_owned());
        headers.insert("anthropic-beta".to_owned(), BETA.to_owned());
        let answer = self.client.post("/v1/messages", &headers, &body).await?;
        let content = answer["content"]
            .as_array()
            .cloned()
            .ok_or_else(|| ModelError(format!("Anthropic's answer has no content: {answer}")))?;
        self.messages.push(json!({"role": "assistant", "content": content}));
        let mut turn = Turn::default();
        let mut texts = Vec::new();
        for block in &content {
            match block["type"].as_str() {
                Some("text") => texts.push(block["text"].as_str().unwrap_or_default().to_owned()),
                Some("tool_use") => {
                    let id = block["id"].as_str().unwrap_or_default().to_owned();
                    let action = match block["name"].as_str() {
                        Some("computer") => parse_action(&block["input"]),
                        Some("type_secret") => match block["input"]["name"].as_str() {
                            Some(name) => Ok(ComputerAction::TypeSecret { name: name.to_owned() }),
                            None => Err("type_secret needs a name".to_owned()),
                        },
                        other => Err(format!("there is no tool {other:?}")),
                    };
                    turn.calls.push(Call { id, action, safety_checks: Vec::new() });
                }
                _ => {}
            }
        }
        let text = texts.join("\n").trim().to_owned();
        turn.text = (!text.is_empty()).then_some(text);
        Ok(turn)
    }
}

fn image_block(screen: &Screen) -> Value {
    json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": screen.base64()}})
}

fn point(value: &Value) -> Option<(f64, f64)> {
    let pair = value.as_array()?;
    Some((pair.first()?.as_f64()?, pair.get(1)?.as_f64()?))
}

/// The computer tool's input as an action. Without a coordinate, a click
/// is where the mouse is (NaN marks that).
fn parse_action(input: &Value) -> Result<ComputerAction, String> {
    let action = input["action"].as_str().ok_or("the computer tool needs an action")?;
    let at = || point(&input["coordinate"]).unwrap_or((f64::NAN, f64::NAN));
    let need_at = || point(&input["coordinate"]).ok_or_else(|| format!("{action} needs a coordinate [x, y]"));
    let text = || input["text"].as_str().map(str::to_owned);
    let click = |button, count| {
        let (x, y) = at();
        Ok(ComputerAction::Click { x, y, button, count, modifiers: text() })
    };
    match action {
        "key" => Ok(ComputerAction::Key { keys: text().ok_or("key needs text (the key, like Return or ctrl+a)")? }),
        "hold_key" => Ok(ComputerAction::HoldKey {
            keys: text().ok_or("hold_key needs text")?,
            seconds: input["duration"].as_f64().unwrap_or(1.0).clamp(0.0, 10.0),
        }),
        "type" => Ok(ComputerAction::Type { text: text().ok_or("type needs text")? }),
        "cursor_position" => Ok(ComputerAction::CursorPosition),
        "mouse_move" => {
            let (x, y) = need_at()?;
            Ok(ComputerAction::Move { x, y })
        }
        "left_mouse_down" => Ok(ComputerAction::MouseDown { button: Button::Left }),
        "left_mouse_up" => Ok(ComputerAction::MouseUp { button: Button::Left }),
        "left_click" => click(Button::Left, 1),
        "right_click" => click(Button::Right, 1),
        "middle_click" => click(Button::Middle, 1),
        "double_click" => click(Button::Left, 2),
        "triple_click" => click(Button::Left, 3),
        "left_click_drag" => {
            let start = point(&input["start_coordinate"]).ok_or("left_click_drag needs start_coordinate")?;
            let end = need_at()?;
            Ok(ComputerAction::Drag { path: vec![start, end] })
        }
        "scroll" => {
            let (x, y) = at();
            let amount = input["scroll_amount"].as_f64().unwrap_or(3.0) * SCROLL_STEP;
            let (dx, dy) = match input["scroll_direction"].as_str().unwrap_or("down") {
                "up" => (0.0, -amount),
                "down" => (0.0, amount),
                "left" => (-amount, 0.0),
                "right" => (amount, 0.0),
                other => return Err(format!("unknown scroll_direction {other:?}")),
            };
            Ok(ComputerAction::Scroll { x, y, dx, dy })
        }
        "wait" => Ok(ComputerAction::Wait { seconds: input["duration"].as_f64().unwrap_or(1.0).clamp(0.0, 30.0) }),
        "screenshot" => Ok(ComputerAction::Screenshot),
        other => Err(format!("unknown computer action {other:?}")),
    }
}

#[async_trait]
impl Model for Anthropic {
    async fn start(&mut self, goal: &str, screen: &Screen) -> Result<Turn, ModelError> {
        self.messages.push(json!({"role": "user", "content": [{"type": "text", "text": goal}, image_block(screen)]}));
        self.request().await
    }

    async fn resume(&mut self, results: Vec<CallResult>) -> Result<Turn, ModelError> {
        let blocks: Vec<Value> = results
            .iter()
            .map(|r| {
                let mut content = Vec::new();
                if let Some(error) = &r.error {
                    content.push(json!({"type": "text", "text": error}));
                } else if let Some(text) = &r.text {
                    content.push(json!({"type": "text", "text": text}));
                }
                content.push(image_block(&r.screen));
                let mut block = json!({"type": "tool_result", "tool_use_id": r.id, "content": content});
                if r.error.is_some() {
                    block["is_error"] = json!(true);
                }
                block
            })
            .collect();
        self.messages.push(json!({"role": "user", "content": blocks}));
        self.request().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_of_the_computer_tool() {
        assert_eq!(
            parse_action(&json!({"action": "left_click", "coordinate": [10, 20]})).unwrap(),
            ComputerAction::Click { x: 10.0, y: 20.0, button: Button::Left, count: 1, modifiers: None }
        );
        assert_eq!(
            parse_action(&json!({"action": "key", "text": "ctrl+a"})).unwrap(),
            ComputerAction::Key { keys: "ctrl+a".into() }
        );
        assert_eq!(
            parse_action(
                &json!({"action": "scroll", "coordinate": [5, 5], "scroll_direction": "up", "scroll_amount": 2})
            )
            .unwrap(),
            ComputerAction::Scroll { x: 5.0, y: 5.0, dx: 0.0, dy: -200.0 }
        );
        assert_eq!(
            parse_action(&json!({"action": "left_click_drag", "start_coordinate": [1, 2], "coordinate": [3, 4]}))
                .unwrap(),
            ComputerAction::Drag { path: vec![(1.0, 2.0), (3.0, 4.0)] }
        );
        assert!(parse_action(&json!({"action": "mouse_move"})).is_err());
        assert!(parse_action(&json!({"action": "teleport"})).is_err());
        assert!(matches!(
            parse_action(&json!({"action": "triple_click", "coordinate": [1, 1]})).unwrap(),
            ComputerAction::Click { count: 3, .. }
        ));
    }
}
