//! The saga runner through the pipeline, on the in-memory store, SQLite and
//! (with TEST_DATABASE_URL) PostgreSQL.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use orchestrator::store::{MessageKey, StepStatus};
use orchestrator::testing::{self, TestDb};
use orchestrator::{
    ActionError, DeadLetterQueue, ExecutorRegistry, HandlerRegistry, MemoryStore, Orchestrator, Outcome,
    PipelineConfig, SqlStore, Store,
};

struct Backend {
    label: &'static str,
    store: Arc<dyn Store>,
    dlq: Arc<dyn DeadLetterQueue>,
    _db: Option<TestDb>,
}

async fn backends() -> Vec<Backend> {
    let memory = Arc::new(MemoryStore::new());
    let mut backends = vec![Backend { label: "memory", store: memory.clone(), dlq: memory, _db: None }];
    for db in testing::databases().await {
        let sql = Arc::new(SqlStore::new(db.db.clone()));
        backends.push(Backend { label: db.label, store: sql.clone(), dlq: sql, _db: Some(db) });
    }
    backends
}

fn statuses(steps: &[orchestrator::store::StepRecord], index: u32) -> Vec<StepStatus> {
    steps.iter().filter(|s| s.step_index == index).map(|s| s.status).collect()
}

fn key(message_id: &str) -> MessageKey {
    MessageKey::new("default", message_id)
}

#[tokio::test]
async fn all_steps_succeed_in_order_and_are_logged() {
    for b in backends().await {
        let log = CallLog::default();
        let executors = ["a", "b", "c"].iter().fold(ExecutorRegistry::new(), |r, n| r.with(Scripted::new(n, &log)));
        let orch = orchestrator(b.store.clone(), HandlerRegistry::new(plan(&["a", "b", "c"])), executors);
        let Outcome::Completed(done) = orch.process(incoming("m1", order_intent())).await.unwrap() else {
            panic!("{}: expected completion", b.label)
        };
        assert_eq!(done.steps.len(), 3, "{}", b.label);
        assert!(done.steps.iter().all(|s| !s.resumed), "{}", b.label);
        assert_eq!(log.entries(), ["execute a", "execute b", "execute c"], "{}", b.label);
        let steps = b.store.load_steps(&key("m1"), 1).await.unwrap();
        for index in 0..3 {
            assert_eq!(statuses(&steps, index), [StepStatus::Started, StepStatus::Succeeded], "{}", b.label);
        }
    }
}

#[tokio::test]
async fn failure_at_step_2_of_3_compensates_step_1_only() {
    for b in backends().await {
        let log = CallLog::default();
        let executors = ExecutorRegistry::new()
            .with(Scripted::new("a", &log))
            .with(Scripted::new("b", &log).always_failing(ActionError::permanent("card declined")))
            .with(Scripted::new("c", &log));
        let orch = orchestrator(b.store.clone(), HandlerRegistry::new(plan(&["a", "b", "c"])), executors);
        let outcome = orch.process(incoming("m2", order_intent())).await.unwrap();
        assert!(
            matches!(outcome, Outcome::DeadLettered(_)),
            "{}: permanent failure goes to the DLQ: {outcome:?}",
            b.label
        );
        assert_eq!(log.entries(), ["execute a", "execute b", "compensate a"], "{}", b.label);
        let steps = b.store.load_steps(&key("m2"), 1).await.unwrap();
        assert_eq!(
            statuses(&steps, 0),
            [StepStatus::Started, StepStatus::Succeeded, StepStatus::Compensated],
            "{}",
            b.label
        );
        assert_eq!(statuses(&steps, 1), [StepStatus::Started, StepStatus::Failed], "{}", b.label);
        assert!(statuses(&steps, 2).is_empty(), "{}: step 3 must not start", b.label);
    }
}

#[tokio::test]
async fn compensation_runs_in_reverse_order() {
    for b in backends().await {
        let log = CallLog::default();
        let executors = ExecutorRegistry::new()
            .with(Scripted::new("a", &log))
            .with(Scripted::new("b", &log))
            .with(Scripted::new("c", &log).always_failing(ActionError::permanent("no")));
        let orch = orchestrator(b.store.clone(), HandlerRegistry::new(plan(&["a", "b", "c"])), executors);
        orch.process(incoming("m3", order_intent())).await.unwrap();
        assert_eq!(
            log.entries(),
            ["execute a", "execute b", "execute c", "compensate b", "compensate a"],
            "{}",
            b.label
        );
    }
}

