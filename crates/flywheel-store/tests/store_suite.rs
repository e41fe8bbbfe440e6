//! The store test suite: behaviour every `Store` backend must have. Each test
//! runs against a fresh real database file.

use flywheel_model::log::{LogKind, LogLevel, NewLogEntry};
use flywheel_model::{ErrorCode, ExecutionError, ExecutionStatus};
use flywheel_store::records::*;
use flywheel_store::sqlite::{Durability, SqliteStore};
use flywheel_store::{Store, StoreError};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

struct TestStore {
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("flywheel.db"), Durability::Full).await.unwrap();
    TestStore { store: Arc::new(store), _dir: dir }
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

#[tokio::test]
async fn workflows_have_immutable_versions() {
    let t = sqlite().await;
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

#[tokio::test]
async fn executions_are_queued_and_claimed_in_fifo_order() {
    let t = sqlite().await;
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

#[tokio::test]
async fn per_workflow_concurrency_is_respected_within_and_across_claims() {
    let t = sqlite().await;
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

#[tokio::test]
async fn writes_need_the_lease_and_terminal_statuses_stick() {
    let t = sqlite().await;
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

#[tokio::test]
async fn the_reaper_fails_lost_executions_and_voids_their_leases() {
    let t = sqlite().await;
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

#[tokio::test]
async fn failures_are_retried_per_policy_but_stops_are_not() {
    let t = sqlite().await;
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

#[tokio::test]
async fn manual_retry_stops_an_active_execution_and_links_both() {
    let t = sqlite().await;
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

#[tokio::test]
async fn listing_pages_newest_first_with_filters() {
    let t = sqlite().await;
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

#[tokio::test]
async fn deleting_a_workflow_cascades() {
    let t = sqlite().await;
    let s = t.store.as_ref();
    let wf = workflow(s, "gone", None).await;
    let e = execute(s, &wf, limits(None, 0)).await;
    let deleted = s.delete_workflow(wf.uuid).await.unwrap();
    assert_eq!(deleted, vec![e.uuid]);
    assert!(matches!(s.get_execution(e.uuid).await, Err(StoreError::NotFound(_))));
    assert!(matches!(s.list_versions(wf.uuid).await, Err(StoreError::NotFound(_))));
    assert!(s.list_logs(e.uuid, 0, 100).await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_writes_all_commit() {
    let t = sqlite().await;
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

#[tokio::test]
async fn logs_page_and_tail() {
    let t = sqlite().await;
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

#[tokio::test]
async fn api_keys_and_settings() {
    let t = sqlite().await;
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
    s.end_sessions("abc", 1_000).await.unwrap();
    s.end_sessions("abc", 500).await.unwrap();
    assert_eq!(s.find_api_key("abc").await.unwrap().unwrap().sessions_not_before, 1_000, "never moves back");
    assert!(s.find_api_key("nope").await.unwrap().is_none());
    assert_eq!(s.setting_or_init("secret", "one").await.unwrap(), "one");
    assert_eq!(s.setting_or_init("secret", "two").await.unwrap(), "one");
}

#[tokio::test]
async fn secrets_are_stored_sealed_and_listed_without_values() {
    use flywheel_store::secrets::Sealed;
    let t = sqlite().await;
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
