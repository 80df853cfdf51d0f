//! Evaluation: run a pack over a scope of the store (a time range, optionally some devices)
//! and turn each result row into a [`Finding`].
//!
//! One evaluation = one DataFusion session: the store's tables restricted to the scope (plus
//! each rule's look-back window before it), the shared views materialized once, then every
//! rule. Time is event time throughout: "now" is the end of the scope, or the newest
//! telemetry in it, never the wall clock — so a capture evaluated a year later, or replayed
//! at 100×, gives the same findings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, UInt64Type};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionContext, col, lit};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use serde_json::Value;

use super::finding::Finding;
use super::pack::{Pack, SPECIAL_COLUMNS};
use super::spec::{Rule, Severity};
use super::views::VIEWS;
use crate::capture::format_rfc3339_ms;
use crate::model::Table;
use crate::query::{self, QueryConfig, QueryError};
use crate::store::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("evaluation: {0}")]
    DataFusion(#[from] DataFusionError),
    #[error("shared view `{view}` failed: {source}")]
    View {
        view: &'static str,
        source: DataFusionError,
    },
    #[error("rule {rule} ({source_file}) failed: {problem}")]
    Rule {
        rule: String,
        source_file: String,
        problem: String,
    },
}

/// What to evaluate.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Findings must end at or after this time (the data read starts earlier, by the
    /// longest rule window, so episodes that began before it are seen whole).
    pub since_ms: Option<i64>,
    /// Evaluate as of this time (exclusive); default: just after the newest telemetry in
    /// the store (of any device, so a device evaluated alone is judged on the fleet's clock).
    pub until_ms: Option<i64>,
    /// Only these devices (live mode evaluates the devices with new data).
    pub devices: Option<Vec<String>>,
}

/// A rule that could not judge some devices because the registry lacks a fact it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub rule: String,
    pub fault: String,
    pub missing: Vec<String>,
    pub devices: Vec<String>,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<&str> = self.devices.iter().take(5).map(|s| s.as_str()).collect();
        let more = if self.devices.len() > 5 {
            format!(" and {} more", self.devices.len() - 5)
        } else {
            String::new()
        };
        write!(
            f,
            "{} ({}) could not be fully judged for {}{more}: the device registry has no {} for them, and the rule does not guess it (load one with --devices FILE)",
            self.fault,
            self.rule,
            shown.join(", "),
            self.missing.join(", ")
        )
    }
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub findings: Vec<Finding>,
    pub notes: Vec<Note>,
    pub eval_start_ms: i64,
    pub eval_end_ms: i64,
    /// De-duplicated vitals samples the rules saw.
    pub samples: u64,
    pub devices: usize,
    /// How many shards (sessions) the devices were evaluated in.
    pub shards: usize,
    /// Wall time per shared view and per rule.
    pub timings: Vec<(String, Duration)>,
}

/// A session ready for rules: the scope's tables, the shared views, the registry.
pub struct Prepared {
    pub ctx: SessionContext,
    pub eval_start_ms: i64,
    pub eval_end_ms: i64,
    pub samples: u64,
    /// For each device in scope, the registry facts it has.
    pub facts: BTreeMap<String, Vec<String>>,
    pub timings: Vec<(String, Duration)>,
}

