//! Backups of a node on SQLite, and restoring one into a fresh data directory.
//!
//! A backup is a directory: `parley.db` (a consistent snapshot of the database, taken with
//! `VACUUM INTO` while the server keeps serving), `indexes/<tenant>/` (a snapshot of each
//! tenant's search index, see `parley_knowledge::snapshot`), optionally `secrets.key`, and
//! `manifest.json` naming every file with its size and SHA-256. It is written under a
//! `.partial` name and renamed when complete, so a directory with the final name is a whole
//! backup.
//!
//! The database is the source of truth and the index snapshots are taken just after it. On
//! restore, every tenant's index is checked against the restored database — exactly the
//! chunks it publishes, nothing else — and any index that differs (a document added, replaced
//! or deleted between the two snapshots) is rebuilt from the database, so the restored node
//! answers searches exactly as the database snapshot says.
//!
//! The secrets key is left out unless asked for: a backup that holds the key beside the data it
//! protects protects nothing. Keep the key file separately, and restore it beside the data.
//!
//! On PostgreSQL, back up with `pg_dump` and rebuild indexes with `parley reindex` (README).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use parley_config::Settings;
use parley_knowledge::snapshot;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::{storage, Runtime};

const MANIFEST: &str = "manifest.json";
const FORMAT: &str = "parley-backup";
const FORMAT_VERSION: u64 = 1;
const DATABASE_FILE: &str = "parley.db";
const KEY_FILE: &str = "secrets.key";

/// What a backup holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupReport {
    pub directory: PathBuf,
    pub database_bytes: u64,
    pub tenant_indexes: usize,
    pub index_files: usize,
    pub secrets_key_included: bool,
}

/// What a restore copied into the data directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoredFiles {
    pub database_bytes: u64,
    pub tenant_indexes: usize,
    pub secrets_key_restored: bool,
}

/// How the restored indexes compared with the restored database.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct IndexCheck {
    /// Interrupted document writes finished or undone.
    pub recovered_documents: usize,
    pub tenants_checked: usize,
    /// Tenants whose index differed from the database and was rebuilt from it.
    pub tenants_rebuilt: usize,
}

/// Writes a backup of the node the settings describe to `output`, which must not exist or be
/// empty. Runs beside a serving node.
pub async fn backup(settings: &Settings, output: &Path, include_secrets_key: bool) -> Result<BackupReport> {
    let url = settings.database_url();
    let database_path = sqlite_path(&url)?;
    if !database_path.exists() {
        return Err(Error::Conflict(format!("there is no database at {}", database_path.display())));
    }
    if output.exists() && fs::read_dir(output)?.next().is_some() {
        return Err(Error::Conflict(format!("{} exists and is not empty; choose a new directory", output.display())));
    }
    if include_secrets_key && settings.secrets.key.is_some() {
        return Err(Error::Conflict(
            "the secrets key is set inline (secrets.key), not in a file: keep it with your configuration".into(),
        ));
    }
    let partial = partial_path(output);
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    fs::create_dir_all(partial.join("indexes"))?;

    storage::backup::vacuum_into(&url, &partial.join(DATABASE_FILE)).await?;

    let index_root = snapshot::index_root(&settings.data_dir);
    let target_root = partial.join("indexes");
    let (tenant_indexes, index_files) = tokio::task::spawn_blocking(move || copy_indexes(&index_root, &target_root))
        .await
        .map_err(|error| Error::Io(io::Error::other(error.to_string())))??;

    let key_file = settings.secrets_key_file();
    let secrets_key_included = include_secrets_key && key_file.exists();
    if secrets_key_included {
        fs::copy(&key_file, partial.join(KEY_FILE))?;
        restrict_to_owner(&partial.join(KEY_FILE))?;
    }

    let manifest = serde_json::json!({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "parley_version": env!("CARGO_PKG_VERSION"),
        "created_at": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "files": describe_files(&partial)?,
    });
    let manifest_text =
        serde_json::to_vec_pretty(&manifest).map_err(|error| Error::Corrupt(format!("manifest: {error}")))?;
    fs::write(partial.join(MANIFEST), manifest_text)?;
    sync_tree(&partial)?;
    if output.exists() {
        fs::remove_dir(output)?;
    }
    fs::rename(&partial, output)?;
    let database_bytes = fs::metadata(output.join(DATABASE_FILE))?.len();
    Ok(BackupReport { directory: output.to_owned(), database_bytes, tenant_indexes, index_files, secrets_key_included })
}

