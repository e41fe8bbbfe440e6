//! `GET /api/executions/{id}/events`: Server-Sent Events of an execution.
//!
//! Every log entry (status changes, steps, log lines, actions, outputs,
//! artifacts, errors) is one event: `id` is the entry's seq, `event` its kind,
//! `data` the entry as JSON. A client that reconnects with `Last-Event-ID`
//! (browsers do this by themselves) or `?after=` resumes after that entry.
//! Once the execution is completed or failed and every entry was sent, an
//! `end` event carries the final status and the stream closes.
//!
//! The store is the source; an in-process signal only says "look now", and
//! a one-second poll covers entries written by other nodes.

use super::{execution_id, query_param, QueryMap};
use crate::error::ApiResult;
use crate::views::{ErrorBody, ExecutionEvent, LogEntryView, ValidationErrorBody};
use crate::App;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use flywheel_model::LogEntry;
use flywheel_store::StoreError;
use futures::Stream;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use uuid::Uuid;

/// Entries read from the store at a time.
const BATCH: i64 = 500;
/// How often to look even without a signal.
const POLL: Duration = Duration::from_secs(1);

#[utoipa::path(get, path = "/api/executions/{id}/events", tag = "executions",
    params(("id" = String, Path, format = Uuid, description = "execution uuid"),
        ("after" = Option<i64>, Query, description = "resume after this seq (a numeric Last-Event-ID header does the same, and wins)")),
    responses((status = 200, description = "text/event-stream of log entries, then `end`", content_type = "text/event-stream", body = ExecutionEvent),
        (status = 401, body = ErrorBody, description = "no valid API key"), (status = 404, body = ErrorBody, description = "no such execution"), (status = 422, body = ValidationErrorBody, description = "invalid body or parameters")))]
pub async fn execution_events(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(query): Query<QueryMap>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = execution_id(&id)?;
    app.store.get_execution(id).await?;
    let from_header =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok());
    let after_query = query_param::<i64>(&query, "after", "a sequence number")?;
    let after = from_header.or(after_query).unwrap_or(0);
    let rx = app.signals.subscribe_logs();
    let feed = Feed { app, id, after, rx, pending: VecDeque::new(), done: false };
    let stream =
        futures::stream::unfold(feed, |mut feed| async move { feed.next_event().await.map(|event| (Ok(event), feed)) });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct Feed {
    app: Arc<App>,
    id: Uuid,
    after: i64,
    rx: broadcast::Receiver<Uuid>,
    pending: VecDeque<Event>,
    done: bool,
}

impl Feed {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            if self.fetch().await? > 0 {
                continue;
            }
            match self.app.store.get_execution(self.id).await {
                Ok(record) if record.status.is_terminal() => {
                    // The final entries may have landed since the fetch above.
                    self.fetch().await?;
                    let data = serde_json::json!({"status": record.status, "execution_uuid": self.id});
                    self.pending.push_back(Event::default().event("end").data(data.to_string()));
                    self.done = true;
                    continue;
                }
                Ok(_) => {}
                Err(StoreError::NotFound(_)) => return None,
                Err(err) => tracing::warn!(error = %err, "SSE could not read the execution"),
            }
            self.wait().await?;
        }
    }

    /// Queues the entries after `self.after`; returns how many.
    async fn fetch(&mut self) -> Option<usize> {
        match self.app.store.list_logs(self.id, self.after, BATCH).await {
            Ok(entries) => {
                let n = entries.len();
                for entry in entries {
                    self.after = entry.seq;
                    self.pending.push_back(to_event(entry));
                }
                Some(n)
            }
            Err(err) => {
                tracing::warn!(error = %err, "SSE could not read log entries");
                None
            }
        }
    }

    /// Waits for a signal about this execution, or the poll interval.
    async fn wait(&mut self) -> Option<()> {
        let deadline = tokio::time::sleep(POLL);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                message = self.rx.recv() => match message {
                    Ok(id) if id == self.id => return Some(()),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return Some(()),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = &mut deadline => return Some(()),
            }
        }
    }
}

fn to_event(entry: LogEntry) -> Event {
    let seq = entry.seq;
    let kind = entry.kind.as_str();
    let view = LogEntryView::from(entry);
    Event::default().id(seq.to_string()).event(kind).data(serde_json::to_string(&view).unwrap_or_default())
}
