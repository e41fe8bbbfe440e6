//! Turns the agent's events into what the store records: log entries,
//! counter increments, the output object and the way the run ended.

use flywheel_model::log::{LogKind, LogLevel, NewLogEntry};
use flywheel_model::protocol::AgentEvent;
use flywheel_model::{ErrorCode, ExecutionError};
use flywheel_store::records::Progress;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Most bytes the output of an execution holds (names and values, as JSON).
pub const MAX_OUTPUT: usize = 1024 * 1024;
/// Most named values in an output.
pub const MAX_OUTPUT_NAMES: usize = 1000;
/// How much of an output value its log entry shows.
const OUTPUT_PREVIEW: usize = 4096;

/// What the worker learned from the agent so far.
#[derive(Debug, Default)]
pub struct RunState {
    /// The agent said `started`.
    pub started: bool,
    /// The agent said `finished`, with this result.
    pub finished: Option<bool>,
    /// The first error the agent reported.
    pub error: Option<ExecutionError>,
    /// Named output values, in the order they were set.
    pub output: Map<String, Value>,
    /// Artifacts announced by the agent, waiting to be stored: (name, kind, step).
    pub pending_artifacts: Vec<(String, String, Option<u32>)>,
    /// Model calls the agent asked for, waiting to be made: (id, provider, path, headers, body).
    pub model_requests: Vec<crate::models::ModelRequest>,
    /// Step labels by index, to name steps in later entries.
    step_labels: HashMap<u32, String>,
}

impl RunState {
    /// Records one event; returns what to persist for it.
    pub fn apply(&mut self, event: AgentEvent, progress: &mut Progress) {
        match event {
            AgentEvent::Started { agent_version } => {
                self.started = true;
                progress.entries.push(NewLogEntry::new(
                    LogKind::Log,
                    LogLevel::Debug,
                    format!("agent {agent_version} started"),
                ));
            }
            AgentEvent::StepStarted { index, kind, label } => {
                progress.add_steps += 1;
                let message = if label == kind {
                    format!("Step {} ({kind}) started", index + 1)
                } else {
                    format!("Step {} ({kind}: {label}) started", index + 1)
                };
                progress.entries.push(
                    NewLogEntry::new(LogKind::Step, LogLevel::Info, message)
                        .with_step(Some(index))
                        .with_data(json!({"event": "started", "index": index, "kind": kind, "label": label})),
                );
                self.step_labels.insert(index, label);
            }
            AgentEvent::StepFinished { index, ok, duration_ms, error } => {
                let label = self.step_labels.get(&index).cloned().unwrap_or_default();
                let (level, message) = match &error {
                    None => (LogLevel::Info, format!("Step {} ({label}) finished in {duration_ms} ms", index + 1)),
                    Some(err) => {
                        (LogLevel::Error, format!("Step {} ({label}) failed after {duration_ms} ms: {err}", index + 1))
                    }
                };
                progress.entries.push(
                    NewLogEntry::new(LogKind::Step, level, message).with_step(Some(index)).with_data(json!({
                        "event": "finished", "index": index, "ok": ok, "duration_ms": duration_ms, "error": error,
                    })),
                );
            }
            AgentEvent::Log { level, message, step } => {
                progress.entries.push(NewLogEntry::new(LogKind::Log, LogLevel::parse(&level), message).with_step(step));
            }
            AgentEvent::Action { step, action, target, outcome, duration_ms, reasoning } => {
                progress.add_agent_actions += 1;
                let target_text = target.as_ref().map(|t| format!(" {t}")).unwrap_or_default();
                let message = format!("{action}{target_text}: {outcome} ({duration_ms} ms)");
                let mut data =
                    json!({"action": action, "target": target, "outcome": outcome, "duration_ms": duration_ms});
                if let Some(reasoning) = reasoning {
                    data["reasoning"] = Value::String(reasoning);
                }
                progress
                    .entries
                    .push(NewLogEntry::new(LogKind::Action, LogLevel::Info, message).with_step(step).with_data(data));
            }
            AgentEvent::AgentTurn { step, turn, text, actions } => {
                progress.add_steps += 1;
                let said = text.as_deref().map(|t| format!(": {}", shorten(t, 300))).unwrap_or_default();
                progress.entries.push(
                    NewLogEntry::new(
                        LogKind::Step,
                        LogLevel::Info,
                        format!("Agent turn {turn} ({actions} actions){said}"),
                    )
                    .with_step(step)
                    .with_data(json!({"event": "turn", "turn": turn, "text": text, "actions": actions})),
                );
            }
            AgentEvent::ModelRequest { id, provider, path, headers, body } => {
                self.model_requests.push(crate::models::ModelRequest { id, provider, path, headers, body });
            }
            AgentEvent::Output { name, value } => {
                // The whole output stays within MAX_OUTPUT: past it, a value
                // is replaced by a note of its size (the log says so too).
                let size = value.to_string().len();
                let others: usize =
                    self.output.iter().filter(|(k, _)| **k != name).map(|(k, v)| k.len() + v.to_string().len()).sum();
                let (value, message) = if others + name.len() + size > MAX_OUTPUT
                    || self.output.len() >= MAX_OUTPUT_NAMES && !self.output.contains_key(&name)
                {
                    let note = format!("[not kept: the output may hold at most {} KiB and {MAX_OUTPUT_NAMES} names; this value is {size} bytes]", MAX_OUTPUT / 1024);
                    (Value::String(note), format!("output {name} set, but too large to keep"))
                } else {
                    (value, format!("output {name} set"))
                };
                // The log shows the beginning of the value; the output has it whole.
                let preview = flywheel_model::protocol::bounded_value(value.clone(), OUTPUT_PREVIEW);
                progress.entries.push(
                    NewLogEntry::new(LogKind::Output, LogLevel::Info, message)
                        .with_data(json!({"name": name, "value": preview})),
                );
                self.output.insert(name, value);
            }
            AgentEvent::Artifact { name, kind, step } => {
                self.pending_artifacts.push((name, kind, step));
            }
            // Told once, by the final status entry that carries the error.
            AgentEvent::Error { code, message, step: _ } => {
                if self.error.is_none() {
                    self.error = Some(ExecutionError::new(code, message));
                }
            }
            AgentEvent::Finished { ok } => {
                self.finished = Some(ok);
            }
        }
    }