/// Builds the session one evaluation runs in; `None` when the scope holds no telemetry.
/// `lookback_ms` extends the data read before `scope.since_ms` (the longest rule window).
pub async fn prepare(
    snapshot: &Snapshot,
    devices: Option<RecordBatch>,
    lookback_ms: i64,
    scope: &Scope,
    cfg: &QueryConfig,
) -> Result<Option<Prepared>, EvalError> {
    let ctx = query::session(snapshot, cfg)?;
    if let Some(d) = devices {
        query::set_devices(&ctx, d)?;
    }
    let read_from = scope.since_ms.map(|s| s.saturating_sub(lookback_ms));
    for t in Table::TELEMETRY {
        // `fleet_<table>`: the same time range for every device, for rules that compare a
        // unit with the fleet (live evaluations narrow the plain tables to a few devices).
        let fleet = format!("fleet_{}", t.name());
        restrict(&ctx, t.name(), &fleet, read_from, scope.until_ms, None).await?;
        restrict(
            &ctx,
            t.name(),
            t.name(),
            read_from,
            scope.until_ms,
            scope.devices.as_deref(),
        )
        .await?;
    }
    let Some((min_ms, max_ms)) = time_span(&ctx).await? else {
        return Ok(None);
    };
    let mut p = Prepared {
        eval_end_ms: scope.until_ms.unwrap_or(max_ms + 1),
        eval_start_ms: scope.since_ms.unwrap_or(min_ms),
        samples: 0,
        facts: BTreeMap::new(),
        timings: Vec::new(),
        ctx,
    };
    for (name, took, rows) in register_views(&p.ctx).await? {
        if name == "samples" {
            p.samples = rows;
        }
        p.timings.push((format!("view {name}"), took));
    }
    p.facts = registry_facts(&p.ctx).await?;
    Ok(Some(p))
}

/// Evaluates `pack` over `scope` of `snapshot`. `devices` replaces the data directory's
/// registry when given.
pub async fn evaluate(
    snapshot: &Snapshot,
    devices: Option<RecordBatch>,
    pack: &Pack,
    scope: &Scope,
    cfg: &QueryConfig,
) -> Result<Evaluation, EvalError> {
    let lookback = pack.longest_window_ms();
    // "Now" is fixed for the whole fleet first, so every device (and every shard) judges
    // silence (F00) against the same clock, whichever devices this evaluation covers.
    let until = match scope.until_ms {
        Some(u) => Some(u),
        None => newest_ms(snapshot, cfg).await?.map(|t| t + 1),
    };
    let Some(until_ms) = until else {
        return Ok(Evaluation::default()); // no telemetry at all
    };
    let ids = match &scope.devices {
        Some(d) => d.clone(),
        None => device_ids(snapshot, cfg).await?,
    };
    // Many devices are evaluated in shards, so the materialized views stay within the
    // memory limit: as many devices per shard as make about SHARD_ROWS vitals rows over
    // the range read.
    let read_from = scope.since_ms.map(|s| s.saturating_sub(lookback));
    let per_shard = shard_devices(snapshot, cfg, read_from, until_ms).await?;
    let shards: Vec<Option<Vec<String>>> = if ids.len() <= per_shard {
        vec![scope.devices.clone()]
    } else {
        ids.chunks(per_shard).map(|c| Some(c.to_vec())).collect()
    };
    let mut out = Evaluation::default();
    for devices_in_shard in shards {
        let shard = Scope {
            since_ms: scope.since_ms,
            until_ms: Some(until_ms),
            devices: devices_in_shard,
        };
        let preparing = Instant::now();
        let Some(p) = prepare(snapshot, devices.clone(), lookback, &shard, cfg).await? else {
            continue;
        };
        let prepare_ms = preparing.elapsed().as_millis() as u64;
        let running = Instant::now();
        let e = run_pack(&p, pack, &shard).await?;
        tracing::debug!(
            shard = out.shards,
            devices = e.devices,
            samples = e.samples,
            prepare_ms,
            rules_ms = running.elapsed().as_millis() as u64,
            "evaluation shard"
        );
        out.eval_start_ms = if out.devices == 0 {
            e.eval_start_ms
        } else {
            out.eval_start_ms.min(e.eval_start_ms)
        };
        out.eval_end_ms = out.eval_end_ms.max(e.eval_end_ms);
        out.samples += e.samples;
        out.devices += e.devices;
        out.shards += 1;
        out.findings.extend(e.findings);
        for n in e.notes {
            match out.notes.iter_mut().find(|o| o.rule == n.rule) {
                Some(o) => o.devices.extend(n.devices),
                None => out.notes.push(n),
            }
        }
        for (what, took) in e.timings {
            match out.timings.iter_mut().find(|(w, _)| *w == what) {
                Some((_, t)) => *t += took,
                None => out.timings.push((what, took)),
            }
        }
    }
    Ok(out)
}

