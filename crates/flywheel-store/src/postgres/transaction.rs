//! Transactions of the PostgreSQL store: [`in_transaction!`] runs one
//! store operation in a transaction, commits it, and runs it again when
//! PostgreSQL aborted it for a deadlock or a serialization failure (the
//! operations lock rows in one order to avoid deadlocks, but a cascading
//! delete racing a worker can still meet one; a retry is always safe
//! because a rolled-back transaction left nothing behind, notifications
//! included). Also: sending notifications inside a transaction.

use crate::{StoreError, StoreResult};
use sqlx::PgConnection;
use uuid::Uuid;

/// How often an operation runs before a deadlock is reported as an error.
pub(super) const MAX_ATTEMPTS: u32 = 5;

/// Runs `$op` (an expression of the connection `$conn` that gives a future
/// of a `StoreResult`) inside a transaction on `$pool`, commits on `Ok`,
/// rolls back on `Err`, and retries transient failures. Evaluates to the
/// operation's `StoreResult`.
macro_rules! in_transaction {
    ($pool:expr, |$conn:ident| $op:expr) => {{
        let mut attempt = 1;
        loop {
            let mut tx = match $pool.begin().await {
                Ok(tx) => tx,
                Err(err) => break Err($crate::StoreError::from(err)),
            };
            let result = {
                let $conn: &mut sqlx::PgConnection = &mut tx;
                $op.await
            };
            // Dropping `tx` without commit rolls it back.
            let outcome = match result {
                Ok(value) => tx.commit().await.map(|()| value).map_err($crate::StoreError::from),
                Err(err) => Err(err),
            };
            match outcome {
                Err(err) if attempt < $crate::postgres::transaction::MAX_ATTEMPTS
                    && $crate::postgres::transaction::is_transient(&err) =>
                {
                    ::tracing::debug!(error = %err, attempt, "transaction aborted by PostgreSQL; running it again");
                    attempt += 1;
                }
                other => break other,
            }
        }
    }};
}
pub(super) use in_transaction;

/// Whether PostgreSQL aborted the transaction only because of other
/// transactions (deadlock detected, serialization failure).
pub(super) fn is_transient(err: &StoreError) -> bool {
    let StoreError::Internal(err) = err else { return false };
    let Some(sqlx::Error::Database(db)) = err.downcast_ref::<sqlx::Error>() else { return false };
    matches!(db.code().as_deref(), Some("40P01" | "40001"))
}

/// Queues a notification on `channel` with an execution's uuid as payload;
/// PostgreSQL delivers it when (and only if) the transaction commits.
pub(super) async fn notify(conn: &mut PgConnection, channel: &str, execution: Uuid) -> StoreResult<()> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(execution.to_string()).execute(&mut *conn).await?;
    Ok(())
}
