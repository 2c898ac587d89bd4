//! Local executors write in the completion transaction (see
//! `orchestrator::local`), on SQLite and (with TEST_DATABASE_URL) PostgreSQL:
//! no saga-log rows for a plan's trailing local run, a rollback for its
//! failures, the mixed-plan rule, and the in-memory store's fallback.

mod common;

use std::sync::Arc;

use common::*;
use orchestrator::event::FailureType;
use orchestrator::store::{MessageKey, SagaLog, StepStatus};
use orchestrator::testing;
use orchestrator::{
    ActionContext, ActionError, ActionExecutor, ActionOutput, ActionRequest, ExecutorRegistry, HandlerRegistry,
    LocalExecutor, MemoryStore, Outcome, SqlStore, Store, async_trait,
};
use sea_orm::DatabaseTransaction;
use serde_json::json;

/// `create_order` with real items.
fn order() -> ActionRequest {
    ActionRequest::new("create_order", json!({ "items": ["tacos"] }))
}

#[tokio::test]
async fn an_all_local_plan_commits_with_the_completion_and_logs_no_saga_steps() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let handlers = HandlerRegistry::new(Plan(vec![
            order(),
            ActionRequest::new("notify_sales", json!({ "reason": "new order" })),
        ]));
        let orch = orchestrator(store.clone(), handlers, executors::builtin(store.connection()));
        let Outcome::Completed(done) = orch.process(incoming("wamid.l1", order_intent())).await.unwrap() else {
            panic!("{}", t.label)
        };
        let order_id = done.steps[0].output.get("order_id").and_then(|id| id.as_i64()).expect("the order's id");
        assert_eq!(done.steps.iter().map(|s| s.action.as_str()).collect::<Vec<_>>(), ["create_order", "notify_sales"]);
        assert_eq!(count(&t.db, "saga_steps", "message_id = 'wamid.l1'").await, 0, "{}", t.label);
        assert_eq!(count(&t.db, "orders", &format!("id = {order_id} AND message_id = 'wamid.l1'")).await, 1);
        assert_eq!(count(&t.db, "sales_notifications", "message_id = 'wamid.l1'").await, 1, "{}", t.label);
        // The audit trail names each local step with its output, in the same transaction.
        let executed = "message_id = 'wamid.l1' AND activity_type = 'action_executed'";
        assert_eq!(count(&t.db, "lead_activities", executed).await, 2, "{}", t.label);
        let with_id = format!("{executed} AND CAST(details -> 'output' ->> 'order_id' AS TEXT) = '{order_id}'");
        assert_eq!(count(&t.db, "lead_activities", &with_id).await, 1, "{}", t.label);
    }
}

#[tokio::test]
async fn a_local_step_before_an_external_one_is_logged_and_the_trailing_run_is_not() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let log = CallLog::default();
        let plan = Plan(vec![
            order(),
            ActionRequest::new("crm", json!({})),
            ActionRequest::new("flag_for_review", json!({ "reason": "check" })),
        ]);
        let executors = executors::builtin(store.connection()).with(Scripted::new("crm", &log));
        let orch = orchestrator(store.clone(), HandlerRegistry::new(plan), executors);
        let outcome = orch.process(incoming("wamid.l2", order_intent())).await.unwrap();
        assert!(matches!(outcome, Outcome::Completed(_)), "{}: {outcome:?}", t.label);
        // Step 0 ran on its own before the external step; step 2 joined the completion.
        assert!(count(&t.db, "saga_steps", "message_id = 'wamid.l2' AND step_index = 0").await > 0, "{}", t.label);
        // The external step logged its start before it ran, then its success.
        let steps = store.load_steps(&MessageKey::new("default", "wamid.l2"), 1).await.unwrap();
        let external: Vec<_> = steps.iter().filter(|s| s.step_index == 1).map(|s| s.status).collect();
        assert_eq!(external, [StepStatus::Started, StepStatus::Succeeded], "{}", t.label);
        let output = steps.iter().find(|s| s.status == StepStatus::Succeeded && s.step_index == 1);
        assert_eq!(
            output.and_then(|s| s.output.as_ref()).and_then(|o| o.get("key")),
            Some(&json!("default:wamid.l2:1:1"))
        );
        assert_eq!(count(&t.db, "saga_steps", "message_id = 'wamid.l2' AND step_index = 2").await, 0, "{}", t.label);
        assert_eq!(count(&t.db, "review_flags", "message_id = 'wamid.l2'").await, 1, "{}", t.label);
    }
}

#[tokio::test]
async fn a_bad_parameter_in_the_trailing_run_fails_before_anything_is_written() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let log = CallLog::default();
        let plan = Plan(vec![ActionRequest::new("crm", json!({})), ActionRequest::new("create_order", json!({}))]);
        let executors = executors::builtin(store.connection()).with(Scripted::new("crm", &log));
        let orch = orchestrator(store.clone(), HandlerRegistry::new(plan), executors);
        let outcome = orch.process(incoming("wamid.l3", order_intent())).await.unwrap();
        let Outcome::DeadLettered(dead) = outcome else { panic!("{}: {outcome:?}", t.label) };
        assert!(dead.reason.contains("create_order needs `items`"), "{}: {}", t.label, dead.reason);
        assert_eq!(log.entries(), ["execute crm", "compensate crm"], "{}", t.label);
        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.l3'").await, 0, "{}", t.label);
        assert_eq!(count(&t.db, "processed_messages", "message_id = 'wamid.l3' AND status = 'completed'").await, 0);
    }
}

