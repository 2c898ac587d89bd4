//! The inbox's history in SQL: turns written inside the caller's
//! transaction (a completion, a send API request), and the inbox's reads.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, Value};

use super::statement::{push_rows, stmt};
use crate::store::StoreError;
use crate::store::conversations::{
    Conversation, ConversationCursor, ConversationTurn, Direction, ThreadMessage, conversation_phone,
};

/// Longest `last_preview` kept, in characters.
const PREVIEW_CHARS: usize = 200;

/// What a batch adds to one conversation: its latest message, and how many
/// new messages (inbound ones unread).
struct Touched {
    latest: i64,
    direction: String,
    text: Option<String>,
    unread: i32,
    count: i32,
}

/// Writes `turns` (each in its organisation) in the caller's transaction:
/// their messages once (a redelivery adds nothing), then one upsert of each
/// conversation touched, in key order (concurrent batches lock rows in one
/// order), counting only the messages new here. A batch that commits after
/// a later one leaves the later one's latest message in place.
pub(super) async fn write_turns(
    txn: &impl ConnectionTrait,
    turns: &[(&str, &ConversationTurn)],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let rows: Vec<(&str, String, &crate::store::conversations::ThreadEntry)> = turns
        .iter()
        .flat_map(|(tenant, turn)| turn.entries.iter().map(move |e| (*tenant, conversation_phone(&turn.phone), e)))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let backend = txn.get_database_backend();
    let mut sql = String::from(
        "INSERT INTO conversation_messages
           (tenant_id, phone, direction, message_id, reply_index, text, intent, created_at) VALUES ",
    );
    push_rows(&mut sql, rows.len(), "(?, ?, ?, ?, ?, ?, ?, ?)");
    sql.push_str(" ON CONFLICT DO NOTHING RETURNING id, tenant_id, phone, direction, text");
    let mut values: Vec<Value> = Vec::with_capacity(rows.len() * 8);
    for (tenant, phone, entry) in &rows {
        values.extend([
            (*tenant).into(),
            phone.as_str().into(),
            entry.direction.as_str().into(),
            entry.message_id.as_str().into(),
            (entry.reply_index as i32).into(),
            entry.text.clone().into(),
            entry.intent.clone().into(),
            now.into(),
        ]);
    }
    let mut touched: BTreeMap<(String, String), Touched> = BTreeMap::new();
    for row in txn.query_all_raw(stmt(backend, &sql, values)).await? {
        let id: i64 = row.try_get("", "id")?;
        let direction: String = row.try_get("", "direction")?;
        let text: Option<String> = row.try_get("", "text")?;
        let inbound = i32::from(direction == Direction::Inbound.as_str());
        let key = (row.try_get("", "tenant_id")?, row.try_get("", "phone")?);
        let entry = touched.entry(key).or_insert(Touched {
            latest: id,
            direction: direction.clone(),
            text: text.clone(),
            unread: 0,
            count: 0,
        });
        if id >= entry.latest {
            (entry.latest, entry.direction, entry.text) = (id, direction, text);
        }
        entry.unread += inbound;
        entry.count += 1;
    }
    if touched.is_empty() {
        return Ok(());
    }
    let mut sql = String::from(
        "INSERT INTO conversations
           (tenant_id, phone, last_message_at, last_direction, last_preview, unread_count, message_count) VALUES ",
    );
    push_rows(&mut sql, touched.len(), "(?, ?, ?, ?, ?, ?, ?)");
    sql.push_str(
        " ON CONFLICT (tenant_id, phone) DO UPDATE SET
            last_message_at = CASE WHEN excluded.last_message_at >= conversations.last_message_at
                              THEN excluded.last_message_at ELSE conversations.last_message_at END,
            last_direction = CASE WHEN excluded.last_message_at >= conversations.last_message_at
                             THEN excluded.last_direction ELSE conversations.last_direction END,
            last_preview = CASE WHEN excluded.last_message_at >= conversations.last_message_at
                           THEN excluded.last_preview ELSE conversations.last_preview END,
            unread_count = conversations.unread_count + excluded.unread_count,
            message_count = conversations.message_count + excluded.message_count",
    );
    let mut values: Vec<Value> = Vec::with_capacity(touched.len() * 7);
    for ((tenant, phone), Touched { direction, text, unread, count, .. }) in touched {
        let preview = text.map(|t| t.chars().take(PREVIEW_CHARS).collect::<String>());
        values.extend([
            tenant.into(),
            phone.into(),
            now.into(),
            direction.into(),
            preview.into(),
            unread.into(),
            count.into(),
        ]);
    }
    txn.execute_raw(stmt(backend, &sql, values)).await?;
    Ok(())
}

