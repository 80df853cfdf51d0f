//! Live rule evaluation: as batches become durable, evaluate the pack incrementally — only
//! the devices with new data, reading back only as far as the longest rule window before
//! the new data — and merge the findings into the `findings` table, so an ongoing episode
//! is extended, never repeated. Runs on its own task, fed by the acker after each durable
//! batch; it never holds up ingest or acks (a slow evaluation just covers more batches next
//! time). Every `full_every` it also sweeps the devices that sent nothing since the last
//! sweep, so a device that stopped sending (F00) is noticed although it brings no new data;
//! devices that keep sending are never evaluated twice for the same data, which is what
//! lets a large fleet run live (a whole-fleet pass would grow with the fleet).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimestampMillisecondType};
use tokio::sync::mpsc;

use crate::ingest::IngestMetrics;
use crate::model::Table;
use crate::query::QueryConfig;
use crate::rules::{self, Finding, Pack, Scope};
use crate::store::service::StoreHandle;

/// Live rule settings.
#[derive(Debug, Clone)]
pub struct LiveRules {
    pub pack: Pack,
    /// Registry replacing the data directory's `devices.csv`.
    pub devices: Option<RecordBatch>,
    /// Shortest time between two evaluations.
    pub interval_ms: u64,
    /// Time between sweeps of the devices that went quiet.
    pub full_every_ms: u64,
}

/// What a durable batch brought: its devices and its oldest event time.
#[derive(Debug, Clone, Default)]
pub struct Dirty {
    pub devices: BTreeSet<String>,
    pub min_ts_ms: Option<i64>,
    /// When the batch became durable (wall clock), for the lag figure.
    pub durable_at: Option<Instant>,
}

impl Dirty {
    /// The devices and oldest `ts` of the telemetry tables in `batches`.
    pub fn of(batches: &[(Table, RecordBatch)]) -> Dirty {
        let mut d = Dirty::default();
        for (t, b) in batches {
            if !Table::TELEMETRY.contains(t) || b.num_rows() == 0 {
                continue;
            }
            if let Ok(ids) = arrow::compute::cast(b.column(0), &DataType::Utf8) {
                let ids = ids.as_string::<i32>();
                let mut last: Option<&str> = None;
                for id in ids.iter().flatten() {
                    // Batches arrive grouped by device more often than not: skip repeats cheaply.
                    if last != Some(id) {
                        if !d.devices.contains(id) {
                            d.devices.insert(id.to_string());
                        }
                        last = Some(id);
                    }
                }
            }
            if let Some(ts) = b.column(1).as_primitive_opt::<TimestampMillisecondType>()
                && let Some(min) = arrow::compute::min(ts)
            {
                d.min_ts_ms = Some(d.min_ts_ms.map_or(min, |m| m.min(min)));
            }
        }
        d
    }

