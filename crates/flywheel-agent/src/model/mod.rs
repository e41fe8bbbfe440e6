//! The AI agent's models: one small [`Model`] trait, three providers.
//!
//! A model sees the goal and a screenshot, and answers with a [`Turn`]: some
//! text and the actions it wants done (or none, with its final answer).
//! After the actions the loop hands back a [`CallResult`] per action with a
//! fresh screenshot, and asks for the next turn.
//!
//! - [`anthropic`]: the Messages API with the `computer_20250124` tool.
//! - [`openai`]: the Responses API with the `computer_use_preview` tool.
//! - [`compatible`]: chat completions with image input and a JSON action
//!   schema, for self-hosted vision models (vLLM, Ollama, LM Studio).
//!
//! All of them reach their provider through [`transport::ModelClient`]: the
//! request goes to the worker, which holds the key.

pub mod anthropic;
pub mod compatible;
pub mod openai;
pub mod transport;

use async_trait::async_trait;
use serde_json::Value;
use transport::ModelClient;

/// What the model is shown.
#[derive(Debug, Clone)]
pub struct Screen {
    /// PNG at the model's display size.
    pub png: Vec<u8>,
    pub url: String,
}

impl Screen {
    pub fn base64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&self.png)
    }

    pub fn data_url(&self) -> String {
        format!("data:image/png;base64,{}", self.base64())
    }
}

/// A mouse button.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Button {
    Left,
    Right,
    Middle,
}

impl Button {
    pub fn cdp(self) -> &'static str {
        match self {
            Button::Left => "left",
            Button::Right => "right",
            Button::Middle => "middle",
        }
    }
}

/// Something the model wants done, in the model's display coordinates.
#[derive(Debug, Clone, PartialEq)]
pub enum ComputerAction {
    /// Click `count` times, holding `modifiers` (a chord like `shift`).
    Click {
        x: f64,
        y: f64,
        button: Button,
        count: u32,
        modifiers: Option<String>,
    },
    MouseDown {
        button: Button,
    },
    MouseUp {
        button: Button,
    },
    Move {
        x: f64,
        y: f64,
    },
    /// Press at the first point, move through the rest, release at the last.
    Drag {
        path: Vec<(f64, f64)>,
    },
    Type {
        text: String,
    },
    /// A key or chord (`Return`, `ctrl+a`).
    Key {
        keys: String,
    },
    HoldKey {
        keys: String,
        seconds: f64,
    },
    Scroll {
        x: f64,
        y: f64,
        dx: f64,
        dy: f64,
    },
    Wait {
        seconds: f64,
    },
    Screenshot,
    CursorPosition,
    /// Type the value of a secret the model knows only by name.
    TypeSecret {
        name: String,
    },
}

impl ComputerAction {
    /// A short name for logs (`left_click`, `type`, …).
    pub fn name(&self) -> &'static str {
        match self {
            ComputerAction::Click { count: 2, .. } => "double_click",
            ComputerAction::Click { count: 3, .. } => "triple_click",
            ComputerAction::Click { button: Button::Right, .. } => "right_click",
            ComputerAction::Click { button: Button::Middle, .. } => "middle_click",
            ComputerAction::Click { .. } => "click",
            ComputerAction::MouseDown { .. } => "mouse_down",
            ComputerAction::MouseUp { .. } => "mouse_up",
            ComputerAction::Move { .. } => "mouse_move",
            ComputerAction::Drag { .. } => "drag",
            ComputerAction::Type { .. } => "type",
            ComputerAction::Key { .. } => "key",
            ComputerAction::HoldKey { .. } => "hold_key",
            ComputerAction::Scroll { .. } => "scroll",
            ComputerAction::Wait { .. } => "wait",
            ComputerAction::Screenshot => "screenshot",
            ComputerAction::CursorPosition => "cursor_position",
            ComputerAction::TypeSecret { .. } => "type_secret",
        }
    }

    /// Whether it acts on the screen (and counts as an agent action).
    pub fn is_screen_action(&self) -> bool {
        !matches!(self, ComputerAction::Wait { .. } | ComputerAction::Screenshot | ComputerAction::CursorPosition)
    }
}

/// One action the model asked for.
#[derive(Debug, Clone)]
pub struct Call {
    /// The provider's id for it (tool_use id, call_id).
    pub id: String,
    /// The action, or why it could not be understood (told back to the model).
    pub action: Result<ComputerAction, String>,
    /// OpenAI's pending safety checks for this call.
    pub safety_checks: Vec<Value>,
}

