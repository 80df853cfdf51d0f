//! Alerts: findings and fleet trends become alerts an operations team can trust — they
//! fire once, carry their evidence, stay quiet while nothing changes, resolve by themselves.
//!
//! Contract:
//! - An alert is keyed by (rule, key): a fault rule's findings per device, a trend rule's
//!   rows per cohort (`trend`). Its lifecycle (`lifecycle`) is a pure function of event
//!   time — the conditions and how far the key's data has been evaluated — so live ingest,
//!   an import and a replay at any speed store the same transitions, and a restart
//!   recomputes rather than re-sends: a transition already in the `alerts` table (`table`)
//!   is never added twice.
//! - Each evaluation appends the transitions the data now proves, marks those an
//!   inhibiting alert or an operator's silence (`actions`) mutes, and, once a group has
//!   waited `group_wait`, assigns the group's transitions one notification id (the
//!   idempotency key). The table, written durably, is the outbox; sinks (`sink`) deliver
//!   from it at least once, each keeping its own delivered log, and never hold up the
//!   caller.
//! - Reads the store through `query` and findings from `rules`; knows nothing of MQTT
//!   ingest, the pipeline or the CLI. `forecast` predicts support load from findings.

pub mod actions;
pub mod forecast;
pub mod lifecycle;
pub mod sink;
pub mod table;
pub mod trend;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use datafusion::datasource::MemTable;
use serde::{Deserialize, Serialize};

use lifecycle::{Condition, Policy, State};
use table::AlertRow;
use trend::TrendRule;

use crate::model::FINDINGS_TABLE;
use crate::query::{self, QueryConfig};
use crate::rules::Finding;
use crate::store::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error(transparent)]
    Table(#[from] table::TableError),
    #[error(transparent)]
    Actions(#[from] actions::ActionError),
    #[error(transparent)]
    Trend(#[from] trend::TrendError),
    #[error(transparent)]
    Query(#[from] query::QueryError),
    #[error("alerts: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("alert state file {path}: {problem}")]
    State { path: String, problem: String },
}

/// What a condition carries into the alert: the newest one's detail is the alert's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detail {
    pub device_id: Option<String>,
    pub fault: Option<String>,
    pub severity: String,
    pub owner: String,
    pub title: String,
    pub summary: String,
    pub labels: BTreeMap<String, String>,
    /// A JSON object, in the rule's column order.
    pub evidence: String,
    /// A JSON array of `{"who", "text"}`.
    pub steps: String,
}

/// Mutes alerts of `targets` (rule ids or fault codes) while an alert of rule `source`
/// with the same `equal` labels is active: a site's grid alert speaks for the per-charger
/// voltage alerts under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inhibit {
    pub source: String,
    pub targets: Vec<String>,
    pub equal: Vec<String>,
}

/// How findings and trends become alerts and notifications.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The lifecycle of fault alerts (one per rule and device).
    pub fault_policy: Policy,
    /// Per fault rule id, overriding `fault_policy`.
    pub rule_policies: BTreeMap<String, Policy>,
    pub trends: Vec<TrendRule>,
    /// Labels (and `rule`, `state`) that put transitions into one notification.
    pub group_by: Vec<String>,
    /// How long a group collects transitions before it is sent (wall clock).
    pub group_wait_ms: i64,
    pub inhibit: Vec<Inhibit>,
    /// Trend ticks trail the newest telemetry by this much, so late data is in.
    pub trend_lateness_ms: i64,
    /// A first evaluation looks back at most this far for trend ticks.
    pub trend_backfill_ms: i64,
}

/// The inhibition every fleet gets unless the config says otherwise.
pub fn default_inhibit() -> Vec<Inhibit> {
    vec![Inhibit {
        source: "site_grid_anomaly".into(),
        targets: vec!["F14".into(), "F15".into(), "F16".into()],
        equal: vec!["site".into()],
    }]
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            fault_policy: Policy {
                for_ms: 0,
                clear_ms: 30 * 60_000,
                keep_firing_ms: 0,
            },
            rule_policies: BTreeMap::new(),
            // The built-in trend rules are checked by the tests; a broken one is a build bug.
            trends: trend::load(true, &[]).unwrap_or_default(),
            group_by: vec!["rule".into(), "site".into()],
            group_wait_ms: 30_000,
            inhibit: default_inhibit(),
            trend_lateness_ms: 2 * 60_000,
            trend_backfill_ms: 35 * 86_400_000,
        }
    }
}

