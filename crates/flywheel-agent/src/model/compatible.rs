//! OpenAI-compatible chat completions, for self-hosted vision models (vLLM,
//! Ollama, LM Studio): the screenshot goes in as an `image_url` data URL and
//! the model answers with one JSON object per turn, following the action
//! schema in the system prompt. Requests go to `{base_url}/chat/completions`.

use super::transport::ModelClient;
use super::{
    keep_newest_images, secrets_note, xy, Button, Call, CallResult, ComputerAction, Display, Model, ModelError, Screen,
    Turn,
};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Screenshots kept in the conversation.
const KEEP_IMAGES: usize = 3;

pub struct Compatible {
    client: ModelClient,
    model: String,
    display: Display,
    secret_names: Vec<String>,
    messages: Vec<Value>,
    calls: u64,
}

impl Compatible {
    pub fn new(client: ModelClient, model: &str, display: Display, secret_names: &[String]) -> Compatible {
        Compatible {
            client,
            model: model.to_owned(),
            display,
            secret_names: secret_names.to_vec(),
            messages: Vec::new(),
            calls: 0,
        }
    }

    /// The action schema, told to the model.
    pub fn system_prompt(&self) -> String {
        let mut prompt = format!(
            "You control a web browser to reach the user's goal. After each action you get a screenshot of the screen, \
             which is {w}x{h} pixels. Answer every time with exactly one JSON object and nothing else:\n\
             {{\"thought\": \"why you do this\", \"action\": ACTION}}\n\
             where ACTION is one of:\n\
             {{\"type\": \"click\", \"x\": X, \"y\": Y, \"button\": \"left\" | \"right\" | \"middle\"}}\n\
             {{\"type\": \"double_click\", \"x\": X, \"y\": Y}}\n\
             {{\"type\": \"move\", \"x\": X, \"y\": Y}}\n\
             {{\"type\": \"drag\", \"path\": [[X1, Y1], [X2, Y2]]}}\n\
             {{\"type\": \"type\", \"text\": \"text to type into the focused field\"}}\n\
             {{\"type\": \"key\", \"keys\": \"Enter\" (or a chord like \"ctrl+a\")}}\n\
             {{\"type\": \"scroll\", \"x\": X, \"y\": Y, \"dx\": 0, \"dy\": 400}}\n\
             {{\"type\": \"wait\", \"seconds\": 1}}\n",
            w = self.display.width,
            h = self.display.height
        );
        if !self.secret_names.is_empty() {
            prompt.push_str("{\"type\": \"type_secret\", \"name\": \"SECRET_NAME\"}\n");
        }
        prompt.push_str(
            "{\"type\": \"done\", \"answer\": \"the result\"} when the goal is reached.\n\
             Coordinates are pixels of the screenshot, from its top left corner.",
        );
        if let Some(note) = secrets_note(&self.secret_names) {
            prompt.push(' ');
            prompt.push_str(&note.replace("the type_secret tool", "the type_secret action"));
        }
        prompt
    }

    async fn request(&mut self) -> Result<Turn, ModelError> {
        keep_newest_images(&mut self.messages, KEEP_IMAGES, |b| b["type"] == "image_url");
        let mut messages = vec![json!({"role": "system", "content": self.system_prompt()})];
        messages.extend(self.messages.iter().cloned());
        let body = json!({
            "model": self.model,
            "messages": messages,
            "response_format": {"type": "json_object"},
            "temperature": 0,
            "max_tokens": 1024,
        });
        let answer = self.client.post("/chat/completions", &BTreeMap::new(), &body).await?;
        let content = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();
        self.messages.push(json!({"role": "assistant", "content": content}));
        self.calls += 1;
        let id = format!("call-{}", self.calls);
        let reply = match parse_reply(&content) {
            Ok(reply) => reply,
            Err(reason) => {
                return Ok(Turn {
                    text: None,
                    calls: vec![Call { id, action: Err(reason), safety_checks: Vec::new() }],
                })
            }
        };
        let thought = reply["thought"].as_str().map(str::to_owned).filter(|t| !t.trim().is_empty());
        let action = &reply["action"];
        if action["type"] == "done" {
            let answer = match &action["answer"] {
                Value::String(s) => s.clone(),
                Value::Null => thought.clone().unwrap_or_default(),
                other => other.to_string(),
            };
            return Ok(Turn { text: Some(answer), calls: Vec::new() });
        }
        Ok(Turn { text: thought, calls: vec![Call { id, action: parse_action(action), safety_checks: Vec::new() }] })
    }
}

