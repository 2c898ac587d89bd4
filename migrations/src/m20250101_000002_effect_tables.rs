//! Tables written by the built-in executors. Rows are never deleted: compensation
//! changes `status`, so an audit can count effects per `message_id`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::m20250101_000001_core_tables::index;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20250101_000002_effect_tables"
    }
}

/// The columns every effect table shares, then the table's own.
fn effect_table(name: &'static str, own_columns: Vec<ColumnDef>) -> TableCreateStatement {
    let mut table = Table::create();
    table
        .table(name)
        .if_not_exists()
        .col(big_pk_auto("id"))
        // `<tenant>:<message_id>:<step_index>`: makes a re-executed step insert nothing new.
        .col(string_uniq("idempotency_key"))
        .col(string("tenant_id"))
        .col(string("message_id"))
        .col(string("phone"));
    for mut column in own_columns {
        table.col(&mut column);
    }
    table
        .col(string("status"))
        .col(timestamp_with_time_zone("created_at"))
        .col(timestamp_with_time_zone("updated_at"))
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(effect_table(
                "orders",
                vec![string_null("lead_id"), json_binary("items"), text_null("notes")],
            ))
            .await?;
        manager
            .create_table(effect_table(
                "support_tickets",
                vec![string("subject"), text("description"), string("priority")],
            ))
            .await?;
        manager.create_table(effect_table("review_flags", vec![string("reason"), json_binary_null("details")])).await?;
        manager
            .create_table(effect_table(
                "sales_notifications",
                vec![string("reason"), text("summary"), json_binary_null("details")],
            ))
            .await?;
        for (table, name) in [
            ("orders", "ix_orders_message_id"),
            ("support_tickets", "ix_support_tickets_message_id"),
            ("review_flags", "ix_review_flags_message_id"),
            ("sales_notifications", "ix_sales_notifications_message_id"),
        ] {
            index(manager, table, name, &["message_id"], false).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["sales_notifications", "review_flags", "support_tickets", "orders"] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
