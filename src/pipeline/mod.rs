//! Wiring: the only module that connects sources, the decoder, the batcher and the store.
//!
//! Offline import runs in two stages on two threads (read and parse lines | decode → batch
//! → append, a sync per batch), then a compaction. Live ingest (MQTT) wires the same stages through the
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
    let (store, open) = Store::open(store_cfg, clock.clone())?;
    let mut report = ImportReport {
        open,
        ..Default::default()
    };
    progress.start(source::total_bytes(paths));
    let mut sink = Sink::new(store, clock);
    // Two stages on two threads: a reader splits lines and parses the capture envelope,
    // this thread decodes payloads into batches and appends them. Parsing and decoding
    // cost about the same, so the import runs nearly twice as fast on two cores; chunks
    // keep the channel cheap and the bounded queue keeps memory flat.
    std::thread::scope(|scope| -> Result<(), PipelineError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(4);
        let reader =
            scope.spawn(move || read_chunks(paths, format, device, &mut |c| tx.send(c).is_ok()));
        let mut failed: Option<PipelineError> = None;
        for chunk in rx.iter() {
            match chunk {
                Chunk::File => report.files += 1,
                Chunk::Items { items, bytes } => {
                    report.bytes += bytes;
                    progress.advance(bytes);
                    if failed.is_some() {
                        continue; // drain so the reader can finish
                    }
                    for item in items {
                        match item {
                            Ok(m) => {
                                report.messages += 1;
                                if let Err(e) = sink.push(&m) {
                                    failed = Some(e);
                                    break;
                                }
                            }
                            Err(b) => {
                                report.bad_lines += 1;
                                if report.bad_line_samples.len() < 10 {
                                    report.bad_line_samples.push(b);
                                }
                            }
                        }
                    }
                }
            }
        }
        let read = reader.join().expect("the import reader thread panicked");
        if let Some(e) = failed {
            return Err(e);
        }
        read.map_err(PipelineError::from)
    })?;
    let store = sink.finish(&mut report)?;
    progress.finish();
    Ok((store, report))
}

/// Imports messages that are already in memory (a simulated fleet, for tests and
/// benchmarks that skip the capture file) into a scratch store, like [`import_scratch`].
pub fn import_messages_scratch(
    store_cfg: StoreConfig,
    clock: Arc<dyn Clock>,
    messages: impl IntoIterator<Item = Message>,
) -> Result<(ImportReport, crate::store::Snapshot), PipelineError> {
    let started = Instant::now();
    let (store, open) = Store::open(store_cfg, clock.clone())?;
    let mut report = ImportReport {
        open,
        ..Default::default()
    };
    let mut sink = Sink::new(store, clock);
    for m in messages {
        report.messages += 1;
        sink.push(&m)?;
    }
    let store = sink.finish(&mut report)?;
    let snapshot = store.snapshot();
    drop(store);
    report.elapsed_ms = started.elapsed().as_millis();
    Ok((report, snapshot))
}

/// The decoding end of an import: decode → batch → append, a sync every 64 Ki rows.
struct Sink {
    store: Store,
    decoder: Decoder,
    batcher: Batcher,
}

impl Sink {
    fn new(store: Store, clock: Arc<dyn Clock>) -> Sink {
        let policy = FlushPolicy {
            max_age_ms: i64::MAX,
            ..FlushPolicy::default()
        };
        Sink {
            store,
            decoder: Decoder::new(DecodeConfig::default()),
            batcher: Batcher::new(policy, clock),
        }
    }

    fn push(&mut self, m: &Message) -> Result<(), PipelineError> {
        self.decoder.decode(m, &mut self.batcher.builders);
        if self.batcher.rows() >= 65_536 {
            commit(&mut self.store, &mut self.batcher)?;
        }
        Ok(())
    }

    /// Appends what is left and fills in the report's decode figures.
    fn finish(mut self, report: &mut ImportReport) -> Result<Store, PipelineError> {
        commit(&mut self.store, &mut self.batcher)?;
        report.duplicates = self.store.stats().duplicates_dropped;
        report.decode = self.decoder.take_stats();
        Ok(self.store)
    }
}

/// What a reader thread hands its consumer (the import's decoder, a replay's publisher).
pub(crate) enum Chunk {
    /// A new file was opened.
    File,
    /// Parsed lines (messages or malformed lines, in file order) and the bytes they span.
    Items {
        items: Vec<Result<Message, BadLine>>,
        bytes: u64,
    },
}

const CHUNK_LINES: usize = 4096;

/// Reads `paths` in chunks of lines, handing each to `send`; stops reading early (without
/// error) once `send` returns false: the consumer has stopped.
pub(crate) fn read_chunks(
    paths: &[PathBuf],
    format: InputFormat,
    device: Option<&str>,
    send: &mut dyn FnMut(Chunk) -> bool,
) -> Result<(), SourceError> {
    let mut items = Vec::with_capacity(CHUNK_LINES);
    let mut bytes = 0u64;
    // A send fails only when the decoding side has stopped (it failed): stop reading too.
    let mut gone = false;
    for path in paths {
        if !send(Chunk::File) {
            return Ok(());
        }
        let mut flush = |items: &mut Vec<_>, bytes: &mut u64, gone: &mut bool| {
            let chunk = Chunk::Items {
                items: std::mem::replace(items, Vec::with_capacity(CHUNK_LINES)),
                bytes: std::mem::take(bytes),
            };
            *gone |= !send(chunk);
        };
        {
            // The two callbacks share the chunk; a RefCell keeps them both FnMut.
            let state = std::cell::RefCell::new((&mut items, &mut bytes, &mut gone));
            source::read_file(
                path,
                format,
                device,
                &mut |m| {
                    let mut s = state.borrow_mut();
                    if *s.2 {
                        return; // nobody is listening: read on to the end without keeping anything
                    }
                    s.0.push(Ok(m));
                    if s.0.len() >= CHUNK_LINES {
                        let (i, b, g) = &mut *s;
                        flush(i, b, g);
                    }
                },
                &mut |b| state.borrow_mut().0.push(Err(b)),
                &mut |n| *state.borrow_mut().1 += n,
            )?;
        } // the callbacks' borrows end here
        flush(&mut items, &mut bytes, &mut gone);
        if gone {
            return Ok(());
        }
    }
    Ok(())
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
pub mod export;
pub mod live;
pub mod live_rules;
pub mod record;
pub mod replay;
pub mod score;
