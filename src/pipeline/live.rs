//! Live ingest: MQTT source → decode → batch → store commit handle → acks.
//!
//! Three tasks in a line, each owning its state:
//! - the MQTT source's poll loop (network, acks on the wire);
//! - the writer, which decodes deliveries into the batcher and, when the flush policy says
//!   so, submits the batch to the store's writer thread, getting a commit ticket;
//! - the acker, which awaits tickets in submission order and hands each batch's ack tokens
//!   back to the source only once the ticket reports the batch durable.
//!
//! So no message is acked before the fsync that covers it, acks leave in receive order, and
//! a dead letter is acked exactly like a row (it is durable in `dead_letters`). On a store
//! failure nothing further is acked: the broker keeps the rest for the next run. With rules
//! on, the acker also tells the live evaluator (`live_rules`) which devices each durable
//! batch touched; it runs on its own task and never holds up acks. The
//! counters are written to the data directory every few seconds ([`crate::ingest::STATUS_FILE`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::live_rules::{self, Dirty};
use crate::batch::{Batcher, FlushPolicy};
use crate::clock::Clock;
use crate::decode::{DecodeConfig, Decoder, Outcome};
use crate::ingest::{
    AckSender, AckToken, IngestError, IngestMetrics, MetricsSnapshot, MqttConfig, MqttSource,
    write_status,
};
use crate::store::service::{CommitTicket, StoreService, ticket_error};
use crate::store::{CompactReport, OpenReport, Store, StoreConfig, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("the store failed, nothing more is acknowledged: {0}")]
    Commit(String),
}

/// Settings of a live ingest.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub store: StoreConfig,
    pub mqtt: MqttConfig,
    pub decode: DecodeConfig,
    /// Rows, bytes and age (the flush interval) that cut a batch.
    pub flush: FlushPolicy,
    /// How often the counters are written to the status file.
    pub status_interval_ms: u64,
    /// Evaluate the rules as batches become durable (None: ingest only).
    pub rules: Option<super::live_rules::LiveRules>,
}

/// What a live ingest did, when it ends.
#[derive(Debug, Clone, Default)]
pub struct LiveReport {
    pub open: OpenReport,
    pub metrics: MetricsSnapshot,
    pub duplicates: u64,
    pub compaction: CompactReport,
}

struct Committed {
    ticket: CommitTicket,
    tokens: Vec<AckToken>,
    /// What the batch brings the live rules (None when they are off).
    dirty: Option<Dirty>,
}

