//! The durable store: WAL → Parquet in a data directory, with exactly-once rows.
//!
//! Owns the data directory (`wal/`, `manifest.json`, `<table>/date=YYYY-MM-DD/hour=HH/*.parquet`,
//! `LOCK`). One writer per directory, enforced by an OS lock on `LOCK`. Rows are admitted through
//! the dedup index (a redelivered message is dropped, never stored twice), appended to the WAL,
//! and become durable at [`Store::sync`] — the LSN it returns is what callers release MQTT acks
//! from ([`service::StoreHandle`] is the group-committing front end for concurrent writers).
//! Durable rows stay in an in-memory tail until compaction writes them to Parquet; queries see
//! Parquet files from the manifest plus the tail, so every durable row is visible exactly once.
//!
//! Knows nothing of MQTT, decoding or rules. Parquet files are written with std::fs because
//! durability needs fsync of the file and its directory; they are read through DataFusion's
//! object_store layer, so the same layout can be served from S3 later.

pub mod catalog;
pub mod dedup;
pub mod files;
pub mod manifest;
pub mod service;
pub mod wal;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use arrow::array::RecordBatch;

use crate::clock::Clock;
use crate::model::Table;
use dedup::{DedupIndex, hour_of};
use manifest::{FileEntry, Manifest, ManifestError, Obsolete};
use wal::{RecoveryReport, WalError, WalWriter};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "data directory {dir} is in use by another wallscope process{}; stop it or pass a different --data-dir",
        .pid.as_ref().map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked { dir: PathBuf, pid: Option<String> },
    #[error("data directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    File(#[from] files::FileError),
    #[error(
        "the store failed earlier ({0}) and accepts no more writes; restart to recover from the WAL"
    )]
    Failed(String),
    #[error(transparent)]
    Keys(#[from] dedup::KeyError),
}

/// Store settings (units in the names).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// Start a new WAL segment after this many bytes.
    pub wal_segment_bytes: u64,
    /// Compact the tail into Parquet once it holds this many rows…
    pub compact_after_rows: usize,
    /// …or once its oldest row has waited this long.
    pub compact_after_ms: i64,
    /// A partition with more files than this is merged into one at the next compaction.
    pub max_files_per_partition: usize,
    /// Hour partitions whose dedup keys stay in memory.
    pub dedup_partitions: usize,
    /// Files replaced by a merge are deleted after this long (readers may still hold them).
    pub obsolete_grace_ms: i64,
    /// fsync WAL commits. Off only for scratch stores that never outlive the process
    /// (`diagnose` on files, rule test cases): there nothing is acknowledged to anyone.
    pub fsync: bool,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            wal_segment_bytes: 64 << 20,
            compact_after_rows: 2_000_000,
            compact_after_ms: 5 * 60 * 1000,
            max_files_per_partition: 4,
            dedup_partitions: 96,
            obsolete_grace_ms: 5 * 60 * 1000,
            fsync: true,
        }
    }

    /// A scratch store: no fsync, and no compaction until the tail is very large (queries
    /// read the in-memory tail directly).
    pub fn scratch(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            fsync: false,
            compact_after_rows: 50_000_000,
            compact_after_ms: i64::MAX,
            ..StoreConfig::new(data_dir)
        }
    }
}

/// One durable batch not yet compacted.
#[derive(Clone)]
pub struct TailEntry {
    pub lsn: u64,
    pub table: Table,
    pub batch: RecordBatch,
}

/// What queries read: the manifest's files plus the tail, taken together.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub files: Vec<FileEntry>,
    pub tail: Vec<TailEntry>,
}

