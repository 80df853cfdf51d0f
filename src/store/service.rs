//! The commit handle: a group-committing writer thread in front of a [`Store`].
//!
//! Producers (MQTT ingest, import, replay) submit batches and get a [`CommitTicket`] that
//! resolves to the durable LSN once the fsync covering them returned — that is the moment an
//! MQTT ack may be released. While one fsync runs, further submissions queue; the next loop
//! turn appends all of them and syncs once (group commit). The request channel is bounded, so
//! a slow disk pushes back on producers instead of growing memory. Compaction runs on the same
//! thread between commits when the tail passes its thresholds.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arrow::array::RecordBatch;
use tokio::sync::{mpsc, oneshot, watch};

use super::{CompactReport, Shared, Snapshot, Store, StoreError, StoreStats};
use crate::model::Table;

/// Resolves to the durable LSN covering a submission (or the store's failure).
pub type CommitTicket = oneshot::Receiver<Result<u64, String>>;

enum Request {
    Write {
        batches: Vec<(Table, RecordBatch)>,
        done: oneshot::Sender<Result<u64, String>>,
    },
    Compact(oneshot::Sender<Result<CompactReport, String>>),
    Stats(oneshot::Sender<StoreStats>),
    Tick,
}

/// Cloneable handle to the writer thread.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Request>,
    durable: watch::Receiver<u64>,
    shared: Arc<Shared>,
    dir: std::path::PathBuf,
}

/// Owns the writer thread; `close` flushes and compacts.
pub struct StoreService {
    handle: StoreHandle,
    thread: Option<JoinHandle<Result<CompactReport, StoreError>>>,
    ticker: Option<JoinHandle<()>>,
}

impl StoreService {
    /// Starts the writer thread. `queue_batches` bounds the submissions waiting for a commit.
    pub fn start(store: Store, queue_batches: usize) -> StoreService {
        let (tx, mut rx) = mpsc::channel::<Request>(queue_batches.max(1));
        let (durable_tx, durable_rx) = watch::channel(store.durable_lsn());
        let shared = store.shared();
        let dir = store.dir().to_path_buf();
        let thread = std::thread::Builder::new()
            .name("wallscope-store".into())
            .spawn(move || writer_loop(store, &mut rx, durable_tx))
            .ok();
        // The ticker holds only a weak sender so dropping every handle still ends the writer.
        let weak = tx.downgrade();
        let ticker = std::thread::Builder::new()
            .name("wallscope-store-tick".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(1000));
                    let Some(tx) = weak.upgrade() else { break };
                    // A full queue means the writer is busy anyway: skip this tick.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Request::Tick) {
                        break;
                    }
                }
            })
            .ok();
        StoreService {
            handle: StoreHandle {
                tx,
                durable: durable_rx,
                shared,
                dir,
            },
            thread,
            ticker,
        }
    }

    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// Waits for queued commits, compacts the tail and stops the writer.
    pub fn close(mut self) -> Result<CompactReport, StoreError> {
        let StoreService { handle, thread, .. } = &mut self;
        // Dropping our sender lets the writer drain and exit once other handles are gone.
        drop(std::mem::replace(&mut handle.tx, mpsc::channel(1).0));
        let r = match thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(StoreError::Failed("store writer thread panicked".into()))),
            None => Err(StoreError::Failed(
                "store writer thread did not start".into(),
            )),
        };
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        r
    }
}

impl StoreHandle {
    /// Submits batches for a durable commit (waits while the queue is full).
    pub async fn submit(&self, batches: Vec<(Table, RecordBatch)>) -> CommitTicket {
        let (done, ticket) = oneshot::channel();
        // If the writer is gone, `done` is dropped and the ticket reports it.
        let _ = self.tx.send(Request::Write { batches, done }).await;
        ticket
    }

    /// Blocking form of [`submit`](Self::submit) for threads outside the async runtime.
    pub fn submit_blocking(&self, batches: Vec<(Table, RecordBatch)>) -> CommitTicket {
        let (done, ticket) = oneshot::channel();
        let _ = self.tx.blocking_send(Request::Write { batches, done });
        ticket
    }

    /// The highest LSN known durable.
    pub fn durable_lsn(&self) -> u64 {
        *self.durable.borrow()
    }

    /// A receiver that changes whenever the durable LSN advances.
    pub fn durable_watch(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot(&self.dir)
    }

    pub async fn compact(&self) -> Result<CompactReport, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Compact(tx))
            .await
            .map_err(|_| "store writer stopped".to_string())?;
        rx.await.map_err(|_| "store writer stopped".to_string())?
    }

    pub async fn stats(&self) -> Option<StoreStats> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Request::Stats(tx)).await.ok()?;
        rx.await.ok()
    }
}

/// Result of a ticket that never resolved: the writer stopped before committing.
pub fn ticket_error(e: oneshot::error::RecvError) -> String {
    format!("store writer stopped before the commit ({e})")
}

fn writer_loop(
    mut store: Store,
    rx: &mut mpsc::Receiver<Request>,
    durable: watch::Sender<u64>,
) -> Result<CompactReport, StoreError> {
    let mut waiting: Vec<oneshot::Sender<Result<u64, String>>> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut reqs = vec![first];
        // Group commit: everything that queued during the last fsync shares the next one.
        while reqs.len() < 4096 {
            match rx.try_recv() {
                Ok(r) => reqs.push(r),
                Err(_) => break,
            }
        }
        let mut failure: Option<String> = None;
        let mut controls = Vec::new();
        for r in reqs {
            match r {
                Request::Write { batches, done } => {
                    for (t, b) in &batches {
                        if failure.is_none()
                            && let Err(e) = store.append(*t, b)
                        {
                            failure = Some(e.to_string());
                        }
                    }
                    waiting.push(done);
                }
                other => controls.push(other),
            }
        }
        if !waiting.is_empty() {
            let result = match failure {
                Some(f) => Err(f),
                None => store.sync().map_err(|e| e.to_string()),
            };
            if let Ok(lsn) = result {
                durable.send_replace(lsn);
            }
            for w in waiting.drain(..) {
                let _ = w.send(result.clone());
            }
        }
        for c in controls {
            match c {
                Request::Compact(done) => {
                    let _ = done.send(store.compact().map_err(|e| e.to_string()));
                }
                Request::Stats(done) => {
                    let _ = done.send(store.stats().clone());
                }
                Request::Tick | Request::Write { .. } => {}
            }
        }
        if store.wants_compaction()
            && let Err(e) = store.compact()
        {
            tracing::error!(error = %e, "compaction failed; rows stay in the WAL");
        }
    }
    store.close()
}