pub(super) async fn conversations(
    db: &DatabaseConnection,
    tenant: Option<&str>,
    before: Option<&ConversationCursor>,
    limit: u64,
) -> Result<Vec<Conversation>, StoreError> {
    let mut sql = String::from(
        "SELECT tenant_id, phone, last_message_at, last_direction, last_preview, unread_count, message_count
         FROM conversations WHERE 1 = 1",
    );
    let mut values: Vec<Value> = Vec::new();
    if let Some(tenant) = tenant {
        sql.push_str(" AND tenant_id = ?");
        values.push(tenant.into());
    }
    if let Some(cursor) = before {
        sql.push_str(
            " AND (last_message_at < ? OR (last_message_at = ? AND (tenant_id < ? OR (tenant_id = ? AND phone < ?))))",
        );
        values.extend([
            cursor.at.into(),
            cursor.at.into(),
            cursor.tenant_id.as_str().into(),
            cursor.tenant_id.as_str().into(),
            cursor.phone.as_str().into(),
        ]);
    }
    sql.push_str(" ORDER BY last_message_at DESC, tenant_id DESC, phone DESC LIMIT ?");
    values.push((limit as i64).into());
    let rows = db.query_all_raw(stmt(db.get_database_backend(), &sql, values)).await?;
    rows.iter()
        .map(|row| {
            Ok(Conversation {
                tenant_id: row.try_get("", "tenant_id")?,
                phone: row.try_get("", "phone")?,
                last_message_at: row.try_get("", "last_message_at")?,
                last_direction: Direction::parse(&row.try_get::<String>("", "last_direction")?),
                last_preview: row.try_get("", "last_preview")?,
                unread: row.try_get::<i32>("", "unread_count")?.max(0) as u32,
                message_count: row.try_get::<i32>("", "message_count")?.max(0) as u32,
            })
        })
        .collect()
}

pub(super) async fn thread(
    db: &DatabaseConnection,
    tenant: &str,
    phone: &str,
    before: Option<i64>,
    limit: u64,
) -> Result<Vec<ThreadMessage>, StoreError> {
    // The statuses are the pipeline's and the sender's own rows': the thread cannot disagree with them.
    let mut sql = String::from(
        "SELECT m.id, m.direction, m.message_id, m.text, m.intent, m.created_at, o.status,
                CASE WHEN p.dead_lettered_at IS NOT NULL AND p.status <> 'completed' THEN 'dead_lettered' END
                  AS processing
         FROM conversation_messages m
         LEFT JOIN outbound_messages o
           ON m.direction = 'outbound' AND o.tenant_id = m.tenant_id AND o.original_message_id = m.message_id
          AND o.reply_index = m.reply_index
         LEFT JOIN processed_messages p
           ON m.direction = 'inbound' AND p.tenant_id = m.tenant_id AND p.message_id = m.message_id
         WHERE m.tenant_id = ? AND m.phone = ?",
    );
    let mut values: Vec<Value> = vec![tenant.into(), phone.into()];
    if let Some(before) = before {
        sql.push_str(" AND m.id < ?");
        values.push(before.into());
    }
    sql.push_str(" ORDER BY m.id DESC LIMIT ?");
    values.push((limit as i64).into());
    let rows = db.query_all_raw(stmt(db.get_database_backend(), &sql, values)).await?;
    rows.iter()
        .map(|row| {
            let direction = Direction::parse(&row.try_get::<String>("", "direction")?);
            let status: Option<String> = row.try_get("", "status")?;
            let processing: Option<String> = row.try_get("", "processing")?;
            let status = match direction {
                Direction::Inbound if processing.as_deref() == Some("dead_lettered") => "dead_lettered".to_owned(),
                Direction::Inbound => "received".to_owned(),
                Direction::Outbound => status.unwrap_or_else(|| "pending".to_owned()),
            };
            Ok(ThreadMessage {
                id: row.try_get("", "id")?,
                direction,
                message_id: row.try_get("", "message_id")?,
                text: row.try_get("", "text")?,
                intent: row.try_get("", "intent")?,
                status,
                created_at: row.try_get("", "created_at")?,
            })
        })
        .collect()
}

pub(super) async fn mark_read(db: &DatabaseConnection, tenant: &str, phone: &str) -> Result<bool, StoreError> {
    let done = db
        .execute_raw(stmt(
            db.get_database_backend(),
            "UPDATE conversations SET unread_count = 0 WHERE tenant_id = ? AND phone = ?",
            vec![tenant.into(), phone.into()],
        ))
        .await?;
    Ok(done.rows_affected() > 0)
}