#[tokio::test]
async fn compensation_failure_is_recorded_and_surfaces_in_the_dlq() {
    for b in backends().await {
        let log = CallLog::default();
        let executors = ExecutorRegistry::new()
            .with(Scripted::new("a", &log).compensation_failing(ActionError::retryable("refund API down")))
            .with(Scripted::new("b", &log).always_failing(ActionError::retryable("timeout")));
        let orch = orchestrator(b.store.clone(), HandlerRegistry::new(plan(&["a", "b"])), executors);
        let outcome = orch.process(incoming("m4", order_intent())).await.unwrap();
        // Retryable, but a half-undone saga is not retried blindly.
        let Outcome::DeadLettered(dead) = outcome else { panic!("{}: expected DLQ, got {outcome:?}", b.label) };
        assert!(dead.reason.contains("compensation failed"), "{}: {}", b.label, dead.reason);
        assert!(dead.reason.contains("refund API down"), "{}: {}", b.label, dead.reason);
        let entry = b.dlq.get(dead.dlq_id).await.unwrap().expect("dlq row");
        assert_eq!(entry.error, dead.reason, "{}", b.label);
        let steps = b.store.load_steps(&key("m4"), 1).await.unwrap();
        let failed = steps.iter().find(|s| s.status == StepStatus::CompensationFailed).expect("recorded");
        assert_eq!((failed.step_index, failed.error.as_deref()), (0, Some("refund API down")), "{}", b.label);
    }
}

#[tokio::test]
async fn a_run_interrupted_after_step_1_resumes_without_executing_it_again() {
    for b in backends().await {
        let log = CallLog::default();
        let executors = || {
            ExecutorRegistry::new()
                .with(Scripted::new("a", &log))
                .with(Scripted::new("b", &log).hanging_once())
                .with(Scripted::new("c", &log))
        };
        let first = orchestrator(b.store.clone(), HandlerRegistry::new(plan(&["a", "b", "c"])), executors());
        // The worker "dies" in the middle of step 2: its future is dropped.
        crash_when_logged(first, incoming("m5", order_intent()), &log, 2).await;

        // A new worker (fresh executors, same store) gets the redelivery once the lease ran out.
        let log_before = log.entries();
        assert_eq!(log_before, ["execute a", "execute b"], "{}", b.label);
        tokio::time::sleep(fast_config().claim_lease + Duration::from_millis(50)).await;
        let second = orchestrator(b.store.clone(), HandlerRegistry::new(plan(&["a", "b", "c"])), {
            ExecutorRegistry::new()
                .with(Scripted::new("a", &log))
                .with(Scripted::new("b", &log))
                .with(Scripted::new("c", &log))
        });
        let Outcome::Completed(done) = second.process(incoming("m5", order_intent())).await.unwrap() else {
            panic!("{}: resumed run should complete", b.label)
        };
        assert_eq!(log.count("execute a"), 1, "{}: a succeeded before the crash, it must not run again", b.label);
        assert_eq!(log.count("execute b"), 2, "{}: b never finished, it runs again", b.label);
        assert_eq!(log.count("execute c"), 1, "{}", b.label);
        assert_eq!(done.steps.iter().map(|s| s.resumed).collect::<Vec<_>>(), [true, false, false], "{}", b.label);
        // The resumed run is the same run, so idempotency keys match the first execution's.
        assert_eq!(done.steps[0].output.get("key"), Some(&serde_json::json!("default:m5:1:0")), "{}", b.label);
    }
}

#[tokio::test]
async fn a_run_interrupted_while_compensating_finishes_compensating_on_resume() {
    for b in backends().await {
        let log = CallLog::default();
        let plan3 = || HandlerRegistry::new(plan(&["a", "b", "c"]));
        let first = orchestrator(
            b.store.clone(),
            plan3(),
            ExecutorRegistry::new()
                .with(Scripted::new("a", &log))
                .with(Scripted::new("b", &log).compensation_hanging_once())
                .with(Scripted::new("c", &log).always_failing(ActionError::permanent("rejected"))),
        );
        // c fails, b's compensation hangs: the worker dies with a undone and b half-undone.
        crash_when_logged(first, incoming("m6", order_intent()), &log, 4).await;
        assert_eq!(log.entries(), ["execute a", "execute b", "execute c", "compensate b"], "{}", b.label);

        tokio::time::sleep(fast_config().claim_lease + Duration::from_millis(50)).await;
        let second = orchestrator(
            b.store.clone(),
            plan3(),
            ExecutorRegistry::new()
                .with(Scripted::new("a", &log))
                .with(Scripted::new("b", &log))
                .with(Scripted::new("c", &log)),
        );
        let outcome = second.process(incoming("m6", order_intent())).await.unwrap();
        // The recorded failure stands (permanent): nothing is executed again, compensation completes.
        let Outcome::DeadLettered(dead) = outcome else { panic!("{}: expected DLQ, got {outcome:?}", b.label) };
        assert!(dead.reason.contains("rejected"), "{}: {}", b.label, dead.reason);
        assert_eq!(
            log.entries(),
            ["execute a", "execute b", "execute c", "compensate b", "compensate b", "compensate a"],
            "{}",
            b.label
        );
        let steps = b.store.load_steps(&key("m6"), 1).await.unwrap();
        assert_eq!(statuses(&steps, 0).last(), Some(&StepStatus::Compensated), "{}", b.label);
        assert_eq!(statuses(&steps, 1).last(), Some(&StepStatus::Compensated), "{}", b.label);
    }
}