/// Runs until `stop` turns true (then drains: commits what was received, acks it, compacts)
/// or until a fatal error. `metrics` is shared with whoever shows progress.
pub async fn run(
    cfg: LiveConfig,
    clock: Arc<dyn Clock>,
    metrics: Arc<IngestMetrics>,
    stop: watch::Receiver<bool>,
) -> Result<LiveReport, LiveError> {
    let store_cfg = cfg.store.clone();
    let c = clock.clone();
    let (store, open) = tokio::task::spawn_blocking(move || Store::open(store_cfg, c))
        .await
        .map_err(|e| LiveError::Commit(format!("store open panicked: {e}")))??;
    let data_dir = store.dir().to_path_buf();
    let service = StoreService::start(store, 64);
    let handle = service.handle();
    metrics.set_started(clock.now_ms());

    // A store failure stops the source too, through the same flag the caller uses.
    let (stop_tx, stop_rx) = watch::channel(false);
    let forward = {
        let mut outer = stop.clone();
        let tx = stop_tx.clone();
        tokio::spawn(async move {
            while !*outer.borrow() {
                if outer.changed().await.is_err() {
                    return; // the caller can no longer ask us to stop
                }
            }
            let _ = tx.send(true);
        })
    };

    let (source, acks) = MqttSource::start(
        cfg.mqtt.clone(),
        metrics.clone(),
        clock.clone(),
        stop_rx.clone(),
    )?;
    let (ctx, crx) = mpsc::unbounded_channel::<Committed>();
    let rules_on = cfg.rules.is_some();
    let (dirty_tx, rules_task) = match cfg.rules.clone() {
        Some(r) => {
            let (tx, rx) = mpsc::unbounded_channel::<Dirty>();
            let task = tokio::spawn(live_rules::run(
                r,
                handle.clone(),
                data_dir.clone(),
                rx,
                metrics.clone(),
                clock.clone(),
            ));
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let acker = tokio::spawn(acker(
        crx,
        acks,
        dirty_tx,
        metrics.clone(),
        clock.clone(),
        stop_tx.clone(),
    ));
    let status = tokio::spawn(status_writer(
        data_dir.clone(),
        metrics.clone(),
        clock.clone(),
        cfg.status_interval_ms,
        stop_rx.clone(),
    ));

    let mut deliveries = source.deliveries;
    let mut decoder = Decoder::new(cfg.decode.clone());
    let mut batcher = Batcher::new(cfg.flush.clone(), clock.clone());
    let mut tokens: Vec<AckToken> = Vec::new();
    let mut stop_seen = stop_rx.clone();
    let mut stopping = false;
    let mut inbox = Vec::with_capacity(4096);
    loop {
        let wait_ms = batcher.ms_until_due().unwrap_or(i64::MAX).max(0) as u64;
        // Take whatever is queued in one go: one wake-up per burst, not per message.
        let commit_now = tokio::select! {
            biased;
            n = deliveries.recv_many(&mut inbox, 4096) => {
                if n == 0 {
                    break;
                }
                for d in inbox.drain(..) {
                    if let Outcome::Dead(_) = decoder.decode(&d.message, &mut batcher.builders) {
                        metrics.dead_letters.inc();
                    }
                    tokens.push(d.ack);
                }
                batcher.note_rows();
                batcher.due() || (stopping && deliveries.is_empty())
            },
            _ = stop_seen.changed(), if !stopping => {
                stopping = true;
                true
            },
            _ = tokio::time::sleep(Duration::from_millis(wait_ms)), if !tokens.is_empty() => true,
        };
        if commit_now && !tokens.is_empty() {
            let batches = batcher.flush();
            let dirty = rules_on.then(|| Dirty::of(&batches));
            let ticket = handle.submit(batches).await;
            let c = Committed {
                ticket,
                tokens: std::mem::take(&mut tokens),
                dirty,
            };
            if ctx.send(c).is_err() {
                break; // the acker stopped on a store failure
            }
        }
    }
    if !tokens.is_empty() {
        let batches = batcher.flush();
        let dirty = rules_on.then(|| Dirty::of(&batches));
        let ticket = handle.submit(batches).await;
        let _ = ctx.send(Committed {
            ticket,
            tokens,
            dirty,
        });
    }
    drop(ctx);
    let commit_result = acker
        .await
        .unwrap_or_else(|e| Err(format!("acker panicked: {e}")));
    // The acker dropped its sender: the rules evaluate what is left, store, and end.
    if let Some(t) = rules_task {
        let _ = t.await;
    }
    let source_result = MqttSource::join(source.task).await;
    let _ = stop_tx.send(true);
    forward.abort();
    let _ = status.await;
    let duplicates = handle
        .stats()
        .await
        .map(|s| s.duplicates_dropped)
        .unwrap_or(0);
    drop(handle);
    let compaction = tokio::task::spawn_blocking(move || service.close())
        .await
        .map_err(|e| LiveError::Commit(format!("store close panicked: {e}")))??;
    let snapshot = metrics.snapshot(clock.now_ms());
    write_status(&data_dir, &snapshot);
    commit_result.map_err(LiveError::Commit)?;
    source_result?;
    Ok(LiveReport {
        open,
        metrics: snapshot,
        duplicates,
        compaction,
    })
}

/// Awaits tickets in order; returns tokens of durable batches to the source.
async fn acker(
    mut rx: mpsc::UnboundedReceiver<Committed>,
    acks: AckSender,
    rules: Option<mpsc::UnboundedSender<Dirty>>,
    metrics: Arc<IngestMetrics>,
    clock: Arc<dyn Clock>,
    stop: watch::Sender<bool>,
) -> Result<(), String> {
    while let Some(c) = rx.recv().await {
        match c.ticket.await.map_err(ticket_error).and_then(|r| r) {
            Ok(_lsn) => {
                let now = clock.now_ms();
                for t in &c.tokens {
                    let waited = now - t.received_at_ms();
                    metrics.ack_latency.record_ms(waited.max(0) as u64);
                }
                metrics.rows_durable.add(c.tokens.len() as u64);
                metrics.commits.inc();
                acks.ack(c.tokens);
                if let (Some(tx), Some(mut d)) = (&rules, c.dirty) {
                    d.durable_at = Some(std::time::Instant::now());
                    // A closed channel means the evaluator ended; ingest goes on regardless.
                    let _ = tx.send(d);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed; stopping without acknowledging the rest");
                let _ = stop.send(true);
                // Dropping `acks` (on return) tells the source nothing more will be acked.
                return Err(e);
            }
        }
    }
    Ok(())
}

async fn status_writer(
    dir: PathBuf,
    metrics: Arc<IngestMetrics>,
    clock: Arc<dyn Clock>,
    every_ms: u64,
    mut stop: watch::Receiver<bool>,
) {
    let every = Duration::from_millis(every_ms.max(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
        }
        let snap = metrics.snapshot(clock.now_ms());
        let d = dir.clone();
        let _ = tokio::task::spawn_blocking(move || write_status(&d, &snap)).await;
    }
}