    fn absorb(&mut self, o: Dirty) {
        self.devices.extend(o.devices);
        self.min_ts_ms = match (self.min_ts_ms, o.min_ts_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.durable_at = match (self.durable_at, o.durable_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// One incremental evaluation: `dirty`'s devices from its oldest new data on (the engine
/// reads back the longest rule window before that), merged into `stored`. Returns how many
/// episodes were new.
pub async fn evaluate_incremental(
    snapshot: &crate::store::Snapshot,
    rules: &LiveRules,
    dirty: Option<&Dirty>,
    stored: &mut Vec<Finding>,
) -> Result<usize, rules::EvalError> {
    let scope = match dirty {
        Some(d) => Scope {
            since_ms: d.min_ts_ms,
            until_ms: None,
            devices: Some(d.devices.iter().cloned().collect()),
        },
        None => Scope::default(),
    };
    evaluate_and_merge(snapshot, rules, &scope, stored).await
}

/// Evaluates `scope` and merges the findings into `stored`; returns how many episodes were new.
async fn evaluate_and_merge(
    snapshot: &crate::store::Snapshot,
    rules: &LiveRules,
    scope: &Scope,
    stored: &mut Vec<Finding>,
) -> Result<usize, rules::EvalError> {
    let eval = rules::evaluate(
        snapshot,
        rules.devices.clone(),
        &rules.pack,
        scope,
        &QueryConfig::default(),
    )
    .await?;
    Ok(rules::finding::merge(stored, eval.findings))
}

/// A sweep: evaluates `silent` (devices that sent nothing lately) as of the fleet's newest
/// telemetry, over their whole stored history, and merges the findings into `stored`.
pub async fn evaluate_silent(
    snapshot: &crate::store::Snapshot,
    rules: &LiveRules,
    silent: &[String],
    stored: &mut Vec<Finding>,
) -> Result<usize, rules::EvalError> {
    if silent.is_empty() {
        return Ok(0);
    }
    let scope = Scope {
        devices: Some(silent.to_vec()),
        ..Scope::default()
    };
    evaluate_and_merge(snapshot, rules, &scope, stored).await
}

/// The evaluator task: coalesces dirty notices, evaluates at most every `interval_ms`,
/// stores the findings. Ends when `rx` closes (after a last evaluation of what is pending).
pub async fn run(
    rules: LiveRules,
    handle: StoreHandle,
    data_dir: PathBuf,
    mut rx: mpsc::UnboundedReceiver<Dirty>,
    metrics: Arc<IngestMetrics>,
) {
    let mut stored = match rules::finding::load(&data_dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the stored findings; live rules are off");
            return;
        }
    };
    let interval = Duration::from_millis(rules.interval_ms.max(10));
    let full_every = Duration::from_millis(rules.full_every_ms.max(1000));
    // Every device the store knows, and those that sent something since the last sweep.
    let mut known: BTreeSet<String> = match rules::engine::device_ids(
        &handle.snapshot(),
        &QueryConfig::default(),
    )
    .await
    {
        Ok(ids) => ids.into_iter().collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the stored devices; the first sweep covers only devices heard live");
            BTreeSet::new()
        }
    };
    let mut heard: BTreeSet<String> = BTreeSet::new();
    let mut last_sweep = Instant::now();
    let mut pending = Dirty::default();
    let mut open = true;
    while open {
        // Wait for the first notice (or the next sweep), then collect for one interval.
        let until_sweep = full_every.saturating_sub(last_sweep.elapsed());
        tokio::select! {
            d = rx.recv() => match d {
                Some(d) => pending.absorb(d),
                None => open = false,
            },
            _ = tokio::time::sleep(until_sweep) => {}
        }
        let deadline = tokio::time::Instant::now() + interval;
        while open && !pending.is_empty() {
            tokio::select! {
                d = rx.recv() => match d {
                    Some(d) => pending.absorb(d),
                    None => open = false,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // The last evaluation (the feed closed: ingest is stopping) also sweeps, so what
        // went quiet before the end is judged before the process exits.
        let sweep = !open || last_sweep.elapsed() >= full_every;
        if pending.is_empty() && !sweep {
            continue;
        }
        let dirty = std::mem::take(&mut pending);
        heard.extend(dirty.devices.iter().cloned());
        let snapshot = handle.snapshot();
        let started = Instant::now();
        let mut result = if dirty.is_empty() {
            Ok(0)
        } else {
            evaluate_incremental(&snapshot, &rules, Some(&dirty), &mut stored).await
        };
        if sweep && result.is_ok() {
            last_sweep = Instant::now();
            let silent: Vec<String> = known.difference(&heard).cloned().collect();
            // `heard` starts afresh: what arrives from here on counts for the next sweep.
            known.append(&mut heard);
            result = match evaluate_silent(&snapshot, &rules, &silent, &mut stored).await {
                Ok(n) => result.map(|m| m + n),
                Err(e) => Err(e),
            };
        }
        metrics.rule_evaluations.inc();
        metrics
            .rule_eval_ms
            .add(started.elapsed().as_millis() as u64);
        match result {
            Ok(new) => {
                metrics.findings_new.add(new as u64);
                let dir = data_dir.clone();
                let all = stored.clone();
                let saved =
                    tokio::task::spawn_blocking(move || rules::finding::save(&dir, &all)).await;
                if let Ok(Err(e)) = saved {
                    metrics.rule_errors.inc();
                    tracing::error!(error = %e, "cannot store the findings");
                }
                if let Some(at) = dirty.durable_at {
                    metrics.set_rule_lag_ms(at.elapsed().as_millis() as u64);
                }
            }
            Err(e) => {
                metrics.rule_errors.inc();
                tracing::error!(error = %e, "live rule evaluation failed");
            }
        }
    }
}
