//! How the client shows things to people: tables, details, log lines, and
//! the live status line of `--wait`.

use serde_json::Value;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// `2026-11-28T18:49:12.123Z` → `2026-11-28 18:49:12`.
fn short_time(v: &Value) -> String {
    s(v).get(..19).map(|t| t.replace('T', " ")).unwrap_or_else(|| "-".into())
}

fn duration(v: &Value) -> String {
    match v.as_i64() {
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
        None => "-".into(),
    }
}

fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row);
    }
}

pub fn workflow_table(items: &Value) {
    let rows: Vec<Vec<String>> = items
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            vec![
                s(&w["slug"]).to_owned(),
                s(&w["name"]).to_owned(),
                format!("v{}", w["current_version"]),
                w["executions"].to_string(),
                w["success_rate"].as_f64().map_or_else(|| "-".into(), |r| format!("{:.0}%", r * 100.0)),
                short_time(&w["last_run"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("No workflows yet. Create one with: flywheel workflows create -f workflow.yaml");
        return;
    }
    table(&["SLUG", "NAME", "VERSION", "EXECUTIONS", "SUCCESS", "LAST RUN"], rows);
}

pub fn secret_table(items: &Value) {
    let rows: Vec<Vec<String>> = items
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| vec![s["name"].as_str().unwrap_or("").to_owned(), short_time(&s["updated_at"])])
        .collect();
    if rows.is_empty() {
        println!("No secrets. Add one with: printf %s \"$VALUE\" | flywheel secrets set NAME");
        return;
    }
    table(&["NAME", "UPDATED"], rows);
}

pub fn workflow_details(w: &Value) {
    println!("{} ({})", s(&w["name"]), s(&w["slug"]));
    println!("  uuid:        {}", s(&w["workflow_uuid"]));
    if !s(&w["description"]).is_empty() {
        println!("  description: {}", s(&w["description"]));
    }
    println!("  version:     {} of {}", w["current_version"], w["versions"].as_array().map_or(0, Vec::len));
    println!("  executions:  {}", w["executions"]);
    println!("  created:     {}   updated: {}", short_time(&w["created_at"]), short_time(&w["updated_at"]));
    println!("specification:");
    let yaml = serde_yaml_ng::to_string(&w["specification"]).unwrap_or_default();
    for line in yaml.lines() {
        println!("  {line}");
    }
}

pub fn execution_table(items: &Value) {
    let rows: Vec<Vec<String>> = items
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let status = match e["error"]["code"].as_str() {
                Some(code) => format!("{} ({code})", s(&e["status"])),
                None => s(&e["status"]).to_owned(),
            };
            vec![
                s(&e["execution_uuid"]).to_owned(),
                s(&e["workflow_name"]).to_owned(),
                status,
                e["attempt"].to_string(),
                short_time(&e["created_at"]),
                duration(&e["duration_ms"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("No executions.");
        return;
    }
    table(&["EXECUTION", "WORKFLOW", "STATUS", "ATTEMPT", "CREATED", "DURATION"], rows);
}

pub fn execution_details(e: &Value, with_logs: bool) {
    println!("Execution {} of {}: {}", s(&e["execution_uuid"]), s(&e["workflow_name"]), s(&e["status"]).to_uppercase());
    if let Some(code) = e["error"]["code"].as_str() {
        println!("  error:    {code}: {}", s(&e["error"]["message"]));
    }
    println!(
        "  attempt:  {}{}",
        e["attempt"],
        e["retry_of"].as_str().map(|r| format!(" (retry of {r})")).unwrap_or_default()
    );
    if let Some(newer) = e["retried_by"].as_str() {
        println!("  retried:  by {newer}");
    }
    println!(
        "  created:  {}   started: {}   finished: {}",
        short_time(&e["created_at"]),
        short_time(&e["started_at"]),
        short_time(&e["finished_at"])
    );
    println!("  duration: {}", duration(&e["duration_ms"]));
    println!("  steps: {}   actions: {}   screenshots: {}", e["n_steps"], e["n_agent_actions"], e["n_screenshots"]);
    for warning in e["warnings"].as_array().into_iter().flatten() {
        println!("  warning:  {}", s(warning));
    }
    if !e["output"].is_null() {
        println!("output:");
        for line in serde_json::to_string_pretty(&e["output"]).unwrap_or_default().lines() {
            println!("  {line}");
        }
    }
    for (label, key) in [("output", "output_url"), ("logs", "logs_url"), ("video", "video_url")] {
        if let Some(url) = e[key].as_str() {
            println!("{label}_url: {url}");
        }
    }
    if with_logs {
        if let Some(logs) = e["logs"].as_array() {
            println!("log:");
            if e["logs_truncated"] == true {
                println!("  … (older entries at logs_url)");
            }
            for entry in logs {
                log_line(entry, false);
            }
        }
    }
}

/// One log entry: `18:49:12.123 INFO  [step] Step 1 (shell) started`.
pub fn log_line(entry: &Value, json: bool) {
    if json {
        println!("{entry}");
        return;
    }
    let ts = s(&entry["ts"]);
    let time = ts.get(11..23).unwrap_or(ts);
    let level = s(&entry["level"]).to_uppercase();
    println!("{time} {level:<5} [{}] {}", s(&entry["kind"]), s(&entry["message"]));
    let _ = std::io::stdout().flush();
}

/// A status line on stderr that redraws itself while an execution runs.
pub struct LiveStatus {
    state: Arc<Mutex<(String, i64, String)>>,
    stop: Arc<AtomicBool>,
}

impl LiveStatus {
    pub fn new() -> LiveStatus {
        let state = Arc::new(Mutex::new(("queued".to_owned(), 0i64, String::new())));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_state, thread_stop) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
            let mut i = 0;
            while !thread_stop.load(Ordering::SeqCst) {
                let (status, steps, last) = thread_state.lock().map(|s| s.clone()).unwrap_or_default();
                let mut last: String = last.chars().take(60).collect();
                if !last.is_empty() {
                    last = format!(" · {last}");
                }
                eprint!(
                    "\r\x1b[2K{} {status} · {steps} steps · {:.1} s{last}",
                    frames[i % frames.len()],
                    started.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        LiveStatus { state, stop }
    }

    pub fn update(&self, entry: &Value) {
        if let Ok(mut state) = self.state.lock() {
            match s(&entry["kind"]) {
                "status" => state.0 = s(&entry["data"]["status"]).to_owned(),
                "step" if entry["data"]["event"] == "started" => {
                    state.1 += 1;
                    state.2 = s(&entry["message"]).to_owned();
                }
                _ => {}
            }
        }
    }

    pub fn clear(&self) {
        self.stop.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(120));
        eprint!("\r\x1b[2K");
        let _ = std::io::stderr().flush();
    }
}
