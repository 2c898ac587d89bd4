//! Each built-in executor writes its table once per idempotency key and its
//! compensation really undoes the effect; on SQLite and (with
//! TEST_DATABASE_URL) PostgreSQL.

use std::collections::HashMap;

use chrono::Utc;
use executors::{CreateOrder, CreateSupportTicket, FlagForReview, NotifySales};
use orchestrator::event::{MessageContent, MessageReceived, MessageType};
use orchestrator::testing;
use orchestrator::{ActionContext, ActionExecutor, Inbound, Intent, MessageContext};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::{Value, json};

fn message(message_id: &str) -> MessageContext {
    MessageContext {
        event_id: uuid::Uuid::new_v4(),
        tenant_id: "acme".into(),
        message_id: message_id.into(),
        inbound: Inbound::Message(MessageReceived {
            message_id: message_id.into(),
            from_phone: "+15551234567".into(),
            message_type: MessageType::Text,
            content: MessageContent::Text { body: "my order is late".into() },
            received_at: Utc::now(),
            metadata: HashMap::new(),
        }),
        intent: Intent::new("COMPLAINT", 0.9),
        attempt: 1,
        max_attempts: 4,
        run: 1,
    }
}

async fn statuses(db: &DatabaseConnection, table: &str, message_id: &str) -> Vec<String> {
    let sql = format!("SELECT status FROM {table} WHERE message_id = '{message_id}' ORDER BY id");
    let rows = db.query_all_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap();
    rows.iter().map(|r| r.try_get::<String>("", "status").unwrap()).collect()
}

/// Execute twice (a crash between effect and log), compensate twice (a crash
/// during compensation): one row, undone once.
async fn check(
    db: &DatabaseConnection,
    executor: &dyn ActionExecutor,
    params: Value,
    table: &str,
    (done, undone): (&str, &str),
) {
    let ctx = message(&format!("m-{table}"));
    let action = ActionContext { message: &ctx, params: &params, step_index: 0 };
    let first = executor.execute(&action).await.unwrap_or_else(|e| panic!("{table}: {e}"));
    let again = executor.execute(&action).await.unwrap();
    assert_eq!(first, again, "{table}: re-execution must return the same effect");
    assert_eq!(statuses(db, table, &ctx.message_id).await, [done], "{table}");

    executor.compensate(&action, &first).await.unwrap();
    executor.compensate(&action, &first).await.unwrap();
    assert_eq!(statuses(db, table, &ctx.message_id).await, [undone], "{table}: compensation undoes, never deletes");

    // A later run of the same message is a new effect.
    let mut next_run = ctx.clone();
    next_run.run = 2;
    let action = ActionContext { message: &next_run, params: &params, step_index: 0 };
    executor.execute(&action).await.unwrap();
    assert_eq!(statuses(db, table, &ctx.message_id).await, [undone, done], "{table}");

    // Its result was never recorded (timeout, crash): undone by idempotency key alone.
    executor.compensate_unknown(&action).await.unwrap();
    assert_eq!(statuses(db, table, &ctx.message_id).await, [undone, undone], "{table}: undone by key");
    // Nothing was written under this key: a no-op.
    let mut never_ran = ctx.clone();
    never_ran.run = 3;
    executor.compensate_unknown(&ActionContext { message: &never_ran, params: &params, step_index: 0 }).await.unwrap();
    assert_eq!(statuses(db, table, &ctx.message_id).await, [undone, undone], "{table}");
}

#[tokio::test]
async fn every_executor_writes_once_and_compensates() {
    for t in testing::databases().await {
        let db = &t.db;
        check(db, &CreateOrder::new(db.clone()), json!({ "items": ["tacos"] }), "orders", ("created", "cancelled"))
            .await;
        check(
            db,
            &NotifySales::new(db.clone()),
            json!({ "reason": "new_order" }),
            "sales_notifications",
            ("sent", "retracted"),
        )
        .await;
        check(
            db,
            &CreateSupportTicket::new(db.clone()),
            json!({ "subject": "Late", "priority": "high" }),
            "support_tickets",
            ("open", "closed"),
        )
        .await;
        check(
            db,
            &FlagForReview::new(db.clone()),
            json!({ "reason": "unknown_intent" }),
            "review_flags",
            ("flagged", "cleared"),
        )
        .await;
    }
}