/// The JSON object in a reply, tolerating a code fence or words around it.
fn parse_reply(content: &str) -> Result<Value, String> {
    let start = content.find('{');
    let end = content.rfind('}');
    let json = match (start, end) {
        (Some(s), Some(e)) if s < e => &content[s..=e],
        _ => return Err(format!("the answer is not a JSON object: {content:?}; answer with one JSON object")),
    };
    let value: Value = serde_json::from_str(json)
        .map_err(|e| format!("the answer is not valid JSON ({e}); answer with one JSON object"))?;
    if !value["action"].is_object() {
        return Err("the answer has no \"action\" object".into());
    }
    Ok(value)
}

fn parse_action(action: &Value) -> Result<ComputerAction, String> {
    let kind = action["type"].as_str().ok_or("the action has no type")?;
    let text = |key: &str| action[key].as_str().map(str::to_owned).ok_or_else(|| format!("{kind} needs {key}"));
    Ok(match kind {
        "click" => {
            let (x, y) = xy(action)?;
            let button = match action["button"].as_str().unwrap_or("left") {
                "right" => Button::Right,
                "middle" => Button::Middle,
                _ => Button::Left,
            };
            ComputerAction::Click { x, y, button, count: 1, modifiers: None }
        }
        "double_click" => {
            let (x, y) = xy(action)?;
            ComputerAction::Click { x, y, button: Button::Left, count: 2, modifiers: None }
        }
        "move" => {
            let (x, y) = xy(action)?;
            ComputerAction::Move { x, y }
        }
        "drag" => {
            let path: Vec<(f64, f64)> = action["path"]
                .as_array()
                .map(|p| p.iter().filter_map(|pt| Some((pt.get(0)?.as_f64()?, pt.get(1)?.as_f64()?))).collect())
                .unwrap_or_default();
            if path.len() < 2 {
                return Err("drag needs a path of at least two points".into());
            }
            ComputerAction::Drag { path }
        }
        "type" => ComputerAction::Type { text: text("text")? },
        "key" => ComputerAction::Key { keys: text("keys")? },
        "scroll" => {
            let (x, y) = xy(action).unwrap_or((f64::NAN, f64::NAN));
            ComputerAction::Scroll {
                x,
                y,
                dx: action["dx"].as_f64().unwrap_or(0.0),
                dy: action["dy"].as_f64().unwrap_or(0.0),
            }
        }
        "wait" => ComputerAction::Wait { seconds: action["seconds"].as_f64().unwrap_or(1.0).clamp(0.0, 30.0) },
        "type_secret" => ComputerAction::TypeSecret { name: text("name")? },
        other => return Err(format!("unknown action type {other:?}")),
    })
}

fn user_message(text: &str, screen: &Screen) -> Value {
    json!({"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": screen.data_url()}}]})
}

#[async_trait]
impl Model for Compatible {
    async fn start(&mut self, goal: &str, screen: &Screen) -> Result<Turn, ModelError> {
        self.messages.push(user_message(&format!("Goal: {goal}\nThe screen now (at {}):", screen.url), screen));
        self.request().await
    }

    async fn resume(&mut self, results: Vec<CallResult>) -> Result<Turn, ModelError> {
        for result in results {
            let outcome = match (&result.error, &result.text) {
                (Some(error), _) => format!("That did not work: {error}"),
                (None, Some(text)) => format!("Done: {text}"),
                (None, None) => "Done.".to_owned(),
            };
            self.messages
                .push(user_message(&format!("{outcome}\nThe screen now (at {}):", result.screen.url), &result.screen));
        }
        self.request().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_with_fences_and_words_are_read() {
        let reply = parse_reply(
            "Sure!\n```json\n{\"thought\": \"x\", \"action\": {\"type\": \"click\", \"x\": 1, \"y\": 2}}\n```",
        )
        .unwrap();
        assert_eq!(
            parse_action(&reply["action"]).unwrap(),
            ComputerAction::Click { x: 1.0, y: 2.0, button: Button::Left, count: 1, modifiers: None }
        );
        assert!(parse_reply("no json here").is_err());
        assert!(parse_reply("{\"thought\": \"x\"}").is_err());
        assert!(parse_action(&json!({"type": "fly"})).is_err());
        assert_eq!(
            parse_action(&json!({"type": "key", "keys": "Enter"})).unwrap(),
            ComputerAction::Key { keys: "Enter".into() }
        );
    }
}