/// Vitals rows one shard may hold (about 250 devices × 24 h at 10 s polls): the
/// materialized views of that many rows stay well inside the default 2 GiB pool.
pub const SHARD_ROWS: u64 = 2_000_000;

/// Devices per shard for the range `[from_ms, until_ms)`: the fleet's mean vitals rows per
/// device over that range decide how many devices make `SHARD_ROWS`.
async fn shard_devices(
    snapshot: &Snapshot,
    cfg: &QueryConfig,
    from_ms: Option<i64>,
    until_ms: i64,
) -> Result<usize, EvalError> {
    let ctx = query::session(snapshot, cfg)?;
    let from = from_ms.map_or(String::new(), |f| format!("CAST(ts AS BIGINT) >= {f} AND "));
    let sql = format!(
        "SELECT COUNT(*), COUNT(DISTINCT device_id) FROM vitals \
         WHERE {from}CAST(ts AS BIGINT) < {until_ms}"
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    let count = |i: usize| {
        batches
            .first()
            .and_then(|b| b.column(i).as_primitive_opt::<Int64Type>())
            .filter(|c| !c.is_empty() && c.is_valid(0))
            .map_or(0, |c| c.value(0).max(0) as u64)
    };
    let (rows, devices) = (count(0), count(1));
    if rows == 0 || devices == 0 {
        return Ok(usize::MAX);
    }
    let per_device = rows.div_ceil(devices);
    Ok((SHARD_ROWS / per_device).max(1) as usize)
}

/// Every device with vitals in the store, sorted.
pub async fn device_ids(snapshot: &Snapshot, cfg: &QueryConfig) -> Result<Vec<String>, EvalError> {
    let ctx = query::session(snapshot, cfg)?;
    let mut ids = Vec::new();
    for b in ctx
        .sql("SELECT DISTINCT device_id FROM vitals ORDER BY device_id")
        .await?
        .collect()
        .await?
    {
        let c = text_column(b.column(0))?;
        ids.extend(c.iter().flatten().map(String::from));
    }
    Ok(ids)
}

async fn newest_ms(snapshot: &Snapshot, cfg: &QueryConfig) -> Result<Option<i64>, EvalError> {
    let ctx = query::session(snapshot, cfg)?;
    Ok(time_span(&ctx).await?.map(|(_, max)| max))
}

/// Runs every rule of `pack` in a prepared session.
pub async fn run_pack(p: &Prepared, pack: &Pack, scope: &Scope) -> Result<Evaluation, EvalError> {
    let ctx = &p.ctx;
    let facts = &p.facts;
    let mut out = Evaluation {
        eval_start_ms: p.eval_start_ms,
        eval_end_ms: p.eval_end_ms,
        samples: p.samples,
        devices: facts.len(),
        timings: p.timings.clone(),
        ..Evaluation::default()
    };
    let engine_params = [
        ("eval_start_ms", out.eval_start_ms.to_string()),
        ("eval_end_ms", out.eval_end_ms.to_string()),
    ];
    let eval_end_ms = out.eval_end_ms;
    let engine_params = &engine_params;
    // Rules are independent queries over the same materialized views: run a few at once, so
    // one rule's single-threaded stages (a final sort, a merge) overlap another's parallel
    // scan. `buffered` keeps the pack's order in the output.
    let futures: Vec<_> = pack
        .rules
        .iter()
        .map(|rule| Box::pin(eval_rule(ctx, rule, engine_params, eval_end_ms)))
        .collect();
    let results: Vec<Result<(Vec<Finding>, Duration), EvalError>> = futures::stream::iter(futures)
        .buffered(RULES_AT_ONCE)
        .collect()
        .await;
    for (rule, result) in pack.rules.iter().zip(results) {
        let (mut found, took) = result?;
        if !rule.needs.is_empty() {
            let lacking: Vec<String> = facts
                .iter()
                .filter(|(_, have)| rule.needs.iter().any(|n| !have.contains(n)))
                .map(|(d, _)| d.clone())
                .collect();
            if !lacking.is_empty() {
                let missing = rule
                    .needs
                    .iter()
                    .filter(|n| lacking.iter().any(|d| !facts[d].contains(*n)))
                    .cloned()
                    .collect();
                out.notes.push(Note {
                    rule: rule.id.clone(),
                    fault: rule.fault.clone(),
                    missing,
                    devices: lacking,
                });
            }
        }
        if let Some(since) = scope.since_ms {
            found.retain(|f| f.last_ms >= since);
        }
        out.findings.extend(found);
        out.timings.push((format!("rule {}", rule.id), took));
    }
    Ok(out)
}

/// Rules evaluated concurrently within one evaluation.
const RULES_AT_ONCE: usize = 3;

/// One rule's query and its findings, with the time it took.
async fn eval_rule(
    ctx: &SessionContext,
    rule: &Rule,
    engine_params: &[(&str, String)],
    eval_end_ms: i64,
) -> Result<(Vec<Finding>, Duration), EvalError> {
    let started = Instant::now();
    let sql = rule.render_sql(engine_params);
    let batches = run_staged(ctx, &sql)
        .await
        .map_err(|e| rule_error(rule, e.to_string()))?;
    let mut found = Vec::new();
    for b in &batches {
        found.extend(extract(rule, b, eval_end_ms)?);
    }
    Ok((found, started.elapsed()))
}

/// Runs a rule's query with every CTE it would evaluate twice computed once first (see
/// [`super::stages`]). Rules run concurrently in one session: each run's stage tables get
/// their own names and are dropped when it ends, whether it succeeded or not.
pub(crate) async fn run_staged(
    ctx: &SessionContext,
    sql: &str,
) -> Result<Vec<RecordBatch>, QueryError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static RUN: AtomicU64 = AtomicU64::new(0);
    let staged = super::stages::split(
        sql,
        &format!("ws_stage_{}_", RUN.fetch_add(1, Ordering::Relaxed)),
    );
    struct Registered<'a>(&'a SessionContext, Vec<String>);
    impl Drop for Registered<'_> {
        fn drop(&mut self) {
            for t in &self.1 {
                let _ = self.0.deregister_table(t.as_str());
            }
        }
    }
    let mut registered = Registered(ctx, Vec::new());
    for stage in &staged.stages {
        // Planned once: the plan's schema names an empty stage's columns.
        let plan = query::plan_readonly(ctx, &stage.sql).await?;
        let planned = plan.schema().inner().clone();
        let batches = ctx.execute_logical_plan(plan).await?.collect().await?;
        let schema = batches.first().map_or(planned, |b| b.schema());
        let table = MemTable::try_new(schema, vec![batches])?;
        ctx.register_table(stage.table.as_str(), Arc::new(table))?;
        registered.1.push(stage.table.clone());
    }
    let out = query::run_readonly(ctx, &staged.query).await;
    drop(registered);
    out
}

