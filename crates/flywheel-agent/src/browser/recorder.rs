//! The screen recording, encoded while the run goes on.
//!
//! Chromium's screencast sends a JPEG whenever the screen changes. A ticker
//! feeds the newest one to ffmpeg ten times a second (repeating it while the
//! screen is still), so the video's clock is the run's clock, and ffmpeg
//! encodes H.264 as it goes: when the run ends only the last few frames are
//! left to encode, whatever the length of the run. The time before the first
//! frame (the sandbox and the browser starting) shows that first frame.

use super::cdp::Cdp;
use anyhow::{bail, Context};
use base64::Engine;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};
use tokio::task::JoinHandle;

/// Frames per second of the video.
const FPS: u32 = 10;
const FRAME_INTERVAL: Duration = Duration::from_millis(1000 / FPS as u64);

/// Whether `program` is in one of the PATH's directories.
fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Seconds since the Unix epoch, now.
pub fn epoch_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// What the ticker shares with the rest: the newest frame, and how many
/// frames went to ffmpeg.
#[derive(Default)]
struct Shared {
    latest: Option<Arc<Vec<u8>>>,
    written: u64,
}

pub struct Recorder {
    cdp: Arc<Cdp>,
    session: String,
    shared: Arc<Mutex<Shared>>,
    started: f64,
    frames_task: JoinHandle<()>,
    stop_ticker: tokio::sync::oneshot::Sender<()>,
    ticker: JoinHandle<Option<ChildStdin>>,
    ffmpeg: Child,
}

impl Recorder {
    /// Starts the screencast of the page `session` and the encoder writing
    /// `output`. The video begins at `run_started` (seconds since the epoch).
    pub async fn start(
        cdp: Arc<Cdp>,
        session: &str,
        output: &Path,
        width: u32,
        height: u32,
        run_started: f64,
    ) -> anyhow::Result<Recorder> {
        if !in_path("ffmpeg") {
            bail!("ffmpeg is not installed, so there is no video (apt-get install ffmpeg)");
        }
        let fps = FPS.to_string();
        // Every frame is fitted into the viewport's size (even, for H.264):
        // a frame of another size (Chromium's first one can be) must not set
        // the video's size.
        let (w, h) = (width.max(2) & !1, height.max(2) & !1);
        let fit = format!(
            "scale={w}:{h}:force_original_aspect_ratio=decrease,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2,format=yuv420p"
        );
        // The steps come first: the encoder runs at a lower priority, on one
        // thread, without look-ahead (less memory); it catches up in pauses.
        let mut ffmpeg = tokio::process::Command::new("nice")
            .args(["-n", "10", "ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-threads", "1"])
            .args(["-f", "image2pipe", "-c:v", "mjpeg", "-framerate", &fps, "-i", "-"])
            .args(["-vf", &fit, "-r", &fps])
            .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-threads", "1", "-crf", "30"])
            .args(["-movflags", "+faststart"])
            .arg(output)
            // The input is replaced by the pipe below (-nostdin is for ffmpeg's keyboard).
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| {
                if err.kind() == std::io::ErrorKind::NotFound {
                    anyhow::anyhow!("nice (coreutils) is not installed, so there is no video")
                } else {
                    anyhow::anyhow!("could not start ffmpeg: {err}")
                }
            })?;
        let stdin = ffmpeg.stdin.take().context("no stdin pipe to ffmpeg")?;
        let shared: Arc<Mutex<Shared>> = Arc::default();
        let started = run_started.min(epoch_secs());

