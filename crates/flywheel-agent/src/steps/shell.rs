//! `shell`: a command run by `/bin/sh -c` in the work dir. Its output lines
//! become log lines (stdout as info, stderr as warn); a non-zero exit fails
//! the step. With `name`, the trimmed stdout becomes a named value.
//!
//! The step ends when the shell exits. Processes it started in the
//! background live on (a helper server for later steps, say) until the
//! sandbox ends with the execution; if the step times out, its whole process
//! group is killed.

use crate::RunContext;
use anyhow::{bail, Context};
use flywheel_model::step::ShellStep;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

/// Longest log line kept; the rest of a longer line is cut (and the line
/// says so, within what an event may carry).
const MAX_LINE: usize = flywheel_model::protocol::MAX_EVENT_TEXT - 256;
/// Log lines a single step may produce before the rest is only counted.
const MAX_LOG_LINES: usize = 10_000;
/// Most stdout kept for a named value.
const MAX_CAPTURE: usize = 1024 * 1024;

/// How long output may keep coming after the shell exited (from background
/// processes that hold its pipes) before the step stops reading.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(300);

/// Kills the command's whole process group when dropped before the shell
/// exited (a step timeout drops the step's future).
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = killpg(pid, Signal::SIGKILL);
        }
    }
}

pub async fn run(ctx: &mut RunContext, index: u32, step: &ShellStep) -> anyhow::Result<()> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&step.command)
        .current_dir(&ctx.work_dir)
        .envs(&step.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("could not start /bin/sh")?;
    let mut guard = GroupGuard(child.id().map(|id| Pid::from_raw(id as i32)));
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let captured = Arc::new(Mutex::new(String::new()));
    let capture = step.name.as_ref().map(|_| captured.clone());
    let out_task = tokio::spawn(pump(stdout, ctx.emitter.clone(), "info", index, capture));
    let err_task = tokio::spawn(pump(stderr, ctx.emitter.clone(), "warn", index, None));
    let status = child.wait().await.context("waiting for the command")?;
    guard.0 = None;
    // Usually the pipes close with the shell; background processes may hold
    // them open, and are not waited for.
    let deadline = tokio::time::Instant::now() + DRAIN_AFTER_EXIT;
    for task in [out_task, err_task] {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            abort.abort();
        }
    }
    let captured = captured.lock().map(|c| c.clone()).unwrap_or_default();
    if !status.success() {
        match status.code() {
            Some(code) => bail!("the command exited with status {code}"),
            None => bail!("the command was killed by a signal"),
        }
    }
    if let Some(name) = &step.name {
        ctx.set_value(name, serde_json::Value::String(captured.trim().to_owned()));
    }
    Ok(())
}

/// Forwards lines from a pipe as log lines, keeping the text in `capture`.
/// A line is read up to [`MAX_LINE`] bytes; the rest of a longer one is
/// skipped (and said to be), so a step that prints a line without end
/// cannot make the agent hold it. Secrets are masked as the bytes come, so
/// a cut never leaves part of one behind.
async fn pump(
    pipe: impl AsyncRead + Unpin,
    emitter: crate::emit::Emitter,
    level: &'static str,
    step: u32,
    capture: Option<Arc<Mutex<String>>>,
) {
    let mut reader = BufReader::new(pipe);
    let mut masker = emitter.stream_redactor();
    let mut line = Vec::new();
    let mut line_len = 0usize;
    let mut lines = 0usize;
    let keep = |line: &mut Vec<u8>, masked: Vec<u8>| {
        if let Some(Ok(mut captured)) = capture.as_ref().map(|c| c.lock()) {
            let room = MAX_CAPTURE.saturating_sub(captured.len());
            captured.push_str(&String::from_utf8_lossy(&masked[..masked.len().min(room)]));
        }
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&masked[..masked.len().min(room)]);
    };
    loop {
        let (ended, used) = match reader.fill_buf().await {
            Ok([]) | Err(_) => (line_len > 0, 0),
            Ok(buf) => {
                let newline = buf.iter().position(|b| *b == b'\n');
                let used = newline.map_or(buf.len(), |at| at + 1);
                let masked = masker.push(&buf[..used]);
                keep(&mut line, masked);
                line_len += used;
                (newline.is_some(), used)
            }
        };
        if used == 0 && !ended {
            break;
        }
        reader.consume(used);
        if !ended {
            continue;
        }
        let rest = masker.finish();
        keep(&mut line, rest);
        lines += 1;
        if lines <= MAX_LOG_LINES {
            let mut text = String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_owned();
            if line_len > MAX_LINE {
                text.push_str(&format!(" …[line cut: {line_len} bytes]"));
            }
            emitter.log(level, text, Some(step));
        }
        line.clear();
        line_len = 0;
        if used == 0 {
            break;
        }
    }
    if lines > MAX_LOG_LINES {
        emitter.log("warn", format!("{} more output lines were not logged", lines - MAX_LOG_LINES), Some(step));
    }
}