/// A local executor whose write fails for messages whose text says "explode".
struct Exploding;

#[async_trait]
impl ActionExecutor for Exploding {
    fn name(&self) -> &str {
        "explode"
    }

    async fn execute(&self, _ctx: &ActionContext<'_>) -> Result<ActionOutput, ActionError> {
        Err(ActionError::permanent("Exploding runs only in the completion"))
    }

    async fn compensate(&self, _ctx: &ActionContext<'_>, _output: &ActionOutput) -> Result<(), ActionError> {
        Ok(())
    }
}

#[async_trait]
impl LocalExecutor for Exploding {
    async fn execute_in(
        &self,
        _txn: &DatabaseTransaction,
        steps: &[ActionContext<'_>],
    ) -> Result<Vec<ActionOutput>, ActionError> {
        if steps.iter().any(|step| step.message.inbound.text() == Some("explode")) {
            return Err(ActionError::permanent("the write was refused"));
        }
        Ok(steps.iter().map(|step| ActionOutput(json!({ "step": step.step_index }))).collect())
    }
}

#[tokio::test]
async fn a_failing_local_write_rolls_back_only_its_own_message_and_compensates_its_external_steps() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let log = CallLog::default();
        let plan = Plan(vec![ActionRequest::new("crm", json!({})), order(), ActionRequest::new("explode", json!({}))]);
        let executors = executors::builtin(store.connection()).with(Scripted::new("crm", &log)).with_local(Exploding);
        let orch = Arc::new(orchestrator(store.clone(), HandlerRegistry::new(plan), executors));
        // Concurrent messages share completion batches; one of them explodes.
        let mut tasks = Vec::new();
        for i in 0..12 {
            let orch = orch.clone();
            let body = if i == 5 { "explode" } else { "fine" };
            let message =
                orchestrator::Incoming::new(text(&format!("wamid.x{i}"), "+15551234567", body), order_intent());
            tasks.push(tokio::spawn(async move { orch.process(message).await.unwrap() }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        for (i, outcome) in outcomes.iter().enumerate() {
            let id = format!("wamid.x{i}");
            if i == 5 {
                let Outcome::DeadLettered(dead) = outcome else { panic!("{}: {outcome:?}", t.label) };
                assert!(dead.reason.contains("step 2 `explode`"), "{}: {}", t.label, dead.reason);
                assert_eq!(dead.failure_type, FailureType::ExternalServiceError, "{}", t.label);
                assert_eq!(count(&t.db, "orders", &format!("message_id = '{id}'")).await, 0, "{}", t.label);
                let activities = count(&t.db, "lead_activities", &format!("message_id = '{id}'")).await;
                assert_eq!(activities, 0, "{}", t.label);
            } else {
                assert!(matches!(outcome, Outcome::Completed(_)), "{}: {i}: {outcome:?}", t.label);
                let created = count(&t.db, "orders", &format!("message_id = '{id}' AND status = 'created'")).await;
                assert_eq!(created, 1, "{}", t.label);
            }
        }
        // Twelve external calls; only the exploded message's was undone.
        assert_eq!(log.count("execute crm"), 12, "{}", t.label);
        assert_eq!(log.count("compensate crm"), 1, "{}", t.label);
    }
}

#[tokio::test]
async fn a_store_without_transactions_runs_local_executors_as_external_ones() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    assert!(!store.runs_local_effects());
    let log = CallLog::default();
    // A local executor's ActionExecutor face is what runs here.
    let executors = ExecutorRegistry::new().with_local(Logged(Scripted::new("points", &log)));
    let orch = orchestrator(store, HandlerRegistry::new(plan(&["points"])), executors);
    let outcome = orch.process(incoming("wamid.m1", order_intent())).await.unwrap();
    let Outcome::Completed(done) = outcome else { panic!("{outcome:?}") };
    assert_eq!(done.steps[0].output.get("by"), Some(&json!("points")));
    assert_eq!(log.entries(), ["execute points"]);
}

/// A [`Scripted`] executor registered as a local one.
struct Logged(Scripted);

#[async_trait]
impl ActionExecutor for Logged {
    fn name(&self) -> &str {
        self.0.name()
    }

    async fn execute(&self, ctx: &ActionContext<'_>) -> Result<ActionOutput, ActionError> {
        self.0.execute(ctx).await
    }

