//! The screen recording: Chromium's screencast frames (JPEG, with the time
//! each was painted) are written to disk as they come, and when the run ends
//! ffmpeg turns them into an H.264 MP4 that browsers play, each frame shown
//! for as long as it was on screen. Frames arrive only when the screen
//! changes, so a quiet page costs nothing; writing them happens off the
//! steps' path, and encoding happens once the steps are done.

use super::cdp::Cdp;
use anyhow::{bail, Context};
use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;

/// Frames per second of the encoded video (frames repeat to fill time).
const OUTPUT_FPS: u32 = 10;

pub struct Recorder {
    cdp: Arc<Cdp>,
    session: String,
    dir: PathBuf,
    /// (file, time it was painted, seconds since the epoch)
    frames: Arc<Mutex<Vec<(PathBuf, f64)>>>,
    started: f64,
    task: JoinHandle<()>,
}

/// Seconds since the Unix epoch, now.
pub fn epoch_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Recorder {
    /// Starts the screencast of the page `session` into `dir`. The video
    /// covers the run from `run_started` (seconds since the epoch): the
    /// first frame stands for the screen until then.
    pub async fn start(
        cdp: Arc<Cdp>,
        session: &str,
        dir: &Path,
        width: u32,
        height: u32,
        run_started: f64,
    ) -> anyhow::Result<Recorder> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let frames: Arc<Mutex<Vec<(PathBuf, f64)>>> = Arc::default();
        let mut events = cdp.subscribe();
        let (task_cdp, task_frames, task_dir, task_session) =
            (cdp.clone(), frames.clone(), dir.to_owned(), session.to_owned());
        let task = tokio::spawn(async move {
            let mut n = 0u32;
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                };
                if event.method != "Page.screencastFrame" || event.session.as_deref() != Some(task_session.as_str()) {
                    continue;
                }
                // Acknowledge first: the browser sends the next frame only after.
                if let Some(ack) = event.params.get("sessionId").cloned() {
                    let (cdp, session) = (task_cdp.clone(), task_session.clone());
                    tokio::spawn(async move {
                        let _ = cdp.call("Page.screencastFrameAck", json!({"sessionId": ack}), Some(&session)).await;
                    });
                }
                let timestamp = event.params["metadata"]["timestamp"].as_f64().unwrap_or_else(epoch_secs);
                let Some(data) = event.params.get("data").and_then(Value::as_str) else { continue };
                let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else { continue };
                n += 1;
                let path = task_dir.join(format!("{n:06}.jpg"));
                if tokio::fs::write(&path, bytes).await.is_ok() {
                    task_frames.lock().unwrap_or_else(|e| e.into_inner()).push((path, timestamp));
                }
            }
        });
        cdp.call(
            "Page.startScreencast",
            json!({"format": "jpeg", "quality": 70, "maxWidth": width, "maxHeight": height, "everyNthFrame": 1}),
            Some(session),
        )
        .await?;
        Ok(Recorder {
            cdp,
            session: session.to_owned(),
            dir: dir.to_owned(),
            frames,
            started: run_started.min(epoch_secs()),
            task,
        })
    }

    /// Stops recording and encodes `output` (an `.mp4`). Returns the video's
    /// duration in seconds, or `None` if no frame was painted.
    pub async fn finish(self, output: &Path) -> anyhow::Result<Option<f64>> {
        let _ = self.cdp.call("Page.stopScreencast", json!({}), Some(&self.session)).await;
        // Let frames already on their way land.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        self.task.abort();
        let ended = epoch_secs();
        let mut frames = self.frames.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if frames.is_empty() {
            return Ok(None);
        }
        frames.sort_by(|a, b| a.1.total_cmp(&b.1));
        // The first frame stands for the screen from the start of the recording.
        let mut list = String::from("ffconcat version 1.0\n");
        for (i, (path, at)) in frames.iter().enumerate() {
            let from = if i == 0 { self.started.min(*at) } else { *at };
            let until = frames.get(i + 1).map_or(ended, |next| next.1);
            list.push_str(&format!("file '{}'\nduration {:.3}\n", path.display(), (until - from).max(0.001)));
        }
        // The concat demuxer ignores the last duration unless the file repeats.
        if let Some((last, _)) = frames.last() {
            list.push_str(&format!("file '{}'\n", last.display()));
        }
        let list_path = self.dir.join("frames.ffconcat");
        tokio::fs::write(&list_path, list).await.context("writing the frame list")?;
        let result = tokio::process::Command::new("ffmpeg")
            .args(["-nostdin", "-y", "-loglevel", "error", "-f", "concat", "-safe", "0", "-i"])
            .arg(&list_path)
            .args(["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2,format=yuv420p", "-r", &OUTPUT_FPS.to_string()])
            .args(["-c:v", "libx264", "-preset", "veryfast", "-crf", "30", "-movflags", "+faststart"])
            .arg(output)
            .kill_on_drop(true)
            .output()
            .await;
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
        match result {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                bail!("ffmpeg is not installed, so there is no video (apt-get install ffmpeg)")
            }
            Err(err) => bail!("could not run ffmpeg: {err}"),
            Ok(out) if !out.status.success() => {
                bail!("ffmpeg could not encode the video: {}", String::from_utf8_lossy(&out.stderr).trim())
            }
            Ok(_) => Ok(Some(ended - self.started.min(frames[0].1))),
        }
    }
}