/// Computes the shared views once and registers them as in-memory tables (in build order:
/// each may read the ones before). Returns each view's time and row count.
pub async fn register_views(
    ctx: &SessionContext,
) -> Result<Vec<(&'static str, Duration, u64)>, EvalError> {
    let mut out = Vec::new();
    for (name, sql) in VIEWS {
        let started = Instant::now();
        // `samples` is stored sorted by device and time, and says so: most rules window over
        // it by (device_id, t_ms), and a declared order spares each of them a sort.
        let order = (name == "samples").then(|| {
            vec![
                vec![
                    col("device_id").sort(true, false),
                    col("t_ms").sort(true, false),
                ],
                vec![
                    col("device_id").sort(true, false),
                    col("ts").sort(true, false),
                ],
            ]
        });
        let batches = async {
            if name == "samples" {
                return super::views::samples(ctx).await;
            }
            ctx.sql(sql).await?.collect().await
        }
        .await
        .map_err(|source| EvalError::View { view: name, source })?;
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => ctx.sql(sql).await?.schema().inner().clone(),
        };
        let mut table = MemTable::try_new(schema, vec![batches])?;
        if let Some(o) = order {
            table = table.with_sort_order(o);
        }
        ctx.register_table(name, Arc::new(table))?;
        out.push((name, started.elapsed(), rows));
    }
    Ok(out)
}