/// One stretch of a trend rule's condition for one key, as stored between evaluations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrendCondition {
    pub rule: String,
    pub key: String,
    pub first_ms: i64,
    pub last_ms: i64,
    pub hold: bool,
    pub detail: Detail,
}

/// Trend rules' progress and conditions (`alerts/trends.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrendState {
    /// The last tick evaluated, per rule.
    pub ticks: BTreeMap<String, i64>,
    pub conditions: Vec<TrendCondition>,
}

impl TrendState {
    /// Adds a tick's condition, extending the key's latest stretch when they touch (same
    /// fire/hold side), so the state stays small over long runs.
    fn add(&mut self, rule: &str, key: String, c: Condition<Detail>) {
        if let Some(last) = self
            .conditions
            .iter_mut()
            .rev()
            .find(|o| o.rule == rule && o.key == key)
            && last.hold == c.hold
            && c.first_ms <= last.last_ms
        {
            last.first_ms = last.first_ms.min(c.first_ms);
            last.last_ms = last.last_ms.max(c.last_ms);
            last.detail = c.detail;
            return;
        }
        self.conditions.push(TrendCondition {
            rule: rule.to_string(),
            key,
            first_ms: c.first_ms,
            last_ms: c.last_ms,
            hold: c.hold,
            detail: c.detail,
        });
    }
}

/// Where the trend state lives inside a data directory.
pub const TRENDS_FILE: &str = "alerts/trends.json";

/// The engine's state: every stored transition and the trend rules' progress.
#[derive(Debug, Clone, Default)]
pub struct AlertState {
    pub rows: Vec<AlertRow>,
    pub trend: TrendState,
}

/// What one evaluation reads.
pub struct Input<'a> {
    pub snapshot: &'a Snapshot,
    /// Registry replacing the data directory's `devices.csv`.
    pub registry: Option<RecordBatch>,
    /// Every stored finding (merged episodes).
    pub findings: &'a [Finding],
    /// Per device, the newest event time its findings are complete to.
    pub progress: &'a BTreeMap<String, i64>,
    /// Wall clock: group waits and silences.
    pub now_wall_ms: i64,
    /// Send every group now (an import or a final evaluation has nobody to wait for).
    pub flush_all: bool,
}

/// What one evaluation did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Transitions added to the table.
    pub transitions: usize,
    /// Notification ids assigned in this evaluation.
    pub notifications: Vec<String>,
    /// Trend rule ticks evaluated.
    pub ticks: usize,
    /// Alerts firing now.
    pub firing: usize,
    /// Transitions newly marked inhibited or silenced (and notifications assigned).
    pub muted: usize,
}

impl AlertState {
    pub fn load(dir: &Path) -> Result<AlertState, AlertError> {
        let path = dir.join(TRENDS_FILE);
        let trend = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| AlertError::State {
                path: path.display().to_string(),
                problem: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TrendState::default(),
            Err(e) => {
                return Err(AlertError::State {
                    path: path.display().to_string(),
                    problem: e.to_string(),
                });
            }
        };
        Ok(AlertState {
            rows: table::load(dir)?,
            trend,
        })
    }

    /// Stores the trend state, then the table (both durably). A crash between the two
    /// leaves trend conditions whose transitions the next evaluation adds: never a
    /// transition without its conditions.
    pub fn save(&self, dir: &Path) -> Result<(), AlertError> {
        let path = dir.join(TRENDS_FILE);
        let bad = |problem: String| AlertError::State {
            path: path.display().to_string(),
            problem,
        };
        let json = serde_json::to_vec(&self.trend).map_err(|e| bad(e.to_string()))?;
        write_durable(&path, &json).map_err(|e| bad(e.to_string()))?;
        table::save(dir, &self.rows)?;
        Ok(())
    }

