//! Repository for backups: a consistent copy of a live SQLite database.

use std::path::Path;

use sqlx::{AnyConnection, Connection};

use crate::error::{Error, Result};

/// Writes a consistent snapshot of the SQLite database at `url` to `target` with `VACUUM INTO`,
/// while other processes (a running server) go on reading and writing it. Opens its own
/// connection and applies no migrations, so a newer binary never changes a running server's
/// database.
pub async fn vacuum_into(url: &str, target: &Path) -> Result<()> {
    sqlx::any::install_default_drivers();
    let target = target.to_str().ok_or_else(|| Error::invalid("output", "the path is not valid UTF-8"))?;
    let mut connection = AnyConnection::connect(url).await?;
    sqlx::query("PRAGMA busy_timeout = 30000").execute(&mut connection).await?;
    sqlx::query("VACUUM INTO $1").bind(target).execute(&mut connection).await?;
    connection.close().await?;
    Ok(())
}