    /// A line the agent wrote that is not an event: kept as a warning.
    pub fn apply_garbage(&mut self, line: &str, progress: &mut Progress) {
        progress.entries.push(NewLogEntry::new(LogKind::Log, LogLevel::Warn, format!("agent: {line}")));
    }

    /// How the run ended, judged from the events alone: `None` = completed.
    /// `early_exit` explains a sandbox that never started its agent.
    pub fn outcome(
        &self,
        exit_code: Option<i32>,
        early_exit: impl FnOnce() -> String,
        stderr_tail: &str,
    ) -> Option<ExecutionError> {
        match self.finished {
            Some(true) if self.error.is_none() => None,
            Some(_) => Some(self.error.clone().unwrap_or_else(|| {
                ExecutionError::new(ErrorCode::AgentError, "the agent reported a failure without saying why")
            })),
            None if !self.started => Some(ExecutionError::new(ErrorCode::SandboxError, early_exit())),
            None => {
                let code = exit_code.map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit status {c}"));
                let tail = stderr_tail.trim();
                let detail = if tail.is_empty() { String::new() } else { format!("; it said: {tail}") };
                Some(ExecutionError::new(
                    ErrorCode::AgentError,
                    format!("the agent ended unexpectedly ({code}){detail}"),
                ))
            }
        }
    }
}

/// The first `max` characters of `text`, with an ellipsis if cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_outcomes() {
        let mut state = RunState::default();
        let mut progress = Progress::default();
        state.apply(AgentEvent::Started { agent_version: "1".into() }, &mut progress);
        state.apply(AgentEvent::StepStarted { index: 0, kind: "shell".into(), label: "shell".into() }, &mut progress);
        state.apply(AgentEvent::Output { name: "x".into(), value: json!(1) }, &mut progress);
        state.apply(
            AgentEvent::Action {
                step: Some(0),
                action: "click".into(),
                target: None,
                outcome: "ok".into(),
                duration_ms: 3,
                reasoning: Some("the button".into()),
            },
            &mut progress,
        );
        assert_eq!((progress.add_steps, progress.add_agent_actions), (1, 1));
        assert_eq!(state.output.get("x"), Some(&json!(1)));
        assert_eq!(state.outcome(Some(0), String::new, "").unwrap().code, ErrorCode::AgentError, "no finished event");
        // The output keeps within its size; a value past it is noted, not kept.
        let big = json!("x".repeat(600 * 1024));
        state.apply(AgentEvent::Output { name: "a".into(), value: big.clone() }, &mut progress);
        state.apply(AgentEvent::Output { name: "b".into(), value: big.clone() }, &mut progress);
        assert_eq!(state.output["a"], big);
        assert!(state.output["b"].as_str().unwrap().starts_with("[not kept"));
        state.apply(AgentEvent::Output { name: "a".into(), value: json!(2) }, &mut progress);
        assert_eq!(state.output["a"], json!(2), "replacing a value frees its room");
        let logged = progress
            .entries
            .iter()
            .filter(|e| e.kind == LogKind::Output)
            .map(|e| e.data.as_ref().unwrap().to_string().len());
        assert!(logged.max().unwrap() < 8192, "log entries show a preview");
        state.apply(AgentEvent::Finished { ok: true }, &mut progress);
        assert!(state.outcome(Some(0), String::new, "").is_none());

        let never_started = RunState::default();
        let err = never_started.outcome(Some(1), || "bwrap: boom".into(), "").unwrap();
        assert_eq!(err.code, ErrorCode::SandboxError);
        assert_eq!(err.message, "bwrap: boom");
    }
}
