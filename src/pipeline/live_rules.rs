//! Live rule evaluation: as batches become durable, evaluate the pack incrementally — only
//! the devices with new data, reading back only as far as the longest rule window before
//! the new data — and merge the findings into the `findings` table, so an ongoing episode
//! is extended, never repeated. Runs on its own task, fed by the acker after each durable
//! batch; it never holds up ingest or acks (a slow evaluation just covers more batches next
//! time). Every `full_every` it also sweeps the devices that sent nothing since the last
//! sweep, so a device that stopped sending (F00) is noticed although it brings no new data;
//! devices that keep sending are never evaluated twice for the same data, which is what
//! lets a large fleet run live (a whole-fleet pass would grow with the fleet). A device's
//! first evaluation in a run also reports the episodes of the longest rule window before
//! its new data, so data stored before the run (imported, or committed by a run that
//! stopped before evaluating it) is judged at the device's first new batch, not only at the
//! stop sweep.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
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
    /// Shortest time between the starts of two evaluations.
    pub interval_ms: u64,
    /// Time between sweeps of the devices that went quiet.
    pub full_every_ms: u64,
    /// Turn findings and trends into alerts after each evaluation (None: findings only).
    pub alerts: Option<LiveAlerts>,
}

/// The alert layer's part of a live run.
#[derive(Debug, Clone)]
pub struct LiveAlerts {
    pub settings: crate::alerts::Settings,
    pub sinks: Vec<crate::alerts::sink::SinkConfig>,
    /// How long stopping waits for the sinks to drain.
    pub drain_ms: u64,
}