/// Checks the backup in `from` against its manifest and copies it into the settings' data
/// directory, which must not hold a database or indexes yet. The caller holds the data
/// directory's lock, then opens the runtime and calls `check_indexes`.
pub fn restore_files(settings: &Settings, from: &Path) -> Result<RestoredFiles> {
    let database_path = sqlite_path(&settings.database_url())?;
    let index_root = snapshot::index_root(&settings.data_dir);
    let staging = settings.data_dir.join(RESTORE_STAGING);
    let marker = settings.data_dir.join(RESTORE_MARKER);
    // A restore stopped before its database was in place left indexes (and the marker) behind:
    // they are its own, and go.
    if marker.exists() && !database_path.exists() {
        if index_root.exists() {
            fs::remove_dir_all(&index_root)?;
        }
        fs::remove_file(&marker)?;
    }
    if database_path.exists() || index_root.exists() {
        return Err(Error::Conflict(format!(
            "{} already holds a database or indexes; restore into a fresh data directory",
            settings.data_dir.display()
        )));
    }
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    let manifest_text = fs::read(from.join(MANIFEST)).map_err(|error| {
        Error::Conflict(format!("{} is not a Parley backup (no readable {MANIFEST}: {error})", from.display()))
    })?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_text)
        .map_err(|error| Error::Conflict(format!("{MANIFEST} is not valid JSON: {error}")))?;
    if manifest["format"] != FORMAT || manifest["format_version"] != FORMAT_VERSION {
        return Err(Error::Conflict(format!("{MANIFEST} does not describe a version {FORMAT_VERSION} Parley backup")));
    }
    let files = manifest["files"].as_array().ok_or_else(|| Error::Conflict(format!("{MANIFEST} lists no files")))?;
    let mut names = Vec::with_capacity(files.len());
    for file in files {
        let (Some(name), Some(bytes), Some(sha256)) =
            (file["path"].as_str(), file["bytes"].as_u64(), file["sha256"].as_str())
        else {
            return Err(Error::Conflict(format!("{MANIFEST} has an entry without path, bytes or sha256")));
        };
        if name.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            return Err(Error::Conflict(format!("{MANIFEST} names a path outside the backup: {name}")));
        }
        let path = from.join(name);
        let (actual_bytes, actual_sha256) = hash_file(&path)
            .map_err(|error| Error::Conflict(format!("{name} is missing or unreadable in the backup: {error}")))?;
        if actual_bytes != bytes || actual_sha256 != sha256 {
            return Err(Error::Conflict(format!("{name} does not match the manifest: the backup is damaged")));
        }
        names.push(name.to_owned());
    }
    if !names.iter().any(|name| name == DATABASE_FILE) {
        return Err(Error::Conflict(format!("the backup holds no {DATABASE_FILE}")));
    }
    let key_file = settings.secrets_key_file();
    if !names.iter().any(|name| name == KEY_FILE) && settings.secrets.key.is_none() && !key_file.exists() {
        return Err(Error::Conflict(format!(
            "the backup does not hold the secrets key: put the node's key file at {} (or set secrets.key / \
             secrets.key_file) and run the restore again; nothing was restored",
            key_file.display()
        )));
    }

    // Everything is copied into a staging directory first; then the indexes move into place and
    // the database last, so a restore stopped at any point can simply be run again.
    let mut tenants = std::collections::BTreeSet::new();
    let mut secrets_key_restored = false;
    let staged_database = staging.join(DATABASE_FILE);
    let staged_indexes = staging.join("indexes");
    for name in &names {
        let source = from.join(name);
        let target = if name == DATABASE_FILE {
            staged_database.clone()
        } else if name == KEY_FILE {
            if settings.secrets.key.is_some() || key_file.exists() {
                tracing::warn!("the backup's secrets key is not restored: this node has its own key configured");
                continue;
            }
            secrets_key_restored = true;
            key_file.clone()
        } else if let Some(rest) = name.strip_prefix("indexes/") {
            if let Some((tenant, _)) = rest.split_once('/') {
                tenants.insert(tenant.to_owned());
            }
            staged_indexes.join(rest)
        } else {
            continue;
        };
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        let temporary = partial_path(&target);
        fs::copy(&source, &temporary)?;
        fs::File::open(&temporary)?.sync_all()?;
        fs::rename(&temporary, &target)?;
        if name == KEY_FILE {
            restrict_to_owner(&target)?;
        }
    }
    fs::write(&marker, b"a restore is moving files into place\n")?;
    if staged_indexes.exists() {
        fs::rename(&staged_indexes, &index_root)?;
    }
    move_into_place(&staged_database, &database_path)?;
    fs::remove_file(&marker)?;
    fs::remove_dir_all(&staging)?;
    Ok(RestoredFiles {
        database_bytes: fs::metadata(&database_path)?.len(),
        tenant_indexes: tenants.len(),
        secrets_key_restored,
    })
}

