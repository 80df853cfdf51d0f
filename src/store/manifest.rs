//! The manifest: the one list of Parquet files queries may read, and the WAL LSN they cover.
//!
//! Written as `manifest.json` by temp file → fsync → rename → fsync dir, so a reader sees the
//! old or the new list, never a mix. A Parquet file not named here (a crash between its rename
//! and the manifest) is invisible to queries and removed at the next start. Files replaced by a
//! merge stay on disk for a grace period (`obsolete`), so a reader holding the previous
//! manifest can finish its query.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::wal::fsync_dir;

pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Every WAL record with an LSN ≤ this is in the Parquet files below.
    pub compacted_lsn: u64,
    pub next_file_id: u64,
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub obsolete: Vec<Obsolete>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub table: String,
    /// Path relative to the data directory.
    pub path: String,
    /// Hour partition (epoch ms of the hour start).
    pub hour_ms: i64,
    pub rows: u64,
    pub bytes: u64,
    pub min_ts_ms: i64,
    pub max_ts_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Obsolete {
    pub path: String,
    pub since_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {path} is unreadable ({source}); the data directory may be damaged")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Wal(#[from] super::wal::WalError),
}

impl Manifest {
    /// Loads the manifest, or an empty one when the directory is new.
    pub fn load(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ManifestError::Parse {
                path: path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest {
                format: 1,
                ..Default::default()
            }),
            Err(source) => Err(ManifestError::Io { path, source }),
        }
    }

    /// Durably replaces the manifest.
    pub fn store(&self, dir: &Path) -> Result<(), ManifestError> {
        let path = dir.join(MANIFEST);
        let tmp = dir.join(".manifest.json.tmp");
        let ioe = |source| ManifestError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| ManifestError::Parse {
            path: path.clone(),
            source,
        })?;
        let mut f = File::create(&tmp).map_err(ioe)?;
        f.write_all(&bytes).map_err(ioe)?;
        f.sync_all().map_err(ioe)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(ioe)?;
        fsync_dir(dir)?;
        Ok(())
    }

    pub fn files_of<'a>(&'a self, table: &'a str) -> impl Iterator<Item = &'a FileEntry> + 'a {
        self.files.iter().filter(move |f| f.table == table)
    }
}