/// What the model said in one turn.
#[derive(Debug, Clone, Default)]
pub struct Turn {
    /// Its text (reasoning, or the final answer when there are no calls).
    pub text: Option<String>,
    pub calls: Vec<Call>,
}

/// How one call went.
#[derive(Debug, Clone)]
pub struct CallResult {
    pub id: String,
    pub screen: Screen,
    /// Why the action could not be done, if it could not.
    pub error: Option<String>,
    /// A text answer (the cursor position, a typed secret's confirmation).
    pub text: Option<String>,
    /// Safety checks acknowledged for it.
    pub acknowledged: Vec<Value>,
    /// Whether it was a `type_secret` (a function call, not a computer action, for some providers).
    pub secret: bool,
}

/// Why a model conversation cannot go on.
#[derive(Debug, Clone)]
pub struct ModelError(pub String);

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Keeps only the newest `keep` images in a conversation (older screenshots
/// cost tokens and say little), replacing the rest with a note. `images`
/// finds the image blocks of one message.
pub fn keep_newest_images(messages: &mut [Value], keep: usize, is_image: impl Fn(&Value) -> bool) {
    let mut seen = 0;
    for message in messages.iter_mut().rev() {
        visit_blocks(message, &mut |block| {
            if is_image(block) {
                seen += 1;
                if seen > keep {
                    *block = serde_json::json!({"type": "text", "text": "[an older screenshot, removed]"});
                }
            }
        });
    }
}

fn visit_blocks(value: &mut Value, f: &mut impl FnMut(&mut Value)) {
    match value {
        Value::Array(items) => {
            for item in items.iter_mut().rev() {
                visit_blocks(item, f);
            }
        }
        Value::Object(map) => {
            if map.get("type").and_then(Value::as_str).is_some() {
                f(value);
                if let Value::Object(map) = value {
                    if let Some(content) = map.get_mut("content") {
                        visit_blocks(content, f);
                    }
                }
            } else if let Some(content) = map.get_mut("content") {
                visit_blocks(content, f);
            }
        }
        _ => {}
    }
}

/// A conversation with a model about one goal.
#[async_trait]
pub trait Model: Send {
    /// The first turn: the goal and the screen as it is.
    async fn start(&mut self, goal: &str, screen: &Screen) -> Result<Turn, ModelError>;
    /// The results of the last turn's calls, and the next turn.
    async fn resume(&mut self, results: Vec<CallResult>) -> Result<Turn, ModelError>;
}

/// The size of the screen the model is told about.
#[derive(Debug, Clone, Copy)]
pub struct Display {
    pub width: u32,
    pub height: u32,
}

/// Starts a conversation with `provider`'s `model`.
pub fn new_model(
    provider: &str,
    model: &str,
    client: ModelClient,
    display: Display,
    secret_names: &[String],
) -> Result<Box<dyn Model>, ModelError> {
    Ok(match provider {
        "anthropic" => Box::new(anthropic::Anthropic::new(client, model, display, secret_names)),
        "openai" => Box::new(openai::OpenAi::new(client, model, display, secret_names)),
        "openai-compatible" => Box::new(compatible::Compatible::new(client, model, display, secret_names)),
        other => return Err(ModelError(format!("unknown model provider {other:?}"))),
    })
}

/// Text that tells the model about the secrets it may type.
/// The `x` and `y` of an action given as JSON fields (OpenAI's and the
/// OpenAI-compatible schema's shape).
pub fn xy(action: &Value) -> Result<(f64, f64), String> {
    match (action["x"].as_f64(), action["y"].as_f64()) {
        (Some(x), Some(y)) => Ok((x, y)),
        _ => Err(format!("{} needs x and y", action["type"].as_str().unwrap_or("the action"))),
    }
}

pub fn secrets_note(secret_names: &[String]) -> Option<String> {
    if secret_names.is_empty() {
        return None;
    }
    Some(format!(
        "You may type these secrets into the focused field with the type_secret tool, by name; you never see their values: {}.",
        secret_names.join(", ")
    ))
}

/// The `type_secret` tool's JSON Schema parameters.
pub fn type_secret_parameters(secret_names: &[String]) -> Value {
    serde_json::json!({
        "type": "object",
        "properties": {"name": {"type": "string", "enum": secret_names, "description": "The secret's name"}},
        "required": ["name"],
        "additionalProperties": false,
    })
}
