//! Group commit for SQLite: one connection, one task, many writes per commit.
//!
//! Every write of the store is a closure sent to a single writer task. The
//! task takes whatever is waiting (up to [`MAX_BATCH`]), runs the closures in
//! one `BEGIN IMMEDIATE` transaction, each inside its own savepoint so a
//! failing write rolls back alone, commits once, and only then answers the
//! callers. One fsync covers the whole batch, so writes are durable
//! (`synchronous=FULL`) and still fast under load, and no write ever meets
//! "database is locked": within the process there is only one writer.

use crate::{StoreError, StoreResult};
use futures::future::BoxFuture;
use sqlx::SqliteConnection;
use std::any::Any;
use tokio::sync::{mpsc, oneshot};

/// Most writes committed together.
const MAX_BATCH: usize = 256;

type AnyResult = StoreResult<Box<dyn Any + Send>>;
type WriteOp = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, AnyResult> + Send>;

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<AnyResult>,
}

/// A handle to the writer task.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<WriteRequest>,
}

impl Writer {
    /// Starts the writer task on `conn`.
    pub(crate) fn spawn(conn: SqliteConnection) -> Writer {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer_loop(conn, rx));
        Writer { tx }
    }

    /// Runs `op` inside a committed transaction and returns its result.
    pub(crate) async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op: WriteOp = Box::new(move |conn: &mut SqliteConnection| -> BoxFuture<'_, AnyResult> {
            Box::pin(async move { op(conn).await.map(|v| Box::new(v) as Box<dyn Any + Send>) })
        });
        self.tx.send(WriteRequest { op, reply }).await.map_err(|_| writer_gone())?;
        let value = answer.await.map_err(|_| writer_gone())??;
        value
            .downcast::<T>()
            .map(|v| *v)
            .map_err(|_| StoreError::Internal(anyhow::anyhow!("writer returned a value of the wrong type")))
    }
}

fn writer_gone() -> StoreError {
    StoreError::Internal(anyhow::anyhow!("the database writer has stopped"))
}

async fn writer_loop(mut conn: SqliteConnection, mut rx: mpsc::Receiver<WriteRequest>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch).await;
    }
}

async fn exec(conn: &mut SqliteConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(conn).await.map(|_| ())
}

async fn run_batch(conn: &mut SqliteConnection, batch: Vec<WriteRequest>) {
    if let Err(err) = exec(conn, "BEGIN IMMEDIATE").await {
        let msg = format!("could not start a transaction: {err}");
        for req in batch {
            let _ = req.reply.send(Err(StoreError::Internal(anyhow::anyhow!(msg.clone()))));
        }
        return;
    }
    let single = batch.len() == 1;
    let mut answers = Vec::with_capacity(batch.len());
    for req in batch {
        let result = if single { (req.op)(conn).await } else { run_in_savepoint(conn, req.op).await };
        answers.push((req.reply, result));
    }
    // A lone write that failed rolls back the whole transaction; in a batch,
    // its savepoint already did.
    let finish = if single && answers[0].1.is_err() { "ROLLBACK" } else { "COMMIT" };
    match exec(conn, finish).await {
        Ok(()) => {
            for (reply, result) in answers {
                let _ = reply.send(result);
            }
        }
        Err(err) => {
            tracing::error!(error = %err, "commit failed; the batch was rolled back");
            let _ = exec(conn, "ROLLBACK").await;
            let msg = format!("could not commit: {err}");
            for (reply, _) in answers {
                let _ = reply.send(Err(StoreError::Internal(anyhow::anyhow!(msg.clone()))));
            }
        }
    }
}

async fn run_in_savepoint(conn: &mut SqliteConnection, op: WriteOp) -> AnyResult {
    exec(conn, "SAVEPOINT op").await?;
    let result = op(conn).await;
    if result.is_err() {
        exec(conn, "ROLLBACK TO op").await?;
    }
    exec(conn, "RELEASE op").await?;
    result
}