    /// Transitions decided so far (sent, or muted with a reason).
    fn decided(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| {
                r.notification_id.is_some() || r.inhibited_by.is_some() || r.silenced_by.is_some()
            })
            .count()
    }

    /// Alerts whose latest transition is `firing`.
    pub fn firing(&self) -> usize {
        latest_states(&self.rows)
            .values()
            .filter(|s| **s == State::Firing)
            .count()
    }

    /// One evaluation: trend ticks up to the watermark, every key's incidents, the
    /// transitions not yet stored, then muting and grouping. Call [`AlertState::save`]
    /// afterwards.
    pub async fn evaluate(
        &mut self,
        dir: &Path,
        input: &Input<'_>,
        settings: &Settings,
    ) -> Result<Outcome, AlertError> {
        let mut out = Outcome::default();
        let registry = match &input.registry {
            Some(r) => Some(r.clone()),
            None => {
                let p = dir.join(crate::model::DEVICES_FILE);
                p.is_file().then(|| crate::registry::load(&p)).transpose()?
            }
        };
        out.ticks = self.tick_trends(input, registry.clone(), settings).await?;
        // Labels only for the devices with findings: a fleet's registry holds far more, and
        // this runs after every live evaluation.
        let named: HashSet<&str> = input
            .findings
            .iter()
            .map(|f| f.device_id.as_str())
            .collect();
        let labels = registry
            .as_ref()
            .map(|r| registry_labels(r, Some(&named)))
            .unwrap_or_default();
        let now_wall = input.now_wall_ms;

        // Every key's conditions, with its policy and how far its data reaches.
        struct Key {
            kind: &'static str,
            policy: Policy,
            progress_ms: i64,
            conditions: Vec<Condition<Detail>>,
        }
        let mut keys: BTreeMap<(String, String), Key> = BTreeMap::new();
        for f in input.findings {
            let k = keys
                .entry((f.rule.clone(), f.device_id.clone()))
                .or_insert_with(|| Key {
                    kind: "fault",
                    policy: *settings
                        .rule_policies
                        .get(&f.rule)
                        .unwrap_or(&settings.fault_policy),
                    progress_ms: input
                        .progress
                        .get(&f.device_id)
                        .copied()
                        .unwrap_or(i64::MIN),
                    conditions: Vec::new(),
                });
            k.conditions.push(Condition {
                first_ms: f.first_ms,
                last_ms: f.last_ms,
                hold: false,
                detail: Detail {
                    device_id: Some(f.device_id.clone()),
                    fault: Some(f.fault.clone()),
                    severity: f.severity.as_str().into(),
                    owner: f.owner.clone(),
                    title: f.title.clone(),
                    summary: f.summary.clone(),
                    labels: labels.get(&f.device_id).cloned().unwrap_or_default(),
                    evidence: f.evidence_json(),
                    steps: f.steps_json(),
                },
            });
        }
        for c in &self.trend.conditions {
            let Some(rule) = settings.trends.iter().find(|r| r.id == c.rule) else {
                continue; // a rule removed from the pack: its alerts stay as they were
            };
            let k = keys
                .entry((c.rule.clone(), c.key.clone()))
                .or_insert_with(|| Key {
                    kind: "trend",
                    policy: rule.policy,
                    progress_ms: self.trend.ticks.get(&c.rule).copied().unwrap_or(i64::MIN),
                    conditions: Vec::new(),
                });
            k.conditions.push(Condition {
                first_ms: c.first_ms,
                last_ms: c.last_ms,
                hold: c.hold,
                detail: c.detail.clone(),
            });
        }

        // Stored alerts by key: (id, started, states reached).
        type Known = Vec<(String, i64, HashSet<State>)>;
        let mut stored: HashMap<(&str, &str), Known> = HashMap::new();
        for r in &self.rows {
            let v = stored.entry((&r.rule, &r.key)).or_default();
            match v.iter_mut().find(|(id, _, _)| *id == r.alert_id) {
                Some((_, _, s)) => {
                    s.insert(r.state);
                }
                None => v.push((r.alert_id.clone(), r.started_ms, [r.state].into())),
            }
        }
        let mut new_rows = Vec::new();
        for ((rule, key), k) in &keys {
            for inc in lifecycle::incidents(&k.conditions, &k.policy, k.progress_ms) {
                let known = stored.get(&(rule.as_str(), key.as_str())).and_then(|v| {
                    v.iter()
                        .find(|(_, started, _)| (inc.start_ms..=inc.end_ms).contains(started))
                });
                let (id, started, have) = match known {
                    Some((id, started, have)) => (id.clone(), *started, have.clone()),
                    None => (
                        alert_id(rule, key, inc.start_ms),
                        inc.start_ms,
                        HashSet::new(),
                    ),
                };
                for (state, at) in inc.transitions(&k.policy) {
                    if have.contains(&state) {
                        continue;
                    }
                    let d = &inc.latest.detail;
                    new_rows.push(AlertRow {
                        alert_id: id.clone(),
                        rule: rule.clone(),
                        kind: k.kind.into(),
                        key: key.clone(),
                        device_id: d.device_id.clone(),
                        fault: d.fault.clone(),
                        state,
                        at_ms: at,
                        started_ms: started,
                        severity: d.severity.clone(),
                        owner: d.owner.clone(),
                        title: d.title.clone(),
                        summary: d.summary.clone(),
                        labels: d.labels.clone(),
                        evidence: d.evidence.clone(),
                        steps: d.steps.clone(),
                        inhibited_by: None,
                        silenced_by: None,
                        notification_id: None,
                        recorded_ms: now_wall,
                    });
                }
            }
        }
        // Transitions in event-time order, so the table reads as a history.
        new_rows
            .sort_by(|a, b| (a.at_ms, &a.alert_id, a.state).cmp(&(b.at_ms, &b.alert_id, b.state)));
        out.transitions = new_rows.len();
        self.rows.extend(new_rows);

        let acts = actions::load(dir)?;
        let decided_before = self.decided();
        let deferred = self.mute(settings, &acts, now_wall, input.flush_all);
        out.notifications =
            self.assign_notifications(settings, now_wall, input.flush_all, &deferred);
        out.muted = self.decided() - decided_before;
        out.firing = self.firing();
        Ok(out)
    }

    /// Marks undecided transitions inhibited or silenced, and returns the rows that must
    /// wait: targets of an inhibition whose source trend rule has not yet been evaluated up
    /// to their time (its alert may still come and cover them), unless `flush_all`. A
    /// resolution follows its firing: muted the same way, or sent if the firing is sent.
    fn mute(
        &mut self,
        settings: &Settings,
        acts: &actions::Actions,
        now_wall: i64,
        flush_all: bool,
    ) -> BTreeSet<usize> {
        // Per alert (ordered: the first covering source is the same on every run): its
        // rule, start, whether it fired, when it closed, its labels.
        struct Span<'a> {
            rule: &'a str,
            started: i64,
            fired: bool,
            closed: i64,
            labels: &'a BTreeMap<String, String>,
        }
        let mut spans: BTreeMap<&str, Span<'_>> = BTreeMap::new();
        for r in &self.rows {
            let e = spans.entry(&r.alert_id).or_insert(Span {
                rule: &r.rule,
                started: r.started_ms,
                fired: false,
                closed: i64::MAX,
                labels: &r.labels,
            });
            match r.state {
                State::Firing => e.fired = true,
                State::Resolved | State::Cancelled => e.closed = e.closed.min(r.at_ms),
                State::Pending => {}
            }
        }
        // Decisions: (row, inhibited_by, silenced_by), applied after the scan.
        let mut decided: Vec<(usize, Option<String>, Option<String>)> = Vec::new();
        let mut deferred = BTreeSet::new();
        // How each alert's firing went: (inhibited_by, silenced_by, sent or to be sent).
        let mut firing_fate: HashMap<&str, (Option<String>, Option<String>, bool)> = HashMap::new();
        for r in &self.rows {
            if r.state == State::Firing
                && (r.notification_id.is_some()
                    || r.inhibited_by.is_some()
                    || r.silenced_by.is_some())
            {
                firing_fate.insert(
                    &r.alert_id,
                    (
                        r.inhibited_by.clone(),
                        r.silenced_by.clone(),
                        r.notification_id.is_some(),
                    ),
                );
            }
        }
        for (i, r) in self.rows.iter().enumerate() {
            if !matches!(r.state, State::Firing | State::Resolved)
                || r.notification_id.is_some()
                || r.inhibited_by.is_some()
                || r.silenced_by.is_some()
            {
                continue;
            }
            if r.state == State::Resolved {
                match firing_fate.get(r.alert_id.as_str()) {
                    Some((inh @ Some(_), _, _)) => {
                        decided.push((i, inh.clone(), None));
                        continue;
                    }
                    Some((None, sil @ Some(_), _)) => {
                        decided.push((i, None, sil.clone()));
                        continue;
                    }
                    // The firing is sent: so is its resolution.
                    Some((None, None, true)) => continue,
                    _ => {}
                }
            }
            let mut inhibited = None;
            let mut wait = false;
            for inh in &settings.inhibit {
                let target = inh
                    .targets
                    .iter()
                    .any(|t| *t == r.rule || r.fault.as_deref() == Some(t.as_str()));
                if !target || r.rule == inh.source {
                    continue;
                }
                inhibited = spans.iter().find_map(|(id, s)| {
                    let covers = s.fired
                        && s.rule == inh.source
                        && s.started <= r.at_ms
                        && r.at_ms < s.closed
                        && inh
                            .equal
                            .iter()
                            .all(|l| s.labels.get(l).is_some_and(|v| r.labels.get(l) == Some(v)));
                    covers.then(|| id.to_string())
                });
                if inhibited.is_some() {
                    break;
                }
                let source_behind = settings.trends.iter().any(|t| t.id == inh.source)
                    && self
                        .trend
                        .ticks
                        .get(&inh.source)
                        .is_none_or(|t| *t < r.at_ms);
                wait |= source_behind && !flush_all;
            }
            if let Some(by) = inhibited {
                if r.state == State::Firing {
                    firing_fate.insert(&r.alert_id, (Some(by.clone()), None, false));
                }
                decided.push((i, Some(by), None));
                continue;
            }
            if wait {
                deferred.insert(i);
                continue;
            }
            if let Some(sil) = acts.silence_for(r, now_wall) {
                if r.state == State::Firing {
                    firing_fate.insert(&r.alert_id, (None, Some(sil.to_string()), false));
                }
                decided.push((i, None, Some(sil.to_string())));
                continue;
            }
            if r.state == State::Firing {
                firing_fate.insert(&r.alert_id, (None, None, true));
            }
        }
        for (i, inh, sil) in decided {
            self.rows[i].inhibited_by = inh;
            self.rows[i].silenced_by = sil;
        }
        deferred
    }

    /// Gives every group of sendable transitions that has waited long enough one
    /// notification id (not the `deferred` rows). Returns the new ids.
    fn assign_notifications(
        &mut self,
        settings: &Settings,
        now_wall: i64,
        flush_all: bool,
        deferred: &BTreeSet<usize>,
    ) -> Vec<String> {
        let mut groups: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
        for (i, r) in self.rows.iter().enumerate() {
            if r.notification_id.is_some() || !r.wants_notification() || deferred.contains(&i) {
                continue;
            }
            groups
                .entry(group_key(r, &settings.group_by))
                .or_default()
                .push(i);
        }
        let mut ids = Vec::new();
        for members in groups.values() {
            let oldest = members
                .iter()
                .map(|&i| self.rows[i].recorded_ms)
                .min()
                .unwrap_or(now_wall);
            if !flush_all && now_wall - oldest < settings.group_wait_ms {
                continue;
            }
            let mut parts: Vec<String> = members
                .iter()
                .map(|&i| format!("{}:{}", self.rows[i].alert_id, self.rows[i].state.as_str()))
                .collect();
            parts.sort();
            let id = format!("N{:016x}", fnv1a(parts.join(",").as_bytes()));
            for &i in members {
                self.rows[i].notification_id = Some(id.clone());
            }
            ids.push(id);
        }
        ids
    }

    /// Evaluates every trend rule's ticks from where it stopped up to the watermark.
    async fn tick_trends(
        &mut self,
        input: &Input<'_>,
        registry: Option<RecordBatch>,
        settings: &Settings,
    ) -> Result<usize, AlertError> {
        let Some(newest) = input.progress.values().copied().max() else {
            return Ok(0);
        };
        if settings.trends.is_empty() {
            return Ok(0);
        }
        let watermark = newest - settings.trend_lateness_ms;
        // Most evaluations have no tick due: no session then.
        let due = settings
            .trends
            .iter()
            .any(|r| match self.trend.ticks.get(&r.id) {
                Some(t) => r.ticks(*t, watermark).next().is_some(),
                None => true,
            });
        if !due {
            return Ok(0);
        }
        let ctx = query::session(input.snapshot, &QueryConfig::default())?;
        if let Some(r) = registry {
            query::set_devices(&ctx, r)?;
        }
        // The findings as the caller has them (they may be newer than the file).
        let fb = crate::rules::finding::to_batch(input.findings);
        ctx.deregister_table(FINDINGS_TABLE)?;
        ctx.register_table(
            FINDINGS_TABLE,
            Arc::new(MemTable::try_new(fb.schema(), vec![vec![fb]])?),
        )?;
        let mut oldest: Option<i64> = None;
        let mut ticks = 0;
        for rule in &settings.trends {
            let after = match self.trend.ticks.get(&rule.id) {
                Some(t) => *t,
                None => {
                    if oldest.is_none() {
                        // From the oldest telemetry or finding, whichever is older.
                        let f = input.findings.iter().map(|f| f.first_ms).min();
                        let v = oldest_ms(&ctx).await?;
                        oldest = Some(match (f, v) {
                            (Some(a), Some(b)) => a.min(b),
                            (a, b) => a.or(b).unwrap_or(newest),
                        });
                    }
                    oldest
                        .unwrap_or(newest)
                        .max(watermark - settings.trend_backfill_ms)
                }
            };
            // Remembered even before its first tick, so later evaluations know where to go on
            // without looking for the oldest data again.
            self.trend.ticks.entry(rule.id.clone()).or_insert(after);
            for t in rule.ticks(after, watermark) {
                for row in trend::evaluate_tick(&ctx, rule, t).await? {
                    self.trend.add(&rule.id, row.key, row.condition);
                }
                self.trend.ticks.insert(rule.id.clone(), t);
                ticks += 1;
            }
        }
        Ok(ticks)
    }
}