impl Snapshot {
    /// Reads a consistent snapshot of a data directory without taking its lock (for queries
    /// from another process while a writer runs). Retries if a compaction moves rows between
    /// the WAL and Parquet while reading.
    pub fn load(dir: &Path) -> Result<Snapshot, StoreError> {
        let dir = absolute(dir)?;
        for _ in 0..20 {
            let m = Manifest::load(&dir)?;
            let recs = wal::read_all(&dir.join("wal"), m.compacted_lsn)?;
            let again = Manifest::load(&dir)?;
            if again.compacted_lsn != m.compacted_lsn {
                continue;
            }
            return Ok(Snapshot {
                dir,
                files: m.files,
                tail: recs
                    .into_iter()
                    .map(|r| TailEntry {
                        lsn: r.lsn,
                        table: r.table,
                        batch: r.batch,
                    })
                    .collect(),
            });
        }
        Err(StoreError::Failed(
            "could not read a stable snapshot while compaction kept running".into(),
        ))
    }

    pub fn files_of(&self, t: Table) -> impl Iterator<Item = &FileEntry> {
        self.files.iter().filter(move |f| f.table == t.name())
    }

    pub fn tail_of(&self, t: Table) -> impl Iterator<Item = &RecordBatch> {
        self.tail
            .iter()
            .filter(move |e| e.table == t)
            .map(|e| &e.batch)
    }

    /// Rows of a table (Parquet + tail).
    pub fn rows(&self, t: Table) -> u64 {
        self.files_of(t).map(|f| f.rows).sum::<u64>()
            + self.tail_of(t).map(|b| b.num_rows() as u64).sum::<u64>()
    }
}

fn absolute(dir: &Path) -> Result<PathBuf, StoreError> {
    std::path::absolute(dir).map_err(|source| StoreError::Io {
        dir: dir.to_path_buf(),
        source,
    })
}

/// State shared with in-process readers.
#[derive(Default)]
pub struct Shared {
    manifest: RwLock<Manifest>,
    tail: RwLock<Vec<TailEntry>>,
}

impl Shared {
    /// A consistent view: both locks are taken in the same order compaction takes them.
    pub fn snapshot(&self, dir: &Path) -> Snapshot {
        let m = self.manifest.read().unwrap_or_else(|e| e.into_inner());
        let t = self.tail.read().unwrap_or_else(|e| e.into_inner());
        Snapshot {
            dir: dir.to_path_buf(),
            files: m.files.clone(),
            tail: t.clone(),
        }
    }
}

/// What opening a store found and did.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    pub recovery: RecoveryReport,
    pub tail_rows: u64,
    pub orphan_files_removed: usize,
}

/// Counters a store keeps (read by metrics and `status`).
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    pub rows_appended: u64,
    pub duplicates_dropped: u64,
    pub syncs: u64,
    pub compactions: u64,
    pub files_written: u64,
    pub files_merged: u64,
    pub parquet_bytes_written: u64,
    pub torn_tails: u64,
}

/// Report of one compaction.
#[derive(Debug, Clone, Default)]
pub struct CompactReport {
    pub rows: u64,
    pub files_written: usize,
    pub files_merged: usize,
    pub through_lsn: u64,
}

/// The single writer of a data directory.
pub struct Store {
    dir: PathBuf,
    cfg: StoreConfig,
    _lock: File,
    wal: WalWriter,
    dedup: DedupIndex,
    shared: Arc<Shared>,
    manifest: Manifest,
    /// Appended but not yet synced: invisible to queries until the fsync.
    pending: Vec<TailEntry>,
    tail_rows: usize,
    tail_since_ms: Option<i64>,
    stats: StoreStats,
    clock: Arc<dyn Clock>,
    failed: Option<String>,
}