/// Finishes interrupted document writes, then checks every tenant's index against the
/// database and rebuilds each one that differs.
pub async fn check_indexes(runtime: &Runtime) -> Result<IndexCheck> {
    let knowledge = runtime.knowledge();
    let mut check = IndexCheck { recovered_documents: knowledge.recover().await?, ..IndexCheck::default() };
    for tenant_id in knowledge.tenants().await? {
        check.tenants_checked += 1;
        if !knowledge.index_matches_database(tenant_id).await? {
            knowledge.reindex(tenant_id).await?;
            check.tenants_rebuilt += 1;
            tracing::info!(tenant_id = %tenant_id, "restored index differed from the database; rebuilt it");
        }
    }
    Ok(check)
}

fn sqlite_path(url: &str) -> Result<PathBuf> {
    if url.starts_with("postgres") {
        return Err(Error::Conflict(
            "this node uses PostgreSQL: back it up with pg_dump, restore with pg_restore, then rebuild the \
             search indexes with `parley reindex`"
                .into(),
        ));
    }
    Ok(PathBuf::from(storage::sqlite_file_path(url)))
}

/// Where a restore copies the backup's files before moving them into place (in the data
/// directory, so the moves are renames on one file system).
const RESTORE_STAGING: &str = ".restore-staging";
/// Present while a restore moves its files into place.
const RESTORE_MARKER: &str = ".restore-in-progress";

/// Renames `from` to `to`; where they are on different file systems (a database outside the
/// data directory), copies under a `.partial` name first and renames that.
fn move_into_place(from: &Path, to: &Path) -> Result<()> {
    if fs::rename(from, to).is_ok() {
        return Ok(());
    }
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    let temporary = partial_path(to);
    fs::copy(from, &temporary)?;
    fs::File::open(&temporary)?.sync_all()?;
    fs::rename(&temporary, to)?;
    fs::remove_file(from)?;
    Ok(())
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|name| name.to_os_string()).unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

/// Copies every tenant's index; returns (indexes, files).
fn copy_indexes(source_root: &Path, target_root: &Path) -> Result<(usize, usize)> {
    let (mut indexes, mut files) = (0, 0);
    let entries = match fs::read_dir(source_root) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(error) => return Err(error.into()),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_dir() || Uuid::parse_str(&name).is_err() {
            continue;
        }
        let copied = snapshot::copy_index(&entry.path(), &target_root.join(&name))?;
        if !copied.is_empty() {
            indexes += 1;
            files += copied.len();
        }
    }
    Ok((indexes, files))
}

/// Every file and every directory under `root` (`root` included among the directories).
fn walk(root: &Path) -> io::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut files, mut directories) = (Vec::new(), vec![root.to_owned()]);
    let mut next = 0;
    while let Some(directory) = directories.get(next).cloned() {
        next += 1;
        for entry in fs::read_dir(&directory)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                directories.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    Ok((files, directories))
}

/// Every file under `root`, by its path relative to `root` with `/` separators.
fn describe_files(root: &Path) -> Result<Vec<serde_json::Value>> {
    let mut found = Vec::new();
    for path in walk(root)?.0 {
        let relative = path.strip_prefix(root).map(Path::to_owned).unwrap_or_default();
        let relative = relative.components().map(|part| part.as_os_str().to_string_lossy()).collect::<Vec<_>>();
        let (bytes, sha256) = hash_file(&path)?;
        found.push(serde_json::json!({ "path": relative.join("/"), "bytes": bytes, "sha256": sha256 }));
    }
    found.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    Ok(found)
}

fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let bytes = io::copy(&mut fs::File::open(path)?, &mut hasher)?;
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// Flushes every file and directory of the backup to disk before it gets its final name.
fn sync_tree(root: &Path) -> io::Result<()> {
    let (files, directories) = walk(root)?;
    for file in files {
        fs::File::open(file)?.sync_all()?;
    }
    for directory in directories.iter().rev() {
        if let Ok(handle) = fs::File::open(directory) {
            let _ = handle.sync_all();
        }
    }
    Ok(())
}

#[cfg(unix)]
fn restrict_to_owner(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn restrict_to_owner(_path: &Path) -> io::Result<()> {
    Ok(())
}
