//! `delivery_statuses`: what WhatsApp reported about the messages we sent;
//! each status also moves its reply in `outbound_messages` forward.

use chrono::Utc;
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};

use super::statement::stmt;
use crate::store::StoreError;
use crate::store::outbound::OutboundStatus;
use crate::store::{DeliveryStatus, MovedMessage};

/// Keeps the status and moves the reply it is about (by `wamid`) forward, in one transaction.
pub(super) async fn record(
    db: &DatabaseConnection,
    status: &DeliveryStatus,
) -> Result<Option<MovedMessage>, StoreError> {
    let txn = db.begin().await?;
    insert(&txn, status).await?;
    let mut moved = None;
    if let Some(state) = OutboundStatus::parse(&status.status) {
        let error = status.error.as_deref();
        moved = super::outbound::apply_status(
            &txn,
            &status.message_id,
            state,
            status.timestamp,
            error,
            status.error_code(),
        )
        .await?;
    }
    txn.commit().await?;
    Ok(moved)
}

async fn insert(db: &impl ConnectionTrait, status: &DeliveryStatus) -> Result<(), StoreError> {
    db.execute_raw(stmt(
        db.get_database_backend(),
        "INSERT INTO delivery_statuses
           (message_id, recipient_phone, status, error, phone_number_id, status_at, received_at)
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id, status) DO NOTHING",
        vec![
            status.message_id.as_str().into(),
            status.recipient_phone.as_str().into(),
            status.status.as_str().into(),
            status.error.clone().into(),
            status.phone_number_id.clone().into(),
            status.timestamp.into(),
            Utc::now().into(),
        ],
    ))
    .await?;
    Ok(())
}

pub(super) async fn of_message(db: &impl ConnectionTrait, message_id: &str) -> Result<Vec<DeliveryStatus>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            "SELECT message_id, recipient_phone, status, error, phone_number_id, status_at FROM delivery_statuses
             WHERE message_id = ? ORDER BY status_at, id",
            vec![message_id.into()],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(DeliveryStatus {
                message_id: row.try_get("", "message_id")?,
                recipient_phone: row.try_get("", "recipient_phone")?,
                status: row.try_get("", "status")?,
                timestamp: row.try_get("", "status_at")?,
                error: row.try_get("", "error")?,
                phone_number_id: row.try_get("", "phone_number_id")?,
            })
        })
        .collect()
}
