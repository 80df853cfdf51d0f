//! Wiring: the only module that connects sources, the decoder, the batcher and the store.
//!
//! Offline import runs on the calling thread: read → decode → batch → append, a sync per
//! batch, a compaction at the end. Live ingest (MQTT) wires the same stages through the
//! store's commit handle.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::batch::{Batcher, FlushPolicy};
use crate::clock::Clock;
use crate::decode::{DecodeConfig, DecodeStats, Decoder};
use crate::model::{ErrorClass, Message, Table};
use crate::source::{self, BadLine, InputFormat, SourceError};
use crate::store::{CompactReport, OpenReport, Store, StoreConfig, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// How an import reports progress (a progress bar in the CLI, nothing in tests).
pub trait Progress {
    fn start(&mut self, total_bytes: u64);
    fn advance(&mut self, bytes: u64);
    fn finish(&mut self);
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {
    fn start(&mut self, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub files: usize,
    pub messages: u64,
    pub decode: DecodeStats,
    pub duplicates: u64,
    pub bad_lines: u64,
    /// The first few malformed lines, for the error report.
    pub bad_line_samples: Vec<BadLine>,
    pub bytes: u64,
    pub open: OpenReport,
    pub compaction: CompactReport,
    pub elapsed_ms: u128,
}

impl ImportReport {
    pub fn rows(&self, t: Table) -> u64 {
        self.decode.rows[t.index()]
    }
    pub fn dead(&self) -> u64 {
        self.decode.dead.iter().sum()
    }
    pub fn dead_by_class(&self) -> Vec<(ErrorClass, u64)> {
        ErrorClass::ALL
            .iter()
            .map(|c| (*c, self.decode.dead[*c as usize]))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Imports files into the store at `store_cfg.data_dir`.
pub fn import_files(
    store_cfg: StoreConfig,
    paths: &[PathBuf],
    format: InputFormat,
    device: Option<&str>,
    clock: Arc<dyn Clock>,
    progress: &mut dyn Progress,
) -> Result<ImportReport, PipelineError> {
    let started = Instant::now();
    let (store, mut report) = import_open(store_cfg, paths, format, device, clock, progress)?;
    report.compaction = store.close()?;
    report.elapsed_ms = started.elapsed().as_millis();
    Ok(report)
}

/// Imports files into a scratch store (see `StoreConfig::scratch`) and returns a snapshot
/// of it without compacting: for `diagnose` and the rule test cases, which read the rows
/// once and throw the directory away.
pub fn import_scratch(
    store_cfg: StoreConfig,
    paths: &[PathBuf],
    format: InputFormat,
    device: Option<&str>,
    clock: Arc<dyn Clock>,
    progress: &mut dyn Progress,
) -> Result<(ImportReport, crate::store::Snapshot), PipelineError> {
    let started = Instant::now();
    let (store, mut report) = import_open(store_cfg, paths, format, device, clock, progress)?;
    let snapshot = store.snapshot();
    drop(store);
    report.elapsed_ms = started.elapsed().as_millis();
    Ok((report, snapshot))
}

fn import_open(
    store_cfg: StoreConfig,
    paths: &[PathBuf],
    format: InputFormat,
    device: Option<&str>,
    clock: Arc<dyn Clock>,
    progress: &mut dyn Progress,
) -> Result<(Store, ImportReport), PipelineError> {
    let (mut store, open) = Store::open(store_cfg, clock.clone())?;
    let mut report = ImportReport {
        open,
        ..Default::default()
    };
    progress.start(source::total_bytes(paths));
    let mut decoder = Decoder::new(DecodeConfig::default());
    let policy = FlushPolicy {
        max_age_ms: i64::MAX,
        ..FlushPolicy::default()
    };
    let mut batcher = Batcher::new(policy, clock);
    let mut result: Result<(), PipelineError> = Ok(());
    for path in paths {
        report.files += 1;
        let mut on_message = |m: Message| {
            if result.is_err() {
                return;
            }
            report.messages += 1;
            decoder.decode(&m, &mut batcher.builders);
            if batcher.rows() >= 65_536 {
                result = commit(&mut store, &mut batcher);
            }
        };
        let mut on_bad = |b: BadLine| {
            report.bad_lines += 1;
            if report.bad_line_samples.len() < 10 {
                report.bad_line_samples.push(b);
            }
        };
        let mut bytes = 0u64;
        let mut on_bytes = |n: u64| {
            bytes += n;
            progress.advance(n);
        };
        source::read_file(
            path,
            format,
            device,
            &mut on_message,
            &mut on_bad,
            &mut on_bytes,
        )?;
        report.bytes += bytes;
        result?;
        result = Ok(());
    }
    commit(&mut store, &mut batcher)?;
    report.duplicates = store.stats().duplicates_dropped;
    report.decode = decoder.take_stats();
    progress.finish();
    Ok((store, report))
}

fn commit(store: &mut Store, batcher: &mut Batcher) -> Result<(), PipelineError> {
    for (t, b) in batcher.flush() {
        store.append(t, &b)?;
    }
    store.sync()?;
    Ok(())
}

/// A scratch directory under the system temp dir, removed when dropped (`diagnose` on
/// files, `eval`, rule test cases).
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new() -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        loop {
            let p = base.join(format!(
                "wallscope-scratch-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            match std::fs::create_dir(&p) {
                Ok(()) => return Ok(ScratchDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub mod cases;
pub mod live;
pub mod live_rules;