        // Keep the newest frame.
        let mut events = cdp.subscribe();
        let (task_cdp, task_shared, task_session) = (cdp.clone(), shared.clone(), session.to_owned());
        let frames_task = tokio::spawn(async move {
            let mut last_frame = tokio::time::Instant::now();
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                };
                if event.method != "Page.screencastFrame" || event.session.as_deref() != Some(task_session.as_str()) {
                    continue;
                }
                // The browser sends the next frame only once this one is
                // acknowledged: acknowledging no sooner than the video needs
                // keeps a busy page from costing a JPEG per paint.
                if let Some(ack) = event.params.get("sessionId").cloned() {
                    let (cdp, session) = (task_cdp.clone(), task_session.clone());
                    let wait = (last_frame + FRAME_INTERVAL).saturating_duration_since(tokio::time::Instant::now());
                    last_frame = tokio::time::Instant::now();
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let _ = cdp.call("Page.screencastFrameAck", json!({"sessionId": ack}), Some(&session)).await;
                    });
                }
                let Some(data) = event.params.get("data").and_then(Value::as_str) else { continue };
                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) {
                    task_shared.lock().unwrap_or_else(|e| e.into_inner()).latest = Some(Arc::new(bytes));
                }
            }
        });

        // Feed ffmpeg on the video's clock.
        let (stop_ticker, stopped) = tokio::sync::oneshot::channel();
        let ticker = tokio::spawn(feed(stdin, shared.clone(), started, stopped));
        cdp.call(
            "Page.startScreencast",
            json!({"format": "jpeg", "quality": 70, "maxWidth": width, "maxHeight": height, "everyNthFrame": 1}),
            Some(session),
        )
        .await?;
        Ok(Recorder { cdp, session: session.to_owned(), shared, started, frames_task, stop_ticker, ticker, ffmpeg })
    }

    /// Stops recording and finishes the file. Returns the video's duration
    /// in seconds, or `None` if no frame was ever painted.
    pub async fn finish(mut self) -> anyhow::Result<Option<f64>> {
        let _ = self.cdp.call("Page.stopScreencast", json!({}), Some(&self.session)).await;
        self.frames_task.abort();
        let ended = epoch_secs();
        // The ticker finishes the frame it is writing and gives the pipe back.
        let _ = self.stop_ticker.send(());
        let stdin = self.ticker.await.ok().flatten();
        let written = {
            let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            if shared.latest.is_none() {
                None
            } else {
                Some(shared.written)
            }
        };
        let Some(written) = written else {
            let _ = self.ffmpeg.start_kill();
            return Ok(None);
        };
        // Whatever the ticker had not written yet, write now.
        if let Some(mut stdin) = stdin {
            let due = ((ended - self.started) * f64::from(FPS)).round() as u64;
            let frame = self.shared.lock().unwrap_or_else(|e| e.into_inner()).latest.clone();
            if let Some(frame) = frame {
                for _ in written..due {
                    if stdin.write_all(&frame).await.is_err() {
                        break;
                    }
                }
            }
            let _ = stdin.shutdown().await;
        }
        let output = tokio::time::timeout(Duration::from_secs(120), self.ffmpeg.wait_with_output())
            .await
            .map_err(|_| anyhow::anyhow!("ffmpeg took more than 2 minutes to finish the video"))?
            .context("waiting for ffmpeg")?;
        if !output.status.success() {
            bail!("ffmpeg could not encode the video: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(Some(ended - self.started))
    }
}

/// Writes the newest frame to ffmpeg every 1/FPS second of the video's
/// clock (catching up after a stall, so the video keeps the run's time).
/// Before the first frame exists there is nothing to write; once it does,
/// the time since the start is filled with it.
async fn feed(
    mut stdin: ChildStdin,
    shared: Arc<Mutex<Shared>>,
    started: f64,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Option<ChildStdin> {
    let mut tick = tokio::time::interval(FRAME_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return Some(stdin),
        }
        let due = ((epoch_secs() - started) * f64::from(FPS)).floor() as u64;
        let (frame, written) = {
            let shared = shared.lock().unwrap_or_else(|e| e.into_inner());
            (shared.latest.clone(), shared.written)
        };
        let Some(frame) = frame else { continue };
        for _ in written..due {
            if stdin.write_all(&frame).await.is_err() {
                return None;
            }
            shared.lock().unwrap_or_else(|e| e.into_inner()).written += 1;
        }
    }
}