/// The oldest telemetry in the store.
async fn oldest_ms(ctx: &datafusion::prelude::SessionContext) -> Result<Option<i64>, AlertError> {
    let b = ctx
        .sql("SELECT CAST(MIN(ts) AS BIGINT) FROM vitals")
        .await?
        .collect()
        .await?;
    Ok(b.first()
        .and_then(|b| {
            b.column(0)
                .as_primitive_opt::<arrow::datatypes::Int64Type>()
                .cloned()
        })
        .filter(|c| !c.is_empty() && c.is_valid(0))
        .map(|c| c.value(0)))
}

/// Per device (of `only`, when given), the registry facts alerts group and inhibit by.
pub fn registry_labels(
    b: &RecordBatch,
    only: Option<&HashSet<&str>>,
) -> HashMap<String, BTreeMap<String, String>> {
    let mut out = HashMap::new();
    let text = |n: &str| {
        b.column_by_name(n)
            .and_then(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).ok())
    };
    let Some(ids) = text("device_id") else {
        return out;
    };
    let cols: Vec<(&str, arrow::array::ArrayRef)> =
        ["site", "installer", "part_number", "firmware_version"]
            .into_iter()
            .filter_map(|n| text(n).map(|c| (n, c)))
            .collect();
    let ids = ids.as_string::<i32>();
    for r in 0..b.num_rows() {
        if ids.is_null(r) || only.is_some_and(|o| !o.contains(ids.value(r))) {
            continue;
        }
        let mut m = BTreeMap::new();
        for (n, c) in &cols {
            let c = c.as_string::<i32>();
            if c.is_valid(r) && !c.value(r).is_empty() {
                m.insert(n.to_string(), c.value(r).to_string());
            }
        }
        out.insert(ids.value(r).to_string(), m);
    }
    out
}

