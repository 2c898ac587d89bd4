//! A fresh database per scenario that a child process can open by URL:
//! its own PostgreSQL database (`TEST_DATABASE_URL`), or a SQLite file.

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

/// A migrated database for one scenario, dropped by [`ScenarioDb::remove`].
pub struct ScenarioDb {
    /// `postgres` or `sqlite`.
    pub label: &'static str,
    /// What the consumer's `DATABASE_URL` is set to.
    pub url: String,
    /// The test's own connection, for the ledger.
    pub db: DatabaseConnection,
    name: String,
    admin_url: Option<String>,
}

/// Prefix of the databases the suite creates; leftovers of a killed run are dropped on the next.
const PREFIX: &str = "chaos_";

impl ScenarioDb {
    /// A new database: PostgreSQL when configured, SQLite otherwise.
    pub async fn create() -> Self {
        match orchestrator::testing::postgres_url() {
            Some(admin_url) => Self::postgres(admin_url).await,
            None if std::env::var_os("ORCHESTRATOR_REQUIRE_POSTGRES").is_some() => {
                panic!("ORCHESTRATOR_REQUIRE_POSTGRES is set but TEST_DATABASE_URL is not")
            }
            None => Self::sqlite().await,
        }
    }

    async fn postgres(admin_url: String) -> Self {
        let name = format!("{PREFIX}{}_{}", chrono::Utc::now().timestamp(), uuid::Uuid::new_v4().simple());
        let admin = Database::connect(admin_url.as_str()).await.expect("PostgreSQL reachable");
        admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name);
        let db = orchestrator::db::connect(&url).await.expect("migrated");
        Self { label: "postgres", url, db, name, admin_url: Some(admin_url) }
    }

    async fn sqlite() -> Self {
        let name =
            std::env::temp_dir().join(format!("{PREFIX}{}.db", uuid::Uuid::new_v4().simple())).display().to_string();
        let url = format!("sqlite://{name}?mode=rwc");
        let db = orchestrator::db::connect(&url).await.expect("migrated");
        Self { label: "sqlite", url, db, name, admin_url: None }
    }

    /// The same database reached through another port (a proxy's).
    pub fn url_via_port(&self, port: u16) -> Option<String> {
        let rest = self.url.split_once("://")?.1;
        let (authority, path) = rest.split_once('/')?;
        let (user, host_port) = authority.rsplit_once('@').map(|(u, h)| (format!("{u}@"), h)).unwrap_or_default();
        let host = host_port.rsplit_once(':').map(|(h, _)| h).unwrap_or(host_port);
        Some(format!("postgres://{user}{host}:{port}/{path}"))
    }

    /// The server's host and port (PostgreSQL only: `None` for SQLite).
    pub fn server(&self) -> Option<String> {
        self.admin_url.as_ref()?;
        let rest = self.url.split_once("://")?.1;
        let authority = rest.split_once('/')?.0;
        let host_port = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
        Some(if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5432") })
    }

    /// Drops the database (or deletes the file).
    pub async fn remove(self) {
        let _ = self.db.close().await;
        match self.admin_url {
            Some(admin_url) => {
                if let Ok(admin) = Database::connect(admin_url.as_str()).await {
                    let _ =
                        admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await;
                }
            }
            None => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", self.name));
                }
            }
        }
    }
}

/// `url` with its database (the path) replaced by `name`, query kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map(|(b, q)| (b, Some(q))).unwrap_or((url, None));
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Drops the databases a killed earlier run left behind (older than an hour,
/// so a run beside this one keeps its own).
pub async fn drop_leftovers() {
    let Some(admin_url) = orchestrator::testing::postgres_url() else { return };
    let Ok(admin) = Database::connect(admin_url.as_str()).await else { return };
    let sql = format!("SELECT datname FROM pg_database WHERE datname LIKE '{PREFIX}%'");
    let found = admin
        .query_all_raw(sea_orm::Statement::from_string(admin.get_database_backend(), sql))
        .await
        .unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    for row in found {
        let Ok(name) = row.try_get::<String>("", "datname") else { continue };
        let created = name.split('_').nth(1).and_then(|t| t.parse::<i64>().ok()).unwrap_or(now);
        if now - created > 3600 {
            let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }
}