#[tokio::test]
async fn a_timed_out_step_is_undone_by_key_before_the_earlier_steps() {
    for b in backends().await {
        let log = CallLog::default();
        let orch = Orchestrator::builder()
            .handlers(HandlerRegistry::new(plan(&["a", "b"])))
            .executors(
                ExecutorRegistry::new()
                    .with(Scripted::new("a", &log))
                    .with(Scripted::new("b", &log).taking(Duration::from_secs(5))),
            )
            .store(b.store.clone())
            .config(PipelineConfig { action_timeout: Duration::from_millis(100), ..fast_config() })
            .build()
            .unwrap();
        let outcome = orch.process(incoming("m7", order_intent())).await.unwrap();
        assert!(
            matches!(outcome, Outcome::RetryScheduled { ref reason, .. } if reason.contains("timed out")),
            "{outcome:?}"
        );
        // b may have had its effect before timing out: it is undone (by key), then a.
        assert_eq!(log.entries(), ["execute a", "execute b", "compensate_unknown b", "compensate a"], "{}", b.label);
    }
}

#[tokio::test]
async fn a_changed_plan_compensates_what_the_log_says_ran() {
    for b in backends().await {
        let log = CallLog::default();
        let all = || {
            ExecutorRegistry::new()
                .with(Scripted::new("a", &log))
                .with(Scripted::new("b", &log))
                .with(Scripted::new("c", &log).hanging_once())
                .with(Scripted::new("x", &log))
        };
        let first = orchestrator(b.store.clone(), HandlerRegistry::new(plan(&["a", "b", "c"])), all());
        crash_when_logged(first, incoming("m8", order_intent()), &log, 3).await;
        tokio::time::sleep(fast_config().claim_lease + Duration::from_millis(50)).await;

        // The handler now plans differently for the same message.
        let second = orchestrator(b.store.clone(), HandlerRegistry::new(plan(&["a", "x"])), all());
        let outcome = second.process(incoming("m8", order_intent())).await.unwrap();
        let Outcome::DeadLettered(dead) = outcome else { panic!("{}: expected DLQ, got {outcome:?}", b.label) };
        assert!(dead.reason.contains("was `b` in the saga log but is now `x`"), "{}: {}", b.label, dead.reason);
        // c was started and never finished: undone by key; then b and a from their outputs.
        assert_eq!(
            log.entries(),
            ["execute a", "execute b", "execute c", "compensate_unknown c", "compensate b", "compensate a"],
            "{}",
            b.label
        );
    }
}

#[tokio::test]
async fn a_message_that_keeps_killing_its_worker_ends_in_the_dlq() {
    for b in backends().await {
        let log = CallLog::default();
        let worker = || {
            orchestrator(
                b.store.clone(),
                HandlerRegistry::new(plan(&["a"])),
                ExecutorRegistry::new().with(Scripted::new("a", &log).hanging_always()),
            )
        };
        let mut message = incoming("m9", order_intent());
        message.max_attempts = Some(2);
        for crash in 1..=2 {
            crash_when_logged(worker(), message.clone(), &log, crash).await;
            tokio::time::sleep(fast_config().claim_lease + Duration::from_millis(50)).await;
        }
        let outcome = worker().process(message).await.unwrap();
        let Outcome::DeadLettered(dead) = outcome else { panic!("{}: expected DLQ, got {outcome:?}", b.label) };
        assert_eq!(dead.failure_type, orchestrator::event::FailureType::UnknownError, "{}", b.label);
        assert!(dead.reason.contains("did not finish"), "{}: {}", b.label, dead.reason);
        assert_eq!(log.count("execute a"), 2, "{}: not run a third time", b.label);
    }
}

#[tokio::test]
async fn a_slow_message_keeps_its_lease_while_it_works() {
    for b in backends().await {
        let log = CallLog::default();
        let worker = || {
            Arc::new(orchestrator(
                b.store.clone(),
                HandlerRegistry::new(plan(&["a"])),
                ExecutorRegistry::new().with(Scripted::new("a", &log).taking(Duration::from_millis(1200))),
            ))
        };
        // The step takes four lease lengths (lease: 300 ms); renewal keeps the claim.
        let slow = worker();
        let running = tokio::spawn(async move { slow.process(incoming("m10", order_intent())).await });
        tokio::time::sleep(Duration::from_millis(700)).await;
        let redelivery = worker().process(incoming("m10", order_intent())).await.unwrap();
        assert!(matches!(redelivery, Outcome::Deferred { .. }), "{}: taken over while alive: {redelivery:?}", b.label);
        assert!(matches!(running.await.unwrap().unwrap(), Outcome::Completed(_)), "{}", b.label);
        assert_eq!(log.count("execute a"), 1, "{}", b.label);
    }
}
