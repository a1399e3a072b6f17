//! Storage: one sqlx pool over SQLite or PostgreSQL, forward-only migrations, and the
//! repository modules — the only places in the runtime that contain SQL.
//!
//! Queries are written once for both backends through sqlx's `Any` driver: `$N` placeholders
//! (SQLite accepts them too), ids and JSON as text, timestamps as `BIGINT` Unix milliseconds.

pub mod agents;
pub mod analytics;
pub mod audit;
pub mod backup;
pub mod conversations;
pub mod erasure;
pub mod exports;
pub mod keys;
pub mod meta;
pub mod provider_keys;
pub mod recordings;
pub mod retention;
pub mod sealed;
pub mod telephony;
pub mod tenants;
pub mod usage;
pub mod webhooks;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

use crate::error::{Error, Result};

/// Which database engine a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database: one pool shared by every part of the node.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
}

impl Database {
    /// Connects, creating the SQLite file (and its directory) when needed, and applies every
    /// pending migration. SQLite runs in WAL mode with foreign keys on.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") { Backend::Postgres } else { Backend::Sqlite };
        let url = match backend {
            Backend::Sqlite => sqlite_url_with_create(url)?,
            Backend::Postgres => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |connection, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        connection
                            .execute(
                                "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON; \
                                 PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL;",
                            )
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let database = Self { pool, backend };
        database.migrate().await?;
        database.optimize().await?;
        Ok(database)
    }

    /// On SQLite, gives the query planner table statistics: `ANALYZE` when the database has none
    /// yet, else `PRAGMA optimize`, which refreshes only those that changed enough. Both read at
    /// most a few hundred rows per index (`analysis_limit`), so start-up stays quick on a large
    /// database. Queries on hot paths do not rely on it; it keeps the others' plans sound. A
    /// no-op on PostgreSQL, whose autovacuum keeps statistics.
    pub async fn optimize(&self) -> Result<()> {
        if self.backend != Backend::Sqlite {
            return Ok(());
        }
        let mut connection = self.pool.acquire().await?;
        sqlx::query("PRAGMA analysis_limit = 400").execute(&mut *connection).await?;
        let analysed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")
            .fetch_one(&mut *connection)
            .await?;
        let statement = if analysed == 0 { "ANALYZE" } else { "PRAGMA optimize = 0x10002" };
        sqlx::query(statement).execute(&mut *connection).await?;
        Ok(())
    }

    /// Applies the runtime's migrations, then the knowledge crate's (which reference the
    /// runtime's tables). Both sets share sqlx's bookkeeping table, each ignoring the other's
    /// versions; the runtime's are numbered from 1, the knowledge crate's from 1001.
    async fn migrate(&self) -> Result<()> {
        let mut runtime_migrations = match self.backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        runtime_migrations.set_ignore_missing(true);
        runtime_migrations.run(&self.pool).await?;
        parley_knowledge::storage::migrator(self.backend == Backend::Postgres).run(&self.pool).await?;
        Ok(())
    }

    /// On SQLite, moves the write-ahead log into the database file and truncates it, so data
    /// deleted (and zeroed by `secure_delete`) leaves no copy in the log. A no-op on PostgreSQL.
    pub async fn checkpoint(&self) -> Result<()> {
        if self.backend == Backend::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await?;
        }
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), waiting up to the busy timeout for another writer, instead of
    /// failing with "database is locked" when a transaction that read first tries to write after
    /// another writer committed.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Succeeds when the database answers a trivial query.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Adds `mode=rwc` to a SQLite URL and creates its parent directory.
/// The file a `sqlite:` URL names (its query string dropped).
pub(crate) fn sqlite_file_path(url: &str) -> &str {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    path.split('?').next().unwrap_or(path)
}

fn sqlite_url_with_create(url: &str) -> Result<String> {
    let path = sqlite_file_path(url);
    if path.is_empty() || path == ":memory:" {
        return Err(Error::invalid("database.url", "an on-disk SQLite file is required"));
    }
    if let Some(parent) = std::path::Path::new(path).parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)?;
        }
    }
    Ok(if url.contains('?') { format!("{url}&mode=rwc") } else { format!("{url}?mode=rwc") })
}

/// Current time as Unix milliseconds, the storage form of every timestamp.
pub(crate) fn now_millis() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

pub(crate) fn from_millis(millis: i64) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .map_err(|error| Error::Corrupt(format!("timestamp {millis}: {error}")))
}

pub(crate) fn to_millis(at: time::OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

pub(crate) fn parse_uuid(text: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::parse_str(text).map_err(|error| Error::Corrupt(format!("id {text:?}: {error}")))
}

/// The current time at storage precision (milliseconds), so values round-trip exactly.
pub(crate) fn now() -> time::OffsetDateTime {
    let millis = now_millis();
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Start-up leaves SQLite with table statistics, and a restart refreshes rather than fails.
    #[tokio::test]
    async fn start_up_gives_sqlite_statistics() {
        let directory = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", directory.path().join("parley.db").display());
        let statistics = |database: &Database| {
            let pool = database.pool().clone();
            async move {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        let database = Database::connect(&url, 2).await.unwrap();
        assert_eq!(statistics(&database).await, 1);
        database.pool().close().await;
        let reopened = Database::connect(&url, 2).await.unwrap();
        assert_eq!(statistics(&reopened).await, 1);
    }
}
