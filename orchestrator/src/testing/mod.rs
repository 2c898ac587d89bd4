//! Test support: the databases every store test runs against, and a fake
//! WhatsApp Cloud API ([`fake_cloud_api`]).
//!
//! SQLite always (a fresh file per test); PostgreSQL too when
//! `TEST_DATABASE_URL` (or a `postgres://` `DATABASE_URL`) is set, in a fresh
//! schema per test so tests run in parallel.

use std::path::PathBuf;

#[cfg(feature = "http")]
pub mod fake_cloud_api;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};

/// A migrated database for one test.
pub struct TestDb {
    /// `sqlite` or `postgres`.
    pub label: &'static str,
    /// The connection.
    pub db: DatabaseConnection,
    file: Option<PathBuf>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
        }
    }
}

/// The PostgreSQL URL tests use, if any.
pub fn postgres_url() -> Option<String> {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .filter(|url| url.starts_with("postgres"))
}

/// A fresh migrated SQLite database in a temporary file.
pub async fn sqlite() -> TestDb {
    let file = std::env::temp_dir().join(format!("orchestrator-test-{}.db", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}?mode=rwc", file.display());
    let db = crate::db::connect(&url).await.unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    TestDb { label: "sqlite", db, file: Some(file) }
}

/// A fresh migrated schema on the test PostgreSQL, if one is configured.
/// Schemas of earlier runs older than an hour are dropped on the way.
pub async fn postgres() -> Option<TestDb> {
    let url = postgres_url()?;
    let admin = Database::connect(url.as_str())
        .await
        .unwrap_or_else(|e| panic!("TEST_DATABASE_URL is set but PostgreSQL is unreachable: {e}"));
    let now = chrono::Utc::now().timestamp();
    let stale = admin
        .query_all_raw(sea_orm::Statement::from_string(
            admin.get_database_backend(),
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'orch_test_%'",
        ))
        .await
        .unwrap_or_default();
    for row in stale {
        let Ok(name) = row.try_get::<String>("", "nspname") else { continue };
        let created = name.split('_').nth(2).and_then(|t| t.parse::<i64>().ok()).unwrap_or(now);
        if now - created > 3600 {
            let _ = admin.execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE")).await;
        }
    }
    let schema = format!("orch_test_{now}_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE SCHEMA \"{schema}\""))
        .await
        .unwrap_or_else(|e| panic!("cannot create test schema: {e}"));
    let _ = admin.close().await;
    let mut options = ConnectOptions::new(url);
    options.set_schema_search_path(schema.clone()).max_connections(8);
    let db = crate::db::connect_with(options).await.unwrap_or_else(|e| panic!("cannot migrate {schema}: {e}"));
    Some(TestDb { label: "postgres", db, file: None })
}

/// SQLite, then PostgreSQL when configured. With `ORCHESTRATOR_REQUIRE_POSTGRES`
/// set (CI sets it), a missing PostgreSQL URL fails the test instead of
/// silently testing SQLite alone.
pub async fn databases() -> Vec<TestDb> {
    let mut dbs = vec![sqlite().await];
    match postgres().await {
        Some(db) => dbs.push(db),
        None if std::env::var_os("ORCHESTRATOR_REQUIRE_POSTGRES").is_some() => {
            panic!("ORCHESTRATOR_REQUIRE_POSTGRES is set but TEST_DATABASE_URL is not")
        }
        None => {}
    }
    dbs
}
