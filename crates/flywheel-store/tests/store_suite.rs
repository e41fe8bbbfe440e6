//! The store test suite: behaviour every `Store` backend must have. Each
//! test runs against SQLite (a fresh database file) and, with the
//! `postgres` feature, against a fresh database on a real PostgreSQL server
//! (see `postgres_server`); the tests named `postgres::…` and
//! `postgres_only::…` are PostgreSQL's.

#[cfg(feature = "postgres")]
#[allow(dead_code)] // restart_server is for the multi-node tests of the flywheel crate.
mod postgres_server;

use flywheel_model::log::{LogKind, LogLevel, NewLogEntry};
use flywheel_model::{ErrorCode, ExecutionError, ExecutionStatus};
use flywheel_store::records::*;
use flywheel_store::sqlite::{Durability, SqliteStore};
use flywheel_store::{Store, StoreError};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

/// A store on a database of its own, kept for as long as the test runs.
struct TestStore {
    store: Arc<dyn Store>,
    _database: Box<dyn std::any::Any + Send>,
}

async fn open_sqlite() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("flywheel.db"), Durability::Full).await.unwrap();
    TestStore { store: Arc::new(store), _database: Box::new(dir) }
}

#[cfg(feature = "postgres")]
async fn open_postgres() -> TestStore {
    let database = postgres_server::fresh_database().await;
    let store = flywheel_store::postgres::PostgresStore::connect(&database.url).await.unwrap();
    TestStore { store: Arc::new(store), _database: Box::new(database) }
}

/// Runs each listed test (an `async fn(TestStore)`) once per backend:
/// `sqlite::<name>` and, with the `postgres` feature, `postgres::<name>`.
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::open_sqlite().await).await
                }
            )*
        }

        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::open_postgres().await).await
                }
            )*
        }
    };
}

on_every_backend! {
    workflows_have_immutable_versions,
    executions_are_queued_and_claimed_in_fifo_order,
    per_workflow_concurrency_is_respected_within_and_across_claims,
    writes_need_the_lease_and_terminal_statuses_stick,
    the_reaper_fails_lost_executions_and_voids_their_leases,
    failures_are_retried_per_policy_but_stops_are_not,
    manual_retry_stops_an_active_execution_and_links_both,
    listing_pages_newest_first_with_filters,
    deleting_a_workflow_cascades,
    concurrent_writes_all_commit,
    logs_page_and_tail,
    api_keys_and_settings,
    secrets_are_stored_sealed_and_listed_without_values,
    concurrent_log_appends_are_numbered_without_gaps,
    artifacts_are_indexed_and_a_video_is_the_executions_video,
    stats_count_finished_executions_per_workflow,
}

async fn workflow(store: &dyn Store, slug: &str, concurrency: Option<i64>) -> WorkflowRecord {
    store
        .create_workflow(NewWorkflow {
            uuid: Uuid::now_v7(),
            version_uuid: Uuid::now_v7(),
            name: format!("Workflow {slug}"),
            slug: slug.into(),
            description: String::new(),
            specification: json!({"steps": [{"shell": "true"}], "concurrency": concurrency}),
        })
        .await
        .unwrap()
}

fn limits(concurrency: Option<i64>, retry_attempts: i64) -> ExecutionLimits {
    ExecutionLimits { timeout_ms: 60_000, retry_attempts, concurrency }
}

async fn execute(store: &dyn Store, wf: &WorkflowRecord, limits: ExecutionLimits) -> ExecutionRecord {
    store
        .create_execution(NewExecution {
            uuid: Uuid::now_v7(),
            workflow_uuid: wf.uuid,
            version_uuid: wf.current_version_uuid,
            input_payload: json!({"n": 1}),
            warnings: vec![],
            limits,
        })
        .await
        .unwrap()
}

fn log(msg: &str) -> NewLogEntry {
    NewLogEntry::new(LogKind::Log, LogLevel::Info, msg)
}