#[tokio::test]
async fn bad_parameters_are_permanent_errors() {
    for t in testing::databases().await {
        let ctx = message("m-bad");
        let cases: Vec<(Box<dyn ActionExecutor>, Value)> = vec![
            (Box::new(CreateOrder::new(t.db.clone())), json!({})),
            (Box::new(NotifySales::new(t.db.clone())), json!({ "summary": "no reason" })),
            (Box::new(CreateSupportTicket::new(t.db.clone())), json!({ "priority": "whenever" })),
            (Box::new(FlagForReview::new(t.db.clone())), json!({})),
        ];
        for (executor, params) in cases {
            let action = ActionContext { message: &ctx, params: &params, step_index: 0 };
            let error = executor.execute(&action).await.unwrap_err();
            assert!(!error.is_retryable(), "{}: {} should be permanent: {error}", t.label, executor.name());
        }
    }
}

#[tokio::test]
async fn database_failures_are_retryable() {
    let t = testing::sqlite().await;
    t.db.execute_unprepared("DROP TABLE orders").await.unwrap();
    let ctx = message("m-down");
    let params = json!({ "items": ["tacos"] });
    let action = ActionContext { message: &ctx, params: &params, step_index: 0 };
    let error = CreateOrder::new(t.db.clone()).execute(&action).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
}

/// Concurrent steps share multi-row inserts: each step gets its own row,
/// a step executed twice in one burst (a redelivery racing itself) gets the
/// same row both times, and a step whose row exists already gets that row.
#[tokio::test]
async fn concurrent_executions_each_get_their_own_row_once() {
    for t in testing::databases().await {
        let executor = std::sync::Arc::new(CreateOrder::new(t.db.clone()));
        let params = json!({ "items": ["tacos"] });
        let earlier = message("burst-0");
        let existing =
            executor.execute(&ActionContext { message: &earlier, params: &params, step_index: 0 }).await.unwrap();
        // Messages 0..30, with 5 and 6 executed three times each.
        let ids: Vec<usize> = (0..30).chain([5, 5, 6, 6]).collect();
        let runs: Vec<_> = ids
            .into_iter()
            .map(|i| {
                let (executor, params) = (executor.clone(), params.clone());
                tokio::spawn(async move {
                    let ctx = message(&format!("burst-{i}"));
                    let output =
                        executor.execute(&ActionContext { message: &ctx, params: &params, step_index: 0 }).await;
                    (i, output.unwrap())
                })
            })
            .collect();
        let mut ids_by_message: HashMap<usize, std::collections::HashSet<i64>> = HashMap::new();
        for run in runs {
            let (i, output) = run.await.unwrap();
            ids_by_message.entry(i).or_default().insert(output.0["order_id"].as_i64().expect("an order id"));
        }
        for (i, ids) in &ids_by_message {
            assert_eq!(ids.len(), 1, "{}: burst-{i} got rows {ids:?}", t.label);
        }
        assert_eq!(ids_by_message[&0].iter().next(), existing.0["order_id"].as_i64().as_ref(), "{}", t.label);
        let distinct: std::collections::HashSet<i64> = ids_by_message.values().flatten().copied().collect();
        assert_eq!(distinct.len(), 30, "{}: one row per message", t.label);
        let sql = "SELECT COUNT(*) AS n FROM orders WHERE message_id LIKE 'burst-%'";
        let row = t.db.query_one_raw(Statement::from_string(t.db.get_database_backend(), sql)).await.unwrap().unwrap();
        assert_eq!(row.try_get::<i64>("", "n").unwrap(), 30, "{}", t.label);
    }
}