impl Store {
    /// Opens (creating if needed) and recovers a data directory.
    pub fn open(
        cfg: StoreConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Store, OpenReport), StoreError> {
        let dir = absolute(&cfg.data_dir)?;
        files::create_dir_durable(&dir).map_err(StoreError::File)?;
        let lock = lock_dir(&dir)?;
        let manifest = Manifest::load(&dir)?;
        let orphans = remove_orphans(&dir, &manifest)?;
        let mut dedup = DedupIndex::new(cfg.dedup_partitions);
        let mut records = Vec::new();
        let (mut wal, recovery) = WalWriter::recover(
            &dir.join("wal"),
            manifest.compacted_lsn,
            cfg.wal_segment_bytes,
            |rec| {
                records.push(rec);
                Ok(())
            },
        )?;
        wal.set_fsync(cfg.fsync);
        let mut tail = Vec::with_capacity(records.len());
        let mut tail_rows = 0usize;
        for rec in records {
            // Records were de-duplicated before they were written; admitting them again
            // rebuilds the index (and drops a duplicate an older version may have left).
            let admitted = dedup.admit(rec.table, &rec.batch, |t, h| {
                load_keys(&dir, &manifest, t, h)
            })?;
            if let Some(batch) = admitted {
                tail_rows += batch.num_rows();
                tail.push(TailEntry {
                    lsn: rec.lsn,
                    table: rec.table,
                    batch,
                });
            }
        }
        wal.delete_through(manifest.compacted_lsn)?;
        let shared = Arc::new(Shared {
            manifest: RwLock::new(manifest.clone()),
            tail: RwLock::new(tail),
        });
        let now = clock.now_ms();
        let report = OpenReport {
            tail_rows: tail_rows as u64,
            orphan_files_removed: orphans,
            recovery: recovery.clone(),
        };
        let store = Store {
            dir,
            cfg,
            _lock: lock,
            wal,
            dedup,
            shared,
            manifest,
            pending: Vec::new(),
            tail_rows,
            tail_since_ms: (tail_rows > 0).then_some(now),
            stats: StoreStats {
                torn_tails: recovery.torn_tails,
                ..Default::default()
            },
            clock,
            failed: None,
        };
        Ok((store, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot(&self.dir)
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    pub fn durable_lsn(&self) -> u64 {
        self.wal.durable_lsn()
    }

    fn check(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(why) => Err(StoreError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn fail<T>(&mut self, e: StoreError) -> Result<T, StoreError> {
        self.failed = Some(e.to_string());
        Err(e)
    }

    /// Appends a batch (not yet durable). Rows already stored are dropped; returns the WAL
    /// LSN of what was written, or None when every row was a duplicate.
    pub fn append(&mut self, table: Table, batch: &RecordBatch) -> Result<Option<u64>, StoreError> {
        self.check()?;
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let (dir, manifest) = (&self.dir, &self.manifest);
        let before = self.dedup.duplicates;
        // Keys are recorded as the rows are admitted: if the WAL append then fails, the
        // index would claim rows that were never stored, so the store must stop here and
        // rebuild the index from the WAL at the next start.
        let admitted = match self
            .dedup
            .admit(table, batch, |t, h| load_keys(dir, manifest, t, h))
        {
            Ok(a) => a,
            Err(e) => return self.fail(e),
        };
        self.stats.duplicates_dropped += self.dedup.duplicates - before;
        let Some(batch) = admitted else {
            return Ok(None);
        };
        let lsn = match self.wal.append(table, &batch) {
            Ok(l) => l,
            Err(e) => return self.fail(e.into()),
        };
        self.stats.rows_appended += batch.num_rows() as u64;
        self.tail_rows += batch.num_rows();
        self.tail_since_ms
            .get_or_insert_with(|| self.clock.now_ms());
        // Queries see a row once it is durable; until then it waits in `pending`.
        self.pending.push(TailEntry { lsn, table, batch });
        Ok(Some(lsn))
    }

    /// Makes every appended row durable and visible to queries; returns the durable LSN.
    pub fn sync(&mut self) -> Result<u64, StoreError> {
        self.check()?;
        let lsn = match self.wal.sync() {
            Ok(l) => l,
            Err(e) => return self.fail(e.into()),
        };
        self.stats.syncs += 1;
        if !self.pending.is_empty() {
            let mut t = self.shared.tail.write().unwrap_or_else(|e| e.into_inner());
            t.append(&mut self.pending);
        }
        Ok(lsn)
    }

    /// Whether the tail has grown or aged past the compaction thresholds.
    pub fn wants_compaction(&self) -> bool {
        self.tail_rows >= self.cfg.compact_after_rows
            || self
                .tail_since_ms
                .is_some_and(|t| self.clock.now_ms() - t >= self.cfg.compact_after_ms)
    }

    /// Writes the durable tail to Parquet, commits the manifest, then drops the WAL it covers.
    /// Any failure stops the store: after a partial compaction the in-memory manifest and
    /// file ids may disagree with the disk, and a restart re-derives both from the disk.
    pub fn compact(&mut self) -> Result<CompactReport, StoreError> {
        self.check()?;
        match self.compact_inner() {
            Ok(r) => Ok(r),
            Err(e) => self.fail(e),
        }
    }

    fn compact_inner(&mut self) -> Result<CompactReport, StoreError> {
        self.sync()?;
        let tail = self.snapshot().tail;
        if tail.is_empty() {
            return Ok(CompactReport::default());
        }
        let through = match self.wal.rotate() {
            Ok(l) => l,
            Err(e) => return self.fail(e.into()),
        };
        let mut groups: BTreeMap<(Table, i64), Vec<RecordBatch>> = BTreeMap::new();
        for e in &tail {
            for (hour, part) in split_by_hour(&e.batch)? {
                groups.entry((e.table, hour)).or_default().push(part);
            }
        }
        let mut next = self.manifest.clone();
        let now = self.clock.now_ms();
        let mut report = CompactReport {
            through_lsn: through,
            ..Default::default()
        };
        for ((table, hour), mut batches) in groups {
            let existing: Vec<FileEntry> = next
                .files
                .iter()
                .filter(|f| f.table == table.name() && f.hour_ms == hour)
                .cloned()
                .collect();
            if existing.len() + 1 > self.cfg.max_files_per_partition {
                for f in &existing {
                    batches.extend(files::read_parquet(&self.dir.join(&f.path), None)?);
                }
                next.files
                    .retain(|f| !(f.table == table.name() && f.hour_ms == hour));
                next.obsolete.extend(existing.iter().map(|f| Obsolete {
                    path: f.path.clone(),
                    since_ms: now,
                }));
                report.files_merged += existing.len();
            }
            let rel = partition_path(table, hour, next.next_file_id);
            next.next_file_id += 1;
            let w = files::write_parquet(table, &batches, &self.dir.join(&rel))?;
            report.rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            report.files_written += 1;
            self.stats.parquet_bytes_written += w.bytes;
            next.files.push(FileEntry {
                table: table.name().into(),
                path: rel,
                hour_ms: hour,
                rows: w.rows,
                bytes: w.bytes,
                min_ts_ms: w.min_ts_ms,
                max_ts_ms: w.max_ts_ms,
            });
        }
        next.compacted_lsn = through;
        // Files whose grace period is over can go now that no new reader can find them.
        let grace = self.cfg.obsolete_grace_ms;
        let (expired, keep): (Vec<_>, Vec<_>) = next
            .obsolete
            .drain(..)
            .partition(|o| now - o.since_ms >= grace);
        next.obsolete = keep;
        next.store(&self.dir)?;
        {
            let mut m = self
                .shared
                .manifest
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let mut t = self.shared.tail.write().unwrap_or_else(|e| e.into_inner());
            *m = next.clone();
            t.retain(|e| e.lsn > through);
        }
        self.manifest = next;
        self.tail_rows = self
            .shared
            .tail
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|e| e.batch.num_rows())
            .sum();
        self.tail_since_ms = (self.tail_rows > 0).then_some(now);
        self.wal.delete_through(through)?;
        for o in expired {
            let _ = fs::remove_file(self.dir.join(&o.path));
        }
        self.dedup.unpin_all();
        self.stats.compactions += 1;
        self.stats.files_written += report.files_written as u64;
        self.stats.files_merged += report.files_merged as u64;
        Ok(report)
    }

    /// Syncs and compacts everything (a clean shutdown leaves no WAL to replay).
    pub fn close(mut self) -> Result<CompactReport, StoreError> {
        self.compact()
    }
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("LOCK");
    let ioe = |source| StoreError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(ioe)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let pid = fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(ioe(e)),
    }
    f.set_len(0).map_err(ioe)?;
    write!(f, "{}", std::process::id()).map_err(ioe)?;
    Ok(f)
}

/// A shared hold on a data directory's lock, for a reader that must not run beside a
/// writer (and must not let one start meanwhile): `Ok(Some(file))` holds it until dropped,
/// `Ok(None)` when no store was ever opened here (no lock file), `Err(Locked)` while a
/// writer holds it.
pub fn hold_shared(dir: &Path) -> Result<Option<fs::File>, StoreError> {
    let path = dir.join("LOCK");
    let f = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                dir: dir.to_path_buf(),
                source,
            });
        }
    };
    match f.try_lock_shared() {
        Ok(()) => Ok(Some(f)),
        Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            dir: dir.to_path_buf(),
            pid: fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        }),
        Err(fs::TryLockError::Error(source)) => Err(StoreError::Io {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

/// `<table>/date=YYYY-MM-DD/hour=HH/part-<id>.parquet`.
fn partition_path(table: Table, hour_ms: i64, id: u64) -> String {
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(hour_ms).unwrap_or_default();
    format!(
        "{}/date={}/hour={}/part-{id:010}.parquet",
        table.name(),
        t.format("%Y-%m-%d"),
        t.format("%H")
    )
}

/// Splits a batch into per-hour pieces of its `ts`.
fn split_by_hour(batch: &RecordBatch) -> Result<Vec<(i64, RecordBatch)>, StoreError> {
    use arrow::array::AsArray;
    use arrow::datatypes::TimestampMillisecondType;
    let ts = batch.column(1).as_primitive::<TimestampMillisecondType>();
    let hours: Vec<i64> = ts.values().iter().map(|t| hour_of(*t)).collect();
    let first = hours.first().copied().unwrap_or(0);
    if hours.iter().all(|h| *h == first) {
        return Ok(vec![(first, batch.clone())]);
    }
    let mut distinct: Vec<i64> = hours.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let mut out = Vec::new();
    for h in distinct {
        let mask = arrow::array::BooleanArray::from_iter(hours.iter().map(|x| Some(*x == h)));
        let part = arrow::compute::filter_record_batch(batch, &mask)
            .map_err(|e| StoreError::File(files::FileError::Arrow(e)))?;
        out.push((h, part));
    }
    Ok(out)
}

/// Dedup keys already in Parquet for one partition.
fn load_keys(dir: &Path, m: &Manifest, table: Table, hour: i64) -> Result<Vec<u64>, StoreError> {
    let mut keys = Vec::new();
    for f in m.files_of(table.name()).filter(|f| f.hour_ms == hour) {
        let cols = dedup::key_columns(table);
        for b in files::read_parquet(&dir.join(&f.path), Some(cols))? {
            keys.extend(dedup::row_keys(table, &b)?.into_iter().map(|(_, k)| k));
        }
    }
    Ok(keys)
}

/// Removes temp files and Parquet files the manifest does not name (left by a crash between
/// a file's rename and the manifest commit). Returns how many were removed.
fn remove_orphans(dir: &Path, m: &Manifest) -> Result<usize, StoreError> {
    let known: std::collections::HashSet<&str> = m
        .files
        .iter()
        .map(|f| f.path.as_str())
        .chain(m.obsolete.iter().map(|o| o.path.as_str()))
        .collect();
    let mut removed = 0;
    for t in Table::ALL {
        let root = dir.join(t.name());
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p
                    .strip_prefix(dir)
                    .ok()
                    .and_then(|r| r.to_str())
                    .unwrap_or("");
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.starts_with(".tmp-") || (name.ends_with(".parquet") && !known.contains(rel))
                {
                    tracing::info!(file = %p.display(), "removing file left by an interrupted compaction");
                    fs::remove_file(&p).map_err(|source| StoreError::Io {
                        dir: dir.to_path_buf(),
                        source,
                    })?;
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests;