async fn workflows_have_immutable_versions(t: TestStore) {
    let s = t.store.as_ref();
    let wf = workflow(s, "invoices", None).await;
    assert_eq!(wf.current_version, 1);
    assert_eq!(s.get_workflow("invoices").await.unwrap().uuid, wf.uuid);
    assert_eq!(s.get_workflow(&wf.uuid.to_string()).await.unwrap().slug, "invoices");

    // Same specification: no new version.
    let same = s
        .update_workflow(
            wf.uuid,
            WorkflowPatch {
                specification: Some(wf.specification.clone()),
                new_version_uuid: Uuid::now_v7(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(same.current_version, 1);

    let v2 = s
        .update_workflow(
            wf.uuid,
            WorkflowPatch {
                specification: Some(json!({"steps": [{"shell": "false"}]})),
                name: Some("Renamed".into()),
                new_version_uuid: Uuid::now_v7(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(v2.current_version, 2);
    assert_eq!(v2.name, "Renamed");
    let versions = s.list_versions(wf.uuid).await.unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0].specification, wf.specification, "version 1 is unchanged");
    assert!(!versions[0].is_current && versions[1].is_current);
    let v1 = s.get_version(wf.uuid, VersionRef::Number(1)).await.unwrap();
    assert_eq!(v1.uuid, wf.current_version_uuid);

    let err = s
        .create_workflow(NewWorkflow {
            uuid: Uuid::now_v7(),
            version_uuid: Uuid::now_v7(),
            name: "dup".into(),
            slug: "invoices".into(),
            description: String::new(),
            specification: json!({}),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(matches!(s.get_workflow("nope").await, Err(StoreError::NotFound(_))));
}

async fn executions_are_queued_and_claimed_in_fifo_order(t: TestStore) {
    let s = t.store.as_ref();
    let wf = workflow(s, "fifo", None).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let e = execute(s, &wf, limits(None, 0)).await;
        assert_eq!(e.status, ExecutionStatus::Queued);
        assert!(e.queued_at.is_some());
        ids.push(e.uuid);
    }
    let first = s.claim_executions("node-a", 2, 30_000).await.unwrap();
    let second = s.claim_executions("node-b", 10, 30_000).await.unwrap();
    let order: Vec<Uuid> = first.iter().chain(second.iter()).map(|c| c.record.uuid).collect();
    assert_eq!(order, ids);
    assert!(first.iter().all(|c| c.record.status == ExecutionStatus::Running && c.record.started_at.is_some()));
    assert!(s.claim_executions("node-c", 10, 30_000).await.unwrap().is_empty(), "nothing is claimed twice");
    assert_eq!(first[0].specification, wf.specification);
}

async fn per_workflow_concurrency_is_respected_within_and_across_claims(t: TestStore) {
    let s = t.store.as_ref();
    let capped = workflow(s, "capped", Some(2)).await;
    let free = workflow(s, "free", None).await;
    for _ in 0..5 {
        execute(s, &capped, limits(Some(2), 0)).await;
    }
    let other = execute(s, &free, limits(None, 0)).await;
    let claimed = s.claim_executions("n", 10, 30_000).await.unwrap();
    let capped_claimed: Vec<_> = claimed.iter().filter(|c| c.record.workflow_uuid == capped.uuid).collect();
    assert_eq!(capped_claimed.len(), 2);
    assert!(claimed.iter().any(|c| c.record.uuid == other.uuid), "a capped workflow does not block others");
    assert!(s.claim_executions("n", 10, 30_000).await.unwrap().is_empty());

    // Finishing one frees one slot.
    let lease = capped_claimed[0].lease.clone();
    s.finish_execution(&lease, Finish { error: None, output: None, progress: Progress::default() }).await.unwrap();
    assert_eq!(s.claim_executions("n", 10, 30_000).await.unwrap().len(), 1);
}

async fn writes_need_the_lease_and_terminal_statuses_stick(t: TestStore) {
    let s = t.store.as_ref();
    let wf = workflow(s, "lease", None).await;
    let e = execute(s, &wf, limits(None, 0)).await;
    let claimed = s.claim_executions("node-a", 1, 30_000).await.unwrap().remove(0);
    let lease = claimed.lease.clone();

    let seqs = s
        .append_progress(&lease, Progress { entries: vec![log("one"), log("two")], add_steps: 1, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(seqs, vec![3, 4], "1 = queued, 2 = running");
    assert_eq!(s.get_execution(e.uuid).await.unwrap().n_steps, 1);

    let forged = Lease { owner: "node-b".into(), ..lease.clone() };
    assert!(matches!(
        s.append_progress(&forged, Progress { entries: vec![log("x")], ..Default::default() }).await,
        Err(StoreError::LeaseLost)
    ));
    let stale = Lease { token: lease.token + 1, ..lease.clone() };
    assert!(matches!(s.heartbeat(&stale, 1000).await, Err(StoreError::LeaseLost)));

    // A stop wins; the worker's later "completed" does not overwrite it,
    // but its output and logs are still kept.
    let stopped = s.fail_execution(e.uuid, ExecutionError::new(ErrorCode::Stopped, "stopped by user")).await.unwrap();
    assert_eq!(stopped.status, ExecutionStatus::Failed);
    assert_eq!(s.heartbeat(&lease, 30_000).await.unwrap(), ExecutionStatus::Failed, "the worker learns of the stop");
    let outcome = s
        .finish_execution(&lease, Finish { error: None, output: Some(json!({"a": 1})), progress: Progress::default() })
        .await
        .unwrap();
    assert!(!outcome.changed_status);
    assert_eq!(outcome.record.status, ExecutionStatus::Failed);
    assert_eq!(outcome.record.error.unwrap().code, ErrorCode::Stopped);
    assert_eq!(outcome.record.output, Some(json!({"a": 1})));
    assert!(matches!(
        s.fail_execution(e.uuid, ExecutionError::new(ErrorCode::Stopped, "again")).await,
        Err(StoreError::Transition(_))
    ));
}

async fn the_reaper_fails_lost_executions_and_voids_their_leases(t: TestStore) {
    let s = t.store.as_ref();
    let wf = workflow(s, "reap", None).await;
    let e = execute(s, &wf, limits(None, 0)).await;
    let lease = s.claim_executions("dead-node", 1, 30_000).await.unwrap().remove(0).lease;

    // Not expired, same owner: nothing to reap.
    assert!(s.reap_lost_executions(flywheel_model::time::now_ms(), Some("dead-node")).await.unwrap().is_empty());
    // A new process owns the data dir: everything of others is orphaned.
    let reaped = s.reap_lost_executions(flywheel_model::time::now_ms(), Some("new-node")).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].record.uuid, e.uuid);
    assert_eq!(reaped[0].record.error.as_ref().unwrap().code, ErrorCode::WorkerLost);
    assert!(matches!(
        s.append_progress(&lease, Progress { entries: vec![log("late")], ..Default::default() }).await,
        Err(StoreError::LeaseLost)
    ));

    // Expired leases are reaped by time.
    let e2 = execute(s, &wf, limits(None, 0)).await;
    s.claim_executions("slow-node", 1, 10).await.unwrap();
    let reaped = s.reap_lost_executions(flywheel_model::time::now_ms() + 1_000, None).await.unwrap();
    assert_eq!(reaped.iter().map(|o| o.record.uuid).collect::<Vec<_>>(), vec![e2.uuid]);
}

async fn failures_are_retried_per_policy_but_stops_are_not(t: TestStore) {
    let s = t.store.as_ref();
    let wf = workflow(s, "retry", None).await;
    let e = execute(s, &wf, limits(None, 1)).await;
    let lease = s.claim_executions("n", 1, 30_000).await.unwrap().remove(0).lease;
    let failed = s
        .finish_execution(
            &lease,
            Finish {
                error: Some(ExecutionError::new(ErrorCode::StepFailed, "boom")),
                output: None,
                progress: Progress::default(),
            },
        )
        .await
        .unwrap();
    let retry = failed.retry.expect("one automatic retry");
    assert_eq!(failed.record.retried_by, Some(retry));
    let second = s.get_execution(retry).await.unwrap();
    assert_eq!((second.attempt, second.retry_of, second.status), (2, Some(e.uuid), ExecutionStatus::Queued));
    assert_eq!(second.input_payload, e.input_payload);
    assert_eq!(second.workflow_version_uuid, e.workflow_version_uuid);

    let lease = s.claim_executions("n", 1, 30_000).await.unwrap().remove(0).lease;
    let failed = s
        .finish_execution(
            &lease,
            Finish {
                error: Some(ExecutionError::new(ErrorCode::StepFailed, "boom")),
                output: None,
                progress: Progress::default(),
            },
        )
        .await
        .unwrap();
    assert!(failed.retry.is_none(), "retry_attempts: 1 allows one retry only");

    let e3 = execute(s, &wf, limits(None, 3)).await;
    s.claim_executions("n", 1, 30_000).await.unwrap();
    s.fail_execution(e3.uuid, ExecutionError::new(ErrorCode::Stopped, "stop")).await.unwrap();
    assert!(s.get_execution(e3.uuid).await.unwrap().retried_by.is_none(), "a stop is never retried automatically");
}

async fn manual_retry_stops_an_active_execution_and_links_both(t: TestStore) {
    let s = t.store.as_ref();
    let wf = workflow(s, "manual", None).await;
    let e = execute(s, &wf, limits(None, 0)).await;
    s.claim_executions("n", 1, 30_000).await.unwrap();
    let outcome = s.retry_execution(e.uuid).await.unwrap();
    assert!(outcome.stopped_old);
    assert_eq!(outcome.old.status, ExecutionStatus::Failed);
    assert_eq!(outcome.old.error.as_ref().unwrap().code, ErrorCode::Stopped);
    assert_eq!(outcome.old.retried_by, Some(outcome.new.uuid));
    assert_eq!(outcome.new.retry_of, Some(e.uuid));
    assert_eq!(outcome.new.attempt, 2);
    assert!(matches!(s.retry_execution(e.uuid).await, Err(StoreError::Conflict(_))));
}

async fn listing_pages_newest_first_with_filters(t: TestStore) {
    let s = t.store.as_ref();
    let a = workflow(s, "a", None).await;
    let b = workflow(s, "b", None).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(execute(s, if i % 2 == 0 { &a } else { &b }, limits(None, 0)).await.uuid);
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.list_executions(ExecutionFilter::default(), Page { limit: 3, cursor }).await.unwrap();
        seen.extend(page.items.iter().map(|e| e.uuid));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
    let only_a = s
        .list_executions(
            ExecutionFilter { workflow_uuid: Some(a.uuid), ..Default::default() },
            Page { limit: 50, cursor: None },
        )
        .await
        .unwrap();
    assert_eq!(only_a.items.len(), 4);
    let running = s
        .list_executions(
            ExecutionFilter { status: Some(ExecutionStatus::Running), ..Default::default() },
            Page { limit: 50, cursor: None },
        )
        .await
        .unwrap();
    assert!(running.items.is_empty());
    // Created at or after a moment: the last three.
    let third_newest = s.get_execution(ids[2]).await.unwrap().created_at;
    let recent = s
        .list_executions(
            ExecutionFilter { created_after: Some(third_newest), ..Default::default() },
            Page { limit: 50, cursor: None },
        )
        .await
        .unwrap();
    assert!(recent.items.iter().all(|e| e.created_at >= third_newest));
    assert!(recent.items.iter().any(|e| e.uuid == ids[2]));
    let future = flywheel_model::time::now_ms() + 60_000;
    let none = s
        .list_executions(
            ExecutionFilter { created_after: Some(future), ..Default::default() },
            Page { limit: 50, cursor: None },
        )
        .await
        .unwrap();
    assert!(none.items.is_empty());
    assert!(matches!(
        s.list_executions(ExecutionFilter::default(), Page { limit: 3, cursor: Some("garbage".into()) }).await,
        Err(StoreError::Invalid(_))
    ));
    let wf = s.get_workflow("a").await.unwrap();
    assert_eq!(wf.stats.executions, 4);
}

async fn deleting_a_workflow_cascades(t: TestStore) {
    let s = t.store.as_ref();
    let wf = workflow(s, "gone", None).await;
    let e = execute(s, &wf, limits(None, 0)).await;
    let deleted = s.delete_workflow(wf.uuid).await.unwrap();
    assert_eq!(deleted, vec![e.uuid]);
    assert!(matches!(s.get_execution(e.uuid).await, Err(StoreError::NotFound(_))));
    assert!(matches!(s.list_versions(wf.uuid).await, Err(StoreError::NotFound(_))));
    assert!(s.list_logs(e.uuid, 0, 100).await.unwrap().is_empty());
}

async fn concurrent_writes_all_commit(t: TestStore) {
    let wf = workflow(t.store.as_ref(), "burst", None).await;
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let store = t.store.clone();
        let wf = wf.clone();
        tasks.push(tokio::spawn(async move { execute(store.as_ref(), &wf, limits(None, 0)).await.uuid }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    for id in ids {
        assert_eq!(t.store.get_execution(id).await.unwrap().status, ExecutionStatus::Queued);
    }
    let counts = t.store.count_executions_by_status().await.unwrap();
    assert_eq!(counts, vec![(ExecutionStatus::Queued, 500)]);
}

async fn logs_page_and_tail(t: TestStore) {
    let s = t.store.as_ref();
    let wf = workflow(s, "logs", None).await;
    let e = execute(s, &wf, limits(None, 0)).await;
    let lease = s.claim_executions("n", 1, 30_000).await.unwrap().remove(0).lease;
    let entries = (0..10).map(|i| log(&format!("line {i}"))).collect();
    s.append_progress(&lease, Progress { entries, ..Default::default() }).await.unwrap();
    let page = s.list_logs(e.uuid, 2, 5).await.unwrap();
    assert_eq!(page.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![3, 4, 5, 6, 7]);
    assert_eq!(page[0].message, "line 0");
    let tail = s.tail_logs(e.uuid, 3).await.unwrap();
    assert_eq!(s.get_execution(e.uuid).await.unwrap().log_count, 12);
    let (record, with_logs) = s.get_execution_with_logs(e.uuid, 3).await.unwrap();
    assert_eq!(record.uuid, e.uuid);
    assert_eq!(with_logs, tail, "the same entries either way");
    assert_eq!(with_logs[0].message, "line 7");
    assert_eq!(tail.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![10, 11, 12]);
}

async fn api_keys_and_settings(t: TestStore) {
    let s = t.store.as_ref();
    assert_eq!(s.count_api_keys().await.unwrap(), 0);
    let key = NewApiKey {
        id: Uuid::now_v7(),
        name: "admin".into(),
        key_hash: "abc".into(),
        prefix: "fw_12".into(),
        role: "admin".into(),
    };
    assert!(s.ensure_api_key(key.clone()).await.unwrap());
    assert!(!s.ensure_api_key(key).await.unwrap());
    let found = s.find_api_key("abc").await.unwrap().unwrap();
    assert_eq!((found.role.as_str(), found.sessions_not_before), ("admin", 0));
    assert_eq!(s.get_api_key(found.id).await.unwrap().unwrap().prefix, found.prefix, "found by id too");
    assert!(s.get_api_key(Uuid::now_v7()).await.unwrap().is_none());
    s.end_sessions(found.id, 1_000).await.unwrap();
    s.end_sessions(found.id, 500).await.unwrap();
    assert_eq!(s.find_api_key("abc").await.unwrap().unwrap().sessions_not_before, 1_000, "never moves back");
    assert!(s.find_api_key("nope").await.unwrap().is_none());
    assert_eq!(s.setting_or_init("secret", "one").await.unwrap(), "one");
    assert_eq!(s.setting_or_init("secret", "two").await.unwrap(), "one");
}

async fn secrets_are_stored_sealed_and_listed_without_values(t: TestStore) {
    use flywheel_store::secrets::Sealed;
    let s = t.store.as_ref();
    let sealed = Sealed { nonce: vec![1; 12], ciphertext: vec![9, 9, 9] };
    assert!(s.put_secret("TOKEN", sealed.clone()).await.unwrap());
    let replaced = Sealed { nonce: vec![2; 12], ciphertext: vec![8] };
    assert!(!s.put_secret("TOKEN", replaced.clone()).await.unwrap(), "a second put replaces");
    s.put_secret("OTHER", sealed.clone()).await.unwrap();
    let names: Vec<String> = s.list_secrets().await.unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["OTHER", "TOKEN"]);
    let got = s.get_secrets(&["TOKEN".into(), "MISSING".into()]).await.unwrap();
    assert_eq!(got, vec![("TOKEN".to_owned(), replaced)]);
    s.delete_secret("TOKEN").await.unwrap();
    assert!(matches!(s.delete_secret("TOKEN").await, Err(StoreError::NotFound(_))));
}

async fn concurrent_log_appends_are_numbered_without_gaps(t: TestStore) {
    let wf = workflow(t.store.as_ref(), "numbered", None).await;
    let e = execute(t.store.as_ref(), &wf, limits(None, 0)).await;
    let lease = t.store.claim_executions("n", 1, 30_000).await.unwrap().remove(0).lease;
    let mut tasks = Vec::new();
    for task in 0..20 {
        let (store, lease) = (t.store.clone(), lease.clone());
        tasks.push(tokio::spawn(async move {
            let entries = (0..3).map(|i| log(&format!("task {task} line {i}"))).collect();
            let seqs = store.append_progress(&lease, Progress { entries, add_steps: 1, ..Default::default() }).await;
            seqs.unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        let mine = task.await.unwrap();
        assert!(mine.windows(2).all(|w| w[1] == w[0] + 1), "one append gets consecutive numbers: {mine:?}");
        seqs.extend(mine);
    }
    seqs.sort();
    assert_eq!(seqs, (3..63).collect::<Vec<i64>>(), "1 = queued, 2 = running, then no gaps and no repeats");
    let record = t.store.get_execution(e.uuid).await.unwrap();
    assert_eq!((record.log_count, record.n_steps), (62, 20));
    let all = t.store.list_logs(e.uuid, 0, 100).await.unwrap();
    assert_eq!(all.iter().map(|l| l.seq).collect::<Vec<_>>(), (1..63).collect::<Vec<i64>>());
}

async fn artifacts_are_indexed_and_a_video_is_the_executions_video(t: TestStore) {
    let s = t.store.as_ref();
    let wf = workflow(s, "artifacts", None).await;
    let e = execute(s, &wf, limits(None, 0)).await;
    let lease = s.claim_executions("n", 1, 30_000).await.unwrap().remove(0).lease;
    let artifact = |name: &str, kind: &str, size| NewArtifact {
        execution: e.uuid,
        name: name.into(),
        kind: kind.into(),
        content_type: "application/octet-stream".into(),
        size,
    };
    s.add_artifact(&lease, artifact("report.pdf", "file", 10)).await.unwrap();
    s.add_artifact(&lease, artifact("report.pdf", "file", 20)).await.unwrap();
    s.add_artifact(&lease, artifact("screen.mp4", "video", 30)).await.unwrap();
    let names: Vec<(String, i64)> =
        s.list_artifacts(e.uuid).await.unwrap().into_iter().map(|a| (a.name, a.size)).collect();
    assert_eq!(names, [("report.pdf".to_owned(), 20), ("screen.mp4".to_owned(), 30)], "a second add replaces");
    assert_eq!(s.get_artifact(e.uuid, "screen.mp4").await.unwrap().kind, "video");
    assert!(matches!(s.get_artifact(e.uuid, "nope").await, Err(StoreError::NotFound(_))));
    assert_eq!(s.get_execution(e.uuid).await.unwrap().video.as_deref(), Some("screen.mp4"));
    let stale = Lease { token: lease.token + 1, ..lease };
    assert!(matches!(s.add_artifact(&stale, artifact("late", "file", 1)).await, Err(StoreError::LeaseLost)));
}

async fn stats_count_finished_executions_per_workflow(t: TestStore) {
    let s = t.store.as_ref();
    let wf = workflow(s, "stats", None).await;
    let done = execute(s, &wf, limits(None, 0)).await;
    let lease = s.claim_executions("n", 1, 30_000).await.unwrap().remove(0).lease;
    let progress = Progress { add_input_tokens: 7, add_output_tokens: 3, ..Default::default() };
    let outcome = s
        .finish_execution(&lease, Finish { error: None, output: Some(json!({"b": 1, "a": 2})), progress })
        .await
        .unwrap();
    assert!(outcome.changed_status);
    let record = s.get_execution(done.uuid).await.unwrap();
    assert_eq!(record.status, ExecutionStatus::Completed);
    assert_eq!((record.input_tokens, record.output_tokens), (7, 3));
    assert_eq!(serde_json::to_string(&record.output).unwrap(), r#"{"b":1,"a":2}"#, "JSON comes back as written");
    assert!(record.duration_ms().is_some());
    let stopped = execute(s, &wf, limits(None, 0)).await;
    s.fail_execution(stopped.uuid, ExecutionError::new(ErrorCode::Stopped, "queued, then stopped")).await.unwrap();
    assert_eq!(s.active_executions_of(wf.uuid).await.unwrap(), Vec::<Uuid>::new());
    let stats = s.get_workflow("stats").await.unwrap().stats;
    assert_eq!((stats.executions, stats.completed, stats.failed), (2, 1, 1));
    assert!(stats.last_run.is_some());
    let mut counts = s.count_executions_by_status().await.unwrap();
    counts.sort_by_key(|(status, _)| status.as_str());
    assert_eq!(counts, vec![(ExecutionStatus::Completed, 1), (ExecutionStatus::Failed, 1)]);
}

/// What only a networked backend has to get right: several processes (here:
/// several stores, each with its own pool) on one database, and the
/// notifications that let them react to each other.
#[cfg(feature = "postgres")]
mod postgres_only {
    use super::*;
    use flywheel_store::postgres::{PostgresStore, LOGS_CHANNEL, QUEUED_CHANNEL, STOP_CHANNEL};
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    use std::time::Duration;

    const EXECUTIONS: usize = 200;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_processes_claim_every_execution_once_within_concurrency() {
        let db = postgres_server::fresh_database().await;
        // Both start at once: the migrations run once, under sqlx's lock.
        let (first, second) = tokio::join!(PostgresStore::connect(&db.url), PostgresStore::connect(&db.url));
        let stores: [Arc<dyn Store>; 2] = [Arc::new(first.unwrap()), Arc::new(second.unwrap())];
        let capped = [
            workflow(stores[0].as_ref(), "capped-one", Some(2)).await,
            workflow(stores[1].as_ref(), "capped-two", Some(2)).await,
        ];
        let free = workflow(stores[0].as_ref(), "free", None).await;
        let mut queued = HashSet::new();
        for i in 0..EXECUTIONS {
            let (wf, concurrency) = match i % 3 {
                0 => (&capped[0], Some(2)),
                1 => (&capped[1], Some(2)),
                _ => (&free, None),
            };
            queued.insert(execute(stores[i % 2].as_ref(), wf, limits(concurrency, 0)).await.uuid);
        }
        let capped_ids: HashSet<Uuid> = capped.iter().map(|wf| wf.uuid).collect();

        let claimed = Arc::new(Mutex::new(Vec::new()));
        // Executions claimed and not yet finished, per workflow: a subset of
        // what the database counts as running, so never above the limit.
        let in_flight: Arc<Mutex<HashMap<Uuid, i64>>> = Arc::default();
        let mut workers = Vec::new();
        for worker in 0..8 {
            let store = stores[worker % 2].clone();
            let (claimed, in_flight, capped_ids) = (claimed.clone(), in_flight.clone(), capped_ids.clone());
            workers.push(tokio::spawn(async move {
                let owner = format!("process-{}-worker-{worker}", worker % 2);
                while claimed.lock().unwrap().len() < EXECUTIONS {
                    let batch = store.claim_executions(&owner, 3, 60_000).await.unwrap();
                    if batch.is_empty() {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                    for c in &batch {
                        claimed.lock().unwrap().push(c.record.uuid);
                        let mut in_flight = in_flight.lock().unwrap();
                        let n = in_flight.entry(c.record.workflow_uuid).or_default();
                        *n += 1;
                        if capped_ids.contains(&c.record.workflow_uuid) {
                            assert!(*n <= 2, "{n} executions of a workflow with concurrency 2 run at once");
                        }
                    }
                    for wf in &capped_ids {
                        let running = store
                            .list_executions(
                                ExecutionFilter {
                                    workflow_uuid: Some(*wf),
                                    status: Some(ExecutionStatus::Running),
                                    ..Default::default()
                                },
                                Page { limit: 50, cursor: None },
                            )
                            .await
                            .unwrap();
                        assert!(running.items.len() <= 2, "the database has {} running", running.items.len());
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    for c in batch {
                        *in_flight.lock().unwrap().get_mut(&c.record.workflow_uuid).unwrap() -= 1;
                        let done = Finish { error: None, output: None, progress: Progress::default() };
                        assert!(store.finish_execution(&c.lease, done).await.unwrap().changed_status);
                    }
                }
            }));
        }
        tokio::time::timeout(Duration::from_secs(120), async {
            for worker in workers {
                worker.await.unwrap();
            }
        })
        .await
        .expect("the workers claim everything within two minutes");

        let claimed = claimed.lock().unwrap().clone();
        let unique: HashSet<Uuid> = claimed.iter().copied().collect();
        assert_eq!(claimed.len(), EXECUTIONS, "no execution is claimed twice");
        assert_eq!(unique, queued, "every queued execution is claimed");
        let counts = stores[1].count_executions_by_status().await.unwrap();
        assert_eq!(counts, vec![(ExecutionStatus::Completed, EXECUTIONS as i64)]);
    }

    /// Waits for a notification on `channel` about `execution`, skipping others.
    async fn expect_notification(listener: &mut sqlx::postgres::PgListener, channel: &str, execution: Uuid) {
        let wanted = execution.to_string();
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let note = listener.recv().await.unwrap();
                if note.channel() == channel && note.payload() == wanted {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {channel} notification for {execution}"));
    }

    #[tokio::test]
    async fn notifications_announce_queued_stopped_and_logged_executions() {
        let db = postgres_server::fresh_database().await;
        let store = PostgresStore::connect(&db.url).await.unwrap();
        let other_process = PostgresStore::connect(&db.url).await.unwrap();
        let mut listener = other_process.listen().await.unwrap();
        let wf = workflow(&store, "notify", None).await;

        let e = execute(&store, &wf, limits(None, 1)).await;
        expect_notification(&mut listener, QUEUED_CHANNEL, e.uuid).await;
        let lease = store.claim_executions("n", 1, 30_000).await.unwrap().remove(0).lease;
        store.append_progress(&lease, Progress { entries: vec![log("hello")], ..Default::default() }).await.unwrap();
        expect_notification(&mut listener, LOGS_CHANNEL, e.uuid).await;

        // A failure retried by policy queues the retry.
        let failed = store
            .finish_execution(
                &lease,
                Finish {
                    error: Some(ExecutionError::new(ErrorCode::StepFailed, "boom")),
                    output: None,
                    progress: Progress::default(),
                },
            )
            .await
            .unwrap();
        let retry = failed.retry.unwrap();
        expect_notification(&mut listener, QUEUED_CHANNEL, retry).await;

        // Stopping the retry, and retrying an active execution by hand, stop it.
        store.claim_executions("n", 1, 30_000).await.unwrap();
        store.fail_execution(retry, ExecutionError::new(ErrorCode::Stopped, "stop")).await.unwrap();
        expect_notification(&mut listener, STOP_CHANNEL, retry).await;
        let active = execute(&store, &wf, limits(None, 0)).await;
        store.claim_executions("n", 1, 30_000).await.unwrap();
        let outcome = store.retry_execution(active.uuid).await.unwrap();
        expect_notification(&mut listener, STOP_CHANNEL, active.uuid).await;
        expect_notification(&mut listener, QUEUED_CHANNEL, outcome.new.uuid).await;
    }

    #[tokio::test]
    async fn the_reaper_of_one_process_retries_what_another_lost() {
        let db = postgres_server::fresh_database().await;
        let (first, second) = tokio::join!(PostgresStore::connect(&db.url), PostgresStore::connect(&db.url));
        let (first, second) = (first.unwrap(), second.unwrap());
        let wf = workflow(&first, "reaped", None).await;
        let e = execute(&first, &wf, limits(None, 1)).await;
        let lease = first.claim_executions("dies", 1, 10).await.unwrap().remove(0).lease;
        let later = flywheel_model::time::now_ms() + 1_000;
        // Two reapers at once: each lost execution is failed (and retried) once.
        let (a, b) = tokio::join!(second.reap_lost_executions(later, None), first.reap_lost_executions(later, None));
        let outcomes: Vec<FinishOutcome> = a.unwrap().into_iter().chain(b.unwrap()).collect();
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].record.uuid, e.uuid);
        let retry = outcomes[0].retry.expect("retried per policy");
        assert_eq!(first.get_execution(retry).await.unwrap().status, ExecutionStatus::Queued);
        assert!(matches!(first.heartbeat(&lease, 30_000).await, Err(StoreError::LeaseLost)));
    }
}