fn group_key(r: &AlertRow, by: &[String]) -> Vec<String> {
    let mut k = vec![r.state.as_str().to_string()];
    for l in by {
        k.push(match l.as_str() {
            "rule" => r.rule.clone(),
            "device_id" => r.device_id.clone().unwrap_or_default(),
            "fault" => r.fault.clone().unwrap_or_default(),
            "severity" => r.severity.clone(),
            other => r.labels.get(other).cloned().unwrap_or_default(),
        });
    }
    k
}

/// Each alert's latest state (by event time, then lifecycle order).
pub fn latest_states(rows: &[AlertRow]) -> HashMap<&str, State> {
    let mut out: HashMap<&str, (i64, State)> = HashMap::new();
    for r in rows {
        let e = out.entry(&r.alert_id).or_insert((r.at_ms, r.state));
        if (r.at_ms, r.state) > *e {
            *e = (r.at_ms, r.state);
        }
    }
    out.into_iter().map(|(k, (_, s))| (k, s)).collect()
}

/// A stable id: the same rule, key and start give the same id on every machine and run.
pub fn alert_id(rule: &str, key: &str, start_ms: i64) -> String {
    let mut bytes = Vec::with_capacity(rule.len() + key.len() + 10);
    bytes.extend_from_slice(rule.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(key.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&start_ms.to_le_bytes());
    format!("A{:012x}", fnv1a(&bytes) & 0xffff_ffff_ffff)
}

/// FNV-1a, 64 bit: stable across builds and platforms (std's hasher is not promised to be).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Temp file, fsync, rename, fsync the directory.
fn write_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::store::files::create_dir_durable(dir).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(
        ".tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Builds the settings and sinks a config file's `[alerts]` asks for; errors name the key.
pub fn settings_from_file(
    f: &crate::config::AlertsFile,
    data_dir: &Path,
    default_broker: Option<&crate::ingest::BrokerUrl>,
    client_id: &str,
) -> Result<(Settings, Vec<sink::SinkConfig>), String> {
    let mut s = Settings::default();
    let ms = |v: Option<u64>, d: i64| v.map_or(d, |x| (x as i64).saturating_mul(1000));
    s.fault_policy = Policy {
        for_ms: ms(f.for_s, s.fault_policy.for_ms),
        clear_ms: ms(f.clear_after_s, s.fault_policy.clear_ms),
        keep_firing_ms: ms(f.keep_firing_for_s, s.fault_policy.keep_firing_ms),
    };
    for (rule, p) in &f.rules {
        s.rule_policies.insert(
            rule.clone(),
            Policy {
                for_ms: ms(p.for_s, s.fault_policy.for_ms),
                clear_ms: ms(p.clear_after_s, s.fault_policy.clear_ms),
                keep_firing_ms: ms(p.keep_firing_for_s, s.fault_policy.keep_firing_ms),
            },
        );
    }
    if let Some(g) = &f.group_by {
        s.group_by = g.clone();
    }
    if let Some(w) = f.group_wait_ms {
        if w < 0 {
            return Err("[alerts] group_wait_ms must not be negative".into());
        }
        s.group_wait_ms = w;
    }
    if let Some(inh) = &f.inhibit {
        s.inhibit = inh
            .iter()
            .map(|i| Inhibit {
                source: i.source.clone(),
                targets: i.targets.clone(),
                equal: i.equal.clone(),
            })
            .collect();
    }
    s.trends = trend::load(!f.no_builtin_trends, &f.trend_rules_dirs).map_err(|p| {
        let shown: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        format!("[alerts] trend rules: {}", shown.join("; "))
    })?;
    let mut sinks = Vec::new();
    for (i, k) in f.sinks.iter().enumerate() {
        let at = format!("[[alerts.sinks]] #{} ({})", i + 1, k.name);
        let need = |v: &Option<String>, key: &str| {
            v.clone()
                .ok_or_else(|| format!("{at}: kind {:?} needs `{key}`", k.kind))
        };
        let target = match k.kind.as_str() {
            "file" => {
                let p = k
                    .path
                    .clone()
                    .ok_or_else(|| format!("{at}: kind \"file\" needs `path`"))?;
                sink::Target::File {
                    path: if p.is_absolute() { p } else { data_dir.join(p) },
                }
            }
            "webhook" => sink::Target::Webhook {
                url: need(&k.url, "url")?,
                secret: k
                    .secret_file
                    .as_deref()
                    .map(crate::config::read_secret_file)
                    .transpose()
                    .map_err(|e| format!("{at}: {e}"))?,
                timeout_ms: k.timeout_ms.unwrap_or(10_000),
            },
            "mqtt" => {
                let broker = match &k.broker {
                    Some(b) => {
                        crate::ingest::BrokerUrl::parse(b)
                            .map_err(|e| format!("{at}: broker: {e}"))?
                            .0
                    }
                    None => default_broker.cloned().ok_or_else(|| {
                        format!("{at}: no `broker`, and no [mqtt] broker to default to")
                    })?,
                };
                sink::Target::Mqtt {
                    broker,
                    topic: need(&k.topic, "topic")?,
                    client_id: format!("{client_id}-alerts-{}", k.name),
                }
            }
            other => {
                return Err(format!(
                    "{at}: unknown kind {other:?} (use \"file\", \"webhook\" or \"mqtt\")"
                ));
            }
        };
        if sinks.iter().any(|x: &sink::SinkConfig| x.name == k.name) {
            return Err(format!("{at}: two sinks are named {:?}", k.name));
        }
        sinks.push(sink::SinkConfig {
            name: k.name.clone(),
            target,
            max_backlog: k.max_backlog.unwrap_or(100_000),
            backoff_min_ms: k.backoff_min_ms.unwrap_or(500),
            backoff_max_ms: k.backoff_max_ms.unwrap_or(60_000),
        });
    }
    Ok((s, sinks))
}

/// Per device, its newest vitals event time: how far a batch evaluation's findings reach.
pub async fn device_progress(snapshot: &Snapshot) -> Result<BTreeMap<String, i64>, AlertError> {
    let ctx = query::session(snapshot, &QueryConfig::default())?;
    let mut out = BTreeMap::new();
    for b in ctx
        .sql("SELECT device_id, CAST(MAX(ts) AS BIGINT) FROM vitals GROUP BY device_id")
        .await?
        .collect()
        .await?
    {
        let ids = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)
            .map_err(|e| AlertError::DataFusion(e.into()))?;
        let ids = ids.as_string::<i32>();
        let Some(ts) = b
            .column(1)
            .as_primitive_opt::<arrow::datatypes::Int64Type>()
        else {
            continue;
        };
        for r in 0..b.num_rows() {
            if ids.is_valid(r) && ts.is_valid(r) {
                out.insert(ids.value(r).to_string(), ts.value(r));
            }
        }
    }
    Ok(out)
}

/// Evaluates the alerts over a data directory's stored findings as an import would — every
/// device's data counts as evaluated, every group is sent at once — and stores the result.
pub async fn evaluate_dir(
    data_dir: &Path,
    registry: Option<RecordBatch>,
    settings: &Settings,
    now_wall_ms: i64,
) -> Result<(Outcome, AlertState), AlertError> {
    let snapshot = Snapshot::load(data_dir).map_err(|e| AlertError::State {
        path: data_dir.display().to_string(),
        problem: e.to_string(),
    })?;
    let findings = crate::rules::finding::load(data_dir).map_err(|e| AlertError::State {
        path: data_dir.display().to_string(),
        problem: e.to_string(),
    })?;
    let mut state = AlertState::load(data_dir)?;
    let progress = device_progress(&snapshot).await?;
    let input = Input {
        snapshot: &snapshot,
        registry,
        findings: &findings,
        progress: &progress,
        now_wall_ms,
        flush_all: true,
    };
    let o = state.evaluate(data_dir, &input, settings).await?;
    state.save(data_dir)?;
    Ok((o, state))
}
