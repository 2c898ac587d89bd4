//! The stage each lead is in (`new` until a handler moves it), so stage
//! changes can be counted (`lead_state_changed_total{from,to}`) and queried.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20250101_000008_leads"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("leads")
                    .if_not_exists()
                    .col(string("tenant_id"))
                    .col(string("lead_id"))
                    .col(string("stage"))
                    .col(timestamp_with_time_zone("updated_at"))
                    .primary_key(Index::create().col("tenant_id").col("lead_id"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("leads").if_exists().to_owned()).await
    }
}