fn rule_error(rule: &Rule, problem: String) -> EvalError {
    EvalError::Rule {
        rule: rule.id.clone(),
        source_file: rule.source.clone(),
        problem,
    }
}

/// Registers `target` as a view of table `source`'s rows in scope (replacing `target`).
async fn restrict(
    ctx: &SessionContext,
    source: &str,
    target: &str,
    from_ms: Option<i64>,
    until_ms: Option<i64>,
    devices: Option<&[String]>,
) -> Result<(), EvalError> {
    if source == target && from_ms.is_none() && until_ms.is_none() && devices.is_none() {
        return Ok(());
    }
    let ts = |ms: i64| {
        lit(ScalarValue::TimestampMillisecond(
            Some(ms),
            Some("UTC".into()),
        ))
    };
    let mut df = ctx.table(source).await?;
    if let Some(f) = from_ms {
        df = df.filter(col("ts").gt_eq(ts(f)))?;
    }
    if let Some(u) = until_ms {
        df = df.filter(col("ts").lt(ts(u)))?;
    }
    match devices {
        // A few devices: a literal list. Many (a live evaluation of a big fleet): a semi-join
        // with a table of them — a list of 100,000 literals costs every query that reads
        // the view its planning time, a hash join does not.
        Some(d) if d.len() <= 64 => {
            let list = d.iter().map(|s| lit(s.as_str())).collect();
            df = df.filter(col("device_id").in_list(list, false))?;
        }
        Some(d) => {
            let schema = Arc::new(arrow::datatypes::Schema::new(vec![
                arrow::datatypes::Field::new("scope_device_id", DataType::Utf8, false),
            ]));
            let ids = StringArray::from_iter_values(d.iter().map(String::as_str));
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids)])
                .map_err(DataFusionError::from)?;
            let table = MemTable::try_new(schema, vec![vec![batch]])?;
            let right = ctx.read_table(Arc::new(table))?;
            df = df.join_on(
                right,
                datafusion::logical_expr::JoinType::LeftSemi,
                [
                    datafusion::logical_expr::cast(col("device_id"), DataType::Utf8)
                        .eq(col("scope_device_id")),
                ],
            )?;
        }
        None => {}
    }
    let view = df.into_view();
    ctx.deregister_table(target)?;
    ctx.register_table(target, view)?;
    Ok(())
}