    async fn compensate(&self, ctx: &ActionContext<'_>, output: &ActionOutput) -> Result<(), ActionError> {
        self.0.compensate(ctx, output).await
    }
}

#[async_trait]
impl LocalExecutor for Logged {
    async fn execute_in(
        &self,
        _txn: &DatabaseTransaction,
        _steps: &[ActionContext<'_>],
    ) -> Result<Vec<ActionOutput>, ActionError> {
        Err(ActionError::permanent("not expected on a store without transactions"))
    }
}

#[tokio::test]
async fn a_new_all_local_message_is_completed_without_a_claim_before() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let handlers = HandlerRegistry::new(Plan(vec![order()]));
        let orch = orchestrator(store.clone(), handlers, executors::builtin(store.connection()));
        let outcome = orch.process(incoming("wamid.u1", order_intent())).await.unwrap();
        assert!(matches!(outcome, Outcome::Completed(_)), "{}: {outcome:?}", t.label);
        // One statement wrote the row: claimed and completed at the same instant, never leased.
        let inserted_completed = "message_id = 'wamid.u1' AND status = 'completed' AND claimed_at = completed_at
             AND attempt_count = 1 AND run_count = 1 AND lease_expires_at IS NULL AND reply IS NOT NULL";
        assert_eq!(count(&t.db, "processed_messages", inserted_completed).await, 1, "{}", t.label);
        // A message with an external step is claimed first, as before.
        let log = CallLog::default();
        let executors = executors::builtin(store.connection()).with(Scripted::new("crm", &log));
        let orch = orchestrator(store.clone(), HandlerRegistry::new(plan(&["crm"])), executors);
        assert!(matches!(orch.process(incoming("wamid.u2", order_intent())).await.unwrap(), Outcome::Completed(_)));
        let claimed_then_completed = "message_id = 'wamid.u2' AND status = 'completed' AND claimed_at < completed_at";
        assert_eq!(count(&t.db, "processed_messages", claimed_then_completed).await, 1, "{}", t.label);
    }
}

#[tokio::test]
async fn concurrent_deliveries_of_a_new_all_local_message_take_effect_once() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            // Each delivery on its own worker, as after a rebalance.
            let orch = orchestrator(
                store.clone(),
                HandlerRegistry::new(Plan(vec![order()])),
                executors::builtin(store.connection()),
            );
            tasks.push(tokio::spawn(async move { orch.process(incoming("wamid.u3", order_intent())).await.unwrap() }));
        }
        let mut completed = 0;
        for task in tasks {
            match task.await.unwrap() {
                Outcome::Completed(_) => completed += 1,
                Outcome::Duplicate(_) | Outcome::Deferred { .. } => {}
                other => panic!("{}: {other:?}", t.label),
            }
        }
        assert_eq!(completed, 1, "{}", t.label);
        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.u3'").await, 1, "{}", t.label);
        assert_eq!(
            count(&t.db, "lead_activities", "message_id = 'wamid.u3' AND activity_type = 'message_handled'").await,
            1
        );
    }
}

#[tokio::test]
async fn an_all_local_message_whose_write_fails_is_claimed_and_counted_as_an_attempt() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let plan = Plan(vec![order(), ActionRequest::new("explode", json!({}))]);
        let executors = executors::builtin(store.connection()).with_local(Exploding);
        let orch = orchestrator(store.clone(), HandlerRegistry::new(plan), executors);
        let message = orchestrator::Incoming::new(text("wamid.u4", "+15551234567", "explode"), order_intent());
        let outcome = orch.process(message).await.unwrap();
        let Outcome::DeadLettered(dead) = outcome else { panic!("{}: {outcome:?}", t.label) };
        assert!(dead.reason.contains("step 1 `explode` failed: the write was refused"), "{}: {}", t.label, dead.reason);
        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.u4'").await, 0, "{}", t.label);
        let dead_lettered = "message_id = 'wamid.u4' AND dead_lettered_at IS NOT NULL AND attempt_count = 1";
        assert_eq!(count(&t.db, "processed_messages", dead_lettered).await, 1, "{}", t.label);
    }
}

#[tokio::test]
async fn the_built_in_executors_registered_as_external_ones_are_claimed_and_logged() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let registry = executors::builtin_external(store.connection());
        assert!(registry.get("create_order").is_some() && registry.local("create_order").is_none(), "{}", t.label);
        let handlers = HandlerRegistry::new(Plan(vec![
            order(),
            ActionRequest::new("notify_sales", json!({ "reason": "new order" })),
        ]));
        let orch = orchestrator(store.clone(), handlers, registry);
        let outcome = orch.process(incoming("wamid.e1", order_intent())).await.unwrap();
        assert!(matches!(outcome, Outcome::Completed(_)), "{}: {outcome:?}", t.label);
        // Each step in its own transaction, with its start and success in the saga log.
        let steps = store.load_steps(&MessageKey::new("default", "wamid.e1"), 1).await.unwrap();
        let statuses: Vec<_> = steps.iter().map(|s| (s.step_index, s.status)).collect();
        assert_eq!(
            statuses,
            [
                (0, StepStatus::Started),
                (0, StepStatus::Succeeded),
                (1, StepStatus::Started),
                (1, StepStatus::Succeeded)
            ],
            "{}",
            t.label
        );
        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.e1'").await, 1, "{}", t.label);
    }
}
