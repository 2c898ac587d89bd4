//! Opening the database and bringing its schema up to date.

use std::time::Duration;

use migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

/// The embedded default: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://orchestrator.db?mode=rwc";

/// Connects to `url` (`sqlite://...` or `postgres://...`) with a pool sized
/// for the pipeline, and applies pending migrations.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    connect_with(ConnectOptions::new(url.to_owned())).await
}

/// Like [`connect`], with the caller's options (pool size, schema search path, ...).
pub async fn connect_with(mut options: ConnectOptions) -> Result<DatabaseConnection, DbErr> {
    let sqlite = options.get_url().starts_with("sqlite:");
    if options.get_max_connections().is_none() {
        // sea-orm gives SQLite a single connection unless told otherwise. On
        // PostgreSQL the store's coalesced statements alone may hold 18
        // (nine statements, two writers each), beside the executors' writers,
        // lease renewals and reads; connections open only when needed.
        options.max_connections(if sqlite { 8 } else { 32 });
    }
    options.sqlx_logging(false).connect_timeout(Duration::from_secs(10)).acquire_timeout(Duration::from_secs(10));
    if sqlite {
        // WAL lets readers run beside the writer; the busy timeout makes writers queue instead of failing.
        options.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
        });
    }
    if sqlite {
        // Migrate over one connection, closed before the pool opens: a pooled
        // SQLite connection that read the schema before a migration added a
        // unique index prepares `ON CONFLICT` against the old schema and fails.
        let mut once = options.clone();
        once.max_connections(1).min_connections(0);
        let migrating = Database::connect(once).await?;
        Migrator::up(&migrating, None).await?;
        migrating.close().await?;
        return Database::connect(options).await;
    }
    let db = Database::connect(options).await?;
    Migrator::up(&db, None).await?;
    Ok(db)
}