/// The oldest and newest telemetry time in scope (vitals, lifetime, wifi).
async fn time_span(ctx: &SessionContext) -> Result<Option<(i64, i64)>, EvalError> {
    let sql = "SELECT MIN(t), MAX(t) FROM (\
        SELECT CAST(ts AS BIGINT) AS t FROM vitals \
        UNION ALL SELECT CAST(ts AS BIGINT) FROM lifetime \
        UNION ALL SELECT CAST(ts AS BIGINT) FROM wifi)";
    let batches = ctx.sql(sql).await?.collect().await?;
    let Some(b) = batches.first().filter(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let min = b.column(0).as_primitive_opt::<Int64Type>();
    let max = b.column(1).as_primitive_opt::<Int64Type>();
    Ok(match (min, max) {
        (Some(a), Some(z)) if !a.is_null(0) && !z.is_null(0) => Some((a.value(0), z.value(0))),
        _ => None,
    })
}

/// For each device in scope, the registry facts it has.
async fn registry_facts(ctx: &SessionContext) -> Result<BTreeMap<String, Vec<String>>, EvalError> {
    let facts = super::spec::REGISTRY_FACTS;
    let checks: Vec<String> = facts
        .iter()
        .map(|f| format!("d.{f} IS NOT NULL AS {f}"))
        .collect();
    let sql = format!(
        "SELECT s.device_id, {} FROM (SELECT DISTINCT device_id FROM samples) s \
         LEFT JOIN devices d ON s.device_id = d.device_id",
        checks.join(", ")
    );
    let mut out = BTreeMap::new();
    for b in ctx.sql(&sql).await?.collect().await? {
        let ids = text_column(b.column(0))?;
        for r in 0..b.num_rows() {
            let mut have = Vec::new();
            for (i, f) in facts.iter().enumerate() {
                let c = b.column(i + 1).as_boolean_opt();
                if c.is_some_and(|c| c.is_valid(r) && c.value(r)) {
                    have.push((*f).to_string());
                }
            }
            out.insert(ids.value(r).to_string(), have);
        }
    }
    Ok(out)
}

pub(crate) fn text_column(a: &ArrayRef) -> Result<StringArray, DataFusionError> {
    let c = arrow::compute::cast(a, &DataType::Utf8)?;
    Ok(c.as_string::<i32>().clone())
}

pub(crate) fn ms_column(a: &ArrayRef) -> Result<Int64Array, DataFusionError> {
    let c = match a.data_type() {
        DataType::Int64 => a.clone(),
        _ => {
            let t = arrow::compute::cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
            arrow::compute::cast(&t, &DataType::Int64)?
        }
    };
    Ok(c.as_primitive::<Int64Type>().clone())
}

/// Turns one result batch of `rule` into findings.
fn extract(rule: &Rule, b: &RecordBatch, eval_end_ms: i64) -> Result<Vec<Finding>, EvalError> {
    let err = |p: String| rule_error(rule, p);
    let schema = b.schema();
    let idx = |name: &str| schema.index_of(name).ok();
    let (Some(di), Some(fi), Some(li)) = (idx("device_id"), idx("first_ts"), idx("last_ts")) else {
        return Err(err(
            "the result lacks device_id, first_ts or last_ts (run wallscope rules check)".into(),
        ));
    };
    let conv = |e: DataFusionError| err(e.to_string());
    let ids = text_column(b.column(di)).map_err(conv)?;
    let first = ms_column(b.column(fi)).map_err(conv)?;
    let last = ms_column(b.column(li)).map_err(conv)?;
    let severity = idx("severity")
        .map(|i| text_column(b.column(i)))
        .transpose()
        .map_err(conv)?;
    let summary = idx("summary")
        .map(|i| text_column(b.column(i)))
        .transpose()
        .map_err(conv)?;
    let evidence_cols: Vec<usize> = (0..schema.fields().len())
        .filter(|i| {
            let n = schema.field(*i).name().as_str();
            ![di, fi, li].contains(i) && !SPECIAL_COLUMNS.contains(&n)
        })
        .collect();
    let mut out = Vec::with_capacity(b.num_rows());
    for r in 0..b.num_rows() {
        if ids.is_null(r) || first.is_null(r) || last.is_null(r) {
            continue;
        }
        let sev = match severity.as_ref().filter(|s| s.is_valid(r)) {
            Some(s) => Severity::parse(s.value(r)).ok_or_else(|| {
                err(format!(
                    "severity {:?} is not one of info, minor, major, critical",
                    s.value(r)
                ))
            })?,
            None => rule.severity,
        };
        let summary = summary
            .as_ref()
            .filter(|s| s.is_valid(r))
            .map(|s| s.value(r).to_string())
            .unwrap_or_else(|| rule.title.clone());
        let evidence = evidence_cols
            .iter()
            .map(|&i| (schema.field(i).name().clone(), cell_json(b.column(i), r)))
            .collect();
        let (a, z) = (first.value(r), last.value(r));
        out.push(Finding {
            rule: rule.id.clone(),
            fault: rule.fault.clone(),
            device_id: ids.value(r).to_string(),
            first_ms: a.min(z),
            last_ms: a.max(z),
            severity: sev,
            class: rule.class.as_str().into(),
            owner: rule.owner.as_str().into(),
            title: rule.title.clone(),
            summary,
            evidence,
            steps: rule.steps.clone(),
            detected_ms: eval_end_ms,
        });
    }
    Ok(out)
}

/// One evidence value as JSON: numbers rounded to 3 decimals, times as RFC 3339.
pub(crate) fn cell_json(a: &ArrayRef, r: usize) -> Value {
    if a.is_null(r) {
        return Value::Null;
    }
    match a.data_type() {
        DataType::Boolean => Value::Bool(
            a.as_any()
                .downcast_ref::<BooleanArray>()
                .is_some_and(|b| b.value(r)),
        ),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => arrow::compute::cast(a, &DataType::Int64)
            .ok()
            .map(|c| Value::from(c.as_primitive::<Int64Type>().value(r)))
            .unwrap_or(Value::Null),
        DataType::UInt64 => Value::from(a.as_primitive::<UInt64Type>().value(r)),
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => {
            arrow::compute::cast(a, &DataType::Float64)
                .ok()
                .map(|c| {
                    let v = c.as_primitive::<Float64Type>().value(r);
                    let rounded = (v * 1000.0).round() / 1000.0;
                    serde_json::Number::from_f64(rounded).map_or(Value::Null, Value::Number)
                })
                .unwrap_or(Value::Null)
        }
        DataType::Timestamp(..) => ms_column(a)
            .ok()
            .map(|c| Value::String(format_rfc3339_ms(c.value(r))))
            .unwrap_or(Value::Null),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..) => {
            text_column(a)
                .ok()
                .map(|c| Value::String(c.value(r).to_string()))
                .unwrap_or(Value::Null)
        }
        _ => arrow::util::display::ArrayFormatter::try_new(a.as_ref(), &Default::default())
            .ok()
            .map(|f| Value::String(f.value(r).to_string()))
            .unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A staged run returns what the inlined query returns, and leaves no table behind.
    #[tokio::test]
    async fn a_staged_run_equals_the_inlined_query_and_cleans_up() {
        let ctx = SessionContext::new();
        ctx.sql(
            "CREATE TABLE t AS SELECT * FROM (VALUES ('a', 1), ('a', 5), ('b', 2), ('b', 9), ('b', 4)) v(device_id, x)",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        let sql = "WITH r AS (SELECT device_id, x, ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY x) AS k FROM t), \
                   best AS (SELECT device_id, MAX(k) AS n FROM r GROUP BY device_id) \
                   SELECT r.device_id, r.x, best.n FROM r JOIN best ON r.device_id = best.device_id \
                   WHERE r.k = best.n ORDER BY r.device_id";
        assert_eq!(super::super::stages::split(sql, "p_").stages.len(), 1);
        let staged = run_staged(&ctx, sql).await.unwrap();
        let inlined = query::run_readonly(&ctx, sql).await.unwrap();
        let show = |b: &[RecordBatch]| {
            arrow::util::pretty::pretty_format_batches(b)
                .unwrap()
                .to_string()
        };
        assert_eq!(show(&staged), show(&inlined));
        assert!(
            show(&staged).contains("| b         | 9 | 3 |"),
            "{}",
            show(&staged)
        );
        let tables = || {
            ctx.catalog("datafusion")
                .unwrap()
                .schema("public")
                .unwrap()
                .table_names()
        };
        assert_eq!(tables(), ["t"], "stage tables must be dropped");
        // A stage that fails leaves nothing behind either.
        let bad = "WITH r AS (SELECT 1 AS x), q AS (SELECT nope FROM r) SELECT * FROM q, q q2, r";
        assert!(run_staged(&ctx, bad).await.is_err());
        assert_eq!(tables(), ["t"]);
    }
}
