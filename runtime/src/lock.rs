//! The data-directory lock: a server holds it for its whole life, and offline maintenance
//! commands take it too, so they refuse to run while a server uses the directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Held while the value lives; the OS releases the lock when the process dies, even by `kill -9`.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock on `data_dir/parley.lock`, creating the directory if needed.
    /// `holder` describes the taker (e.g. `server`), written into the file for the next one.
    pub fn acquire(data_dir: &Path, holder: &str) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("parley.lock");
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut current = String::new();
                let _ = file.read_to_string(&mut current);
                let current = current.trim();
                let who = if current.is_empty() { "another Parley process".to_owned() } else { current.to_owned() };
                return Err(Error::Locked(format!(
                    "the data directory {} is in use by {who}; stop it first, or use the admin API of the running server",
                    data_dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(Error::Io(error)),
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{holder} (pid {})", std::process::id())?;
        file.flush()?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_is_refused_with_the_holder_named_until_release() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path(), "server").unwrap();
        let error = DataDirLock::acquire(dir.path(), "admin command").unwrap_err().to_string();
        assert!(error.contains("server (pid"), "{error}");
        drop(first);
        DataDirLock::acquire(dir.path(), "admin command").unwrap();
    }
}
