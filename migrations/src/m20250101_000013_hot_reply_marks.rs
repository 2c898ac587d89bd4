//! Room on `processed_messages`' pages (PostgreSQL only), so the reply mark
//! that follows each completion updates the row in place (a HOT update:
//! no new entry in its three indexes) instead of moving it to a new page.
//! Rows are appended and each is updated once shortly after; with full
//! pages (the default fill factor) almost no update found room.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20250101_000013_hot_reply_marks"
    }
}

/// The share of each new page left filled by inserts (percent).
const FILL_FACTOR: u32 = 70;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        set_fill_factor(manager, FILL_FACTOR).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        alter(manager, "ALTER TABLE processed_messages RESET (fillfactor)").await
    }
}

async fn set_fill_factor(manager: &SchemaManager<'_>, percent: u32) -> Result<(), DbErr> {
    alter(manager, &format!("ALTER TABLE processed_messages SET (fillfactor = {percent})")).await
}

/// Runs `sql` on PostgreSQL (it applies to pages written from then on); SQLite has no such setting.
async fn alter(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    manager.get_connection().execute_unprepared(sql).await.map(drop)
}