/// What a durable batch brought: its devices and its oldest event time.
#[derive(Debug, Clone, Default)]
pub struct Dirty {
    pub devices: BTreeSet<String>,
    pub min_ts_ms: Option<i64>,
    /// Per device, its newest event time in the batch (how far its data reaches).
    pub newest: BTreeMap<String, i64>,
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
            let ts = b.column(1).as_primitive_opt::<TimestampMillisecondType>();
            if let Ok(ids) = arrow::compute::cast(b.column(0), &DataType::Utf8) {
                let ids = ids.as_string::<i32>();
                // Batches arrive grouped by device more often than not: one map update per run.
                let mut run: Option<(&str, i64)> = None;
                for (r, id) in ids.iter().enumerate() {
                    let Some(id) = id else { continue };
                    let t = ts
                        .filter(|t| t.is_valid(r))
                        .map_or(i64::MIN, |t| t.value(r));
                    match run {
                        Some((cur, ref mut max)) if cur == id => *max = (*max).max(t),
                        _ => {
                            if let Some((cur, max)) = run {
                                d.note(cur, max);
                            }
                            run = Some((id, t));
                        }
                    }
                }
                if let Some((cur, max)) = run {
                    d.note(cur, max);
                }
            }
            if let Some(ts) = ts
                && let Some(min) = arrow::compute::min(ts)
            {
                d.min_ts_ms = Some(d.min_ts_ms.map_or(min, |m| m.min(min)));
            }
        }
        d
    }

    fn note(&mut self, id: &str, max_ms: i64) {
        match self.newest.get_mut(id) {
            Some(m) => *m = (*m).max(max_ms),
            None => {
                self.devices.insert(id.to_string());
                self.newest.insert(id.to_string(), max_ms);
            }
        }
    }

    fn absorb(&mut self, o: Dirty) {
        self.devices.extend(o.devices);
        for (k, v) in o.newest {
            let m = self.newest.entry(k).or_insert(v);
            *m = (*m).max(v);
        }
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
/// reads back the longest rule window before that), merged into `stored`. With
/// `whole_past`, the episodes of the window before the new data count too, not only those
/// reaching it: what a device's first evaluation in a run needs, since its stored past may
/// never have been judged (the read then reaches two windows back). Returns how many
/// episodes were new.
pub async fn evaluate_incremental(
    snapshot: &crate::store::Snapshot,
    rules: &LiveRules,
    dirty: Option<&Dirty>,
    whole_past: bool,
    stored: &mut Vec<Finding>,
) -> Result<usize, rules::EvalError> {
    let scope = match dirty {
        Some(d) => Scope {
            since_ms: match (whole_past, d.min_ts_ms) {
                (true, Some(t)) => Some(t.saturating_sub(rules.pack.longest_window_ms())),
                (_, since) => since,
            },
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

/// The alert layer inside the evaluator task: its state, its sinks, how far each device's
/// findings reach.
struct AlertRun {
    cfg: LiveAlerts,
    state: crate::alerts::AlertState,
    sinks: Vec<crate::alerts::sink::SinkHandle>,
    progress: BTreeMap<String, i64>,
    /// How far each device's stored data reached at start. It counts once a sweep has
    /// judged every stored device (before that, findings may not cover it: the previous
    /// run may have stopped between a commit and its evaluation).
    stored_progress: Option<BTreeMap<String, i64>>,
    /// Transitions wait for their group: evaluate again after the group wait even when no
    /// data arrives.
    waiting: bool,
}

impl AlertRun {
    fn start(cfg: LiveAlerts, data_dir: &std::path::Path) -> Result<AlertRun, String> {
        let state = crate::alerts::AlertState::load(data_dir).map_err(|e| e.to_string())?;
        let outbox = crate::alerts::sink::notifications(&state.rows);
        let mut sinks = Vec::new();
        for s in &cfg.sinks {
            sinks.push(
                crate::alerts::sink::spawn(s.clone(), data_dir, outbox.clone(), true)
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(AlertRun {
            cfg,
            state,
            sinks,
            progress: BTreeMap::new(),
            stored_progress: None,
            waiting: false,
        })
    }

    /// One alert evaluation over the current findings; stores the table and hands new
    /// notifications to the sinks. Errors are logged and counted: alerts never stop ingest.
    async fn evaluate(
        &mut self,
        snapshot: &crate::store::Snapshot,
        registry: Option<RecordBatch>,
        findings: &[Finding],
        data_dir: &std::path::Path,
        now_wall_ms: i64,
        flush_all: bool,
        metrics: &IngestMetrics,
    ) {
        let input = crate::alerts::Input {
            snapshot,
            registry,
            findings,
            progress: &self.progress,
            now_wall_ms,
            flush_all,
        };
        // On a failure the state goes back to what is on disk (the last stored evaluation):
        // the next evaluation recomputes the same transitions and notification ids, and
        // stores and sends them then. No copy of the state is kept per evaluation.
        let outcome = match self
            .state
            .evaluate(data_dir, &input, &self.cfg.settings)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                self.reload(data_dir);
                metrics.rule_errors.inc();
                tracing::error!(error = %e, "alert evaluation failed");
                return;
            }
        };
        self.waiting = self
            .state
            .rows
            .iter()
            .any(|r| r.notification_id.is_none() && r.wants_notification());
        let changed = outcome.transitions > 0
            || !outcome.notifications.is_empty()
            || outcome.ticks > 0
            || outcome.muted > 0;
        if !changed {
            return;
        }
        // The table is the outbox: it is durable before any sink sees a notification. The
        // state moves to the blocking task and back.
        let state = std::mem::take(&mut self.state);
        let dir = data_dir.to_path_buf();
        let saved = match tokio::task::spawn_blocking(move || {
            let r = state.save(&dir);
            (state, r)
        })
        .await
        {
            Ok((state, r)) => {
                self.state = state;
                r.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = saved {
            self.reload(data_dir);
            metrics.rule_errors.inc();
            tracing::error!(error = %e, "cannot store the alerts; the next evaluation retries");
            return;
        }
        if !outcome.notifications.is_empty() {
            // Bodies only for the new notifications, not the whole history.
            let new: BTreeSet<&String> = outcome.notifications.iter().collect();
            let rows: Vec<crate::alerts::table::AlertRow> = self
                .state
                .rows
                .iter()
                .filter(|r| r.notification_id.as_ref().is_some_and(|n| new.contains(n)))
                .cloned()
                .collect();
            let ns = crate::alerts::sink::notifications(&rows);
            for s in &self.sinks {
                s.send(ns.clone());
            }
        }
        if outcome.transitions > 0 {
            tracing::info!(
                transitions = outcome.transitions,
                notifications = outcome.notifications.len(),
                firing = outcome.firing,
                "alerts"
            );
        }
    }

    /// Back to the last stored state (after a failed evaluation or store).
    fn reload(&mut self, data_dir: &std::path::Path) {
        match crate::alerts::AlertState::load(data_dir) {
            Ok(s) => self.state = s,
            Err(e) => tracing::error!(error = %e, "cannot re-read the stored alerts"),
        }
    }

    async fn close(self) {
        let grace = Duration::from_millis(self.cfg.drain_ms);
        for s in self.sinks {
            s.close(grace).await;
        }
    }
}

/// The evaluator task: coalesces dirty notices, starts an evaluation at most every `interval_ms`,
/// stores the findings, then (with alerts on) the alerts. Ends when `rx` closes (after a
/// last evaluation of what is pending, which also sends every waiting alert group).
pub async fn run(
    rules: LiveRules,
    handle: StoreHandle,
    data_dir: PathBuf,
    mut rx: mpsc::UnboundedReceiver<Dirty>,
    metrics: Arc<IngestMetrics>,
    clock: Arc<dyn crate::clock::Clock>,
) {
    let mut stored = match rules::finding::load(&data_dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the stored findings; live rules are off");
            return;
        }
    };
    // The registry the alerts label and group by: read once (the data directory's
    // devices.csv unless one was given), not at every evaluation.
    let registry = rules.devices.clone().or_else(|| {
        let p = data_dir.join(crate::model::DEVICES_FILE);
        p.is_file()
            .then(|| crate::registry::load(&p))
            .and_then(|r| {
                r.map_err(|e| tracing::warn!(error = %e, "cannot read the device registry; alerts carry no site labels"))
                    .ok()
            })
    });
    let mut alerts = match rules.alerts.clone().map(|a| AlertRun::start(a, &data_dir)) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot start the alerts; live rules run without them");
            None
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
    // Devices already judged in this run. The rest may have data no evaluation has seen —
    // imported before `run` started, or committed by a previous run that stopped before
    // evaluating it — so a device's first evaluation reports the episodes of the longest
    // rule window before its new data, not only those reaching it (the merge keeps
    // episodes already stored from being counted twice). The read reaches one window
    // further back, which on a store younger than the window (35 days) changes nothing.
    let mut judged: HashSet<String> = HashSet::new();
    let mut swept = false;
    if let Some(a) = alerts.as_mut() {
        match crate::alerts::device_progress(&handle.snapshot()).await {
            Ok(p) => a.stored_progress = Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read how far the stored devices reach; their alerts resolve once they report again")
            }
        }
    }
    let mut last_sweep = Instant::now();
    let mut last_eval: Option<tokio::time::Instant> = None;
    let mut pending = Dirty::default();
    let mut open = true;
    while open {
        // Wait for the first notice (the next sweep, or a waiting alert group), then collect
        // for one interval.
        let mut until_wake = full_every.saturating_sub(last_sweep.elapsed());
        if let Some(a) = alerts.as_ref().filter(|a| a.waiting) {
            until_wake = until_wake.min(Duration::from_millis(
                a.cfg.settings.group_wait_ms.max(100) as u64,
            ));
        }
        tokio::select! {
            d = rx.recv() => match d {
                Some(d) => pending.absorb(d),
                None => open = false,
            },
            _ = tokio::time::sleep(until_wake) => {}
        }
        // `interval` is the shortest time between two evaluations' starts, not a wait after
        // each notice: under steady load the next evaluation starts as soon as the last one
        // ends (its data waited through it already), and after a quiet spell the first
        // notice is evaluated at once.
        let now = tokio::time::Instant::now();
        let deadline = last_eval.map_or(now, |t| (t + interval).max(now));
        while open && !pending.is_empty() {
            tokio::select! {
                d = rx.recv() => match d {
                    Some(d) => pending.absorb(d),
                    None => open = false,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // Everything already queued joins this evaluation. Without this, an evaluation that
        // starts as soon as the last one ends would take one notice (one durable batch) and
        // leave the rest queued: under steady load the queue, and the lag, grow without end.
        while open {
            match rx.try_recv() {
                Ok(d) => pending.absorb(d),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        // The last evaluation (the feed closed: ingest is stopping) also sweeps, so what
        // went quiet before the end is judged before the process exits.
        let sweep = !open || last_sweep.elapsed() >= full_every;
        if pending.is_empty() && !sweep {
            if let Some(a) = alerts.as_mut().filter(|a| a.waiting) {
                // Nothing new: only send the groups whose wait is over.
                let snapshot = handle.snapshot();
                a.evaluate(
                    &snapshot,
                    registry.clone(),
                    &stored,
                    &data_dir,
                    clock.now_ms(),
                    false,
                    &metrics,
                )
                .await;
            }
            continue;
        }
        let dirty = std::mem::take(&mut pending);
        heard.extend(dirty.devices.iter().cloned());
        let snapshot = handle.snapshot();
        let started = Instant::now();
        last_eval = Some(tokio::time::Instant::from_std(started));
        let unjudged: Vec<String> = dirty
            .devices
            .iter()
            .filter(|d| !judged.contains(*d))
            .cloned()
            .collect();
        let whole_past = !unjudged.is_empty();
        let mut result = if dirty.is_empty() {
            Ok(0)
        } else {
            evaluate_incremental(&snapshot, &rules, Some(&dirty), whole_past, &mut stored).await
        };
        if result.is_ok() {
            judged.extend(unjudged);
        }
        if sweep && result.is_ok() {
            let first_sweep = !swept;
            swept = true;
            last_sweep = Instant::now();
            let silent: Vec<String> = known.difference(&heard).cloned().collect();
            // `heard` starts afresh: what arrives from here on counts for the next sweep.
            known.append(&mut heard);
            result = match evaluate_silent(&snapshot, &rules, &silent, &mut stored).await {
                Ok(n) => {
                    judged.extend(silent.iter().cloned());
                    result.map(|m| m + n)
                }
                Err(e) => Err(e),
            };
            if first_sweep
                && result.is_ok()
                && let Some(a) = alerts.as_mut()
                && let Some(p) = a.stored_progress.take()
            {
                for (d, t) in p {
                    let e = a.progress.entry(d).or_insert(t);
                    *e = (*e).max(t);
                }
            }
        }
        let rules_ms = started.elapsed().as_millis() as u64;
        metrics.rule_evaluations.inc();
        metrics.rule_eval_ms.add(rules_ms);
        match result {
            Ok(new) => {
                metrics.findings_new.add(new as u64);
                let dir = data_dir.clone();
                let all = stored.clone();
                let saving = Instant::now();
                let saved =
                    tokio::task::spawn_blocking(move || rules::finding::save(&dir, &all)).await;
                if let Ok(Err(e)) = saved {
                    metrics.rule_errors.inc();
                    tracing::error!(error = %e, "cannot store the findings");
                }
                let save_ms = saving.elapsed().as_millis() as u64;
                let alerting = Instant::now();
                if let Some(a) = alerts.as_mut() {
                    // The findings now cover these devices' data up to their newest time.
                    for (d, t) in &dirty.newest {
                        let p = a.progress.entry(d.clone()).or_insert(*t);
                        *p = (*p).max(*t);
                    }
                    a.evaluate(
                        &snapshot,
                        registry.clone(),
                        &stored,
                        &data_dir,
                        clock.now_ms(),
                        !open,
                        &metrics,
                    )
                    .await;
                }
                let lag_ms = dirty.durable_at.map(|at| at.elapsed().as_millis() as u64);
                if let Some(l) = lag_ms {
                    metrics.set_rule_lag_ms(l);
                }
                // Where a cycle's time goes (the lag is all of it, and the wait before it).
                tracing::debug!(
                    devices = dirty.devices.len(),
                    sweep,
                    new,
                    rules_ms,
                    save_ms,
                    alerts_ms = alerting.elapsed().as_millis() as u64,
                    lag_ms,
                    "live evaluation"
                );
                if let Some(t) = dirty.newest.values().max() {
                    metrics.set_rule_watermark_ms(*t);
                }
            }
            Err(e) => {
                metrics.rule_errors.inc();
                tracing::error!(error = %e, "live rule evaluation failed");
            }
        }
    }
    if let Some(a) = alerts {
        a.close().await;
    }
}
