//! One charger: its health report, vitals downsampled for plotting, the EVSE-state and
//! contactor timeline, sessions, findings over a range, alerts, and a case export.
//!
//! Downsampling keeps the minimum and the maximum of every field per time bucket, so a
//! 2-second spike survives a 30-day view (an average would flatten it); the bucket is the
//! range divided by the points asked for, never under one millisecond, so a short range
//! comes back raw (one sample per bucket, min = max).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use datafusion::prelude::{SessionContext, col, lit};
use datafusion::scalar::ScalarValue;
use serde_json::{Value, json};

use super::columns::{f64s, i64s};
use super::fleet::{Cache, alert_summaries, finding_json, fleet};
use super::{ApiError, App, Caller, datafusion_error, known_params, time_param, usize_param};
use crate::capture::format_rfc3339_ms;
use crate::model::{FieldKind, Table, VITALS};
use crate::rules::Finding;
use crate::rules::health::{HealthReport, SessionStats};

type Params = Query<HashMap<String, String>>;

/// How long a health report is served before a refresh starts.
const HEALTH_MAX_AGE: Duration = Duration::from_secs(10);
const DAY_MS: i64 = 86_400_000;

/// Fields plotted when a request names none: the device page's panels.
pub const DEFAULT_FIELDS: &[&str] = &[
    "grid_v",
    "voltageA_v",
    "voltageB_v",
    "voltageC_v",
    "vehicle_current_a",
    "currentA_a",
    "currentB_a",
    "currentC_a",
    "currentN_a",
    "grid_hz",
    "handle_temp_c",
    "pcba_temp_c",
    "mcu_temp_c",
    "pilot_high_v",
    "pilot_low_v",
    "prox_v",
];

fn quoted(s: &str) -> String {
    s.replace('\'', "''")
}

/// The device's newest telemetry time, or 404.
async fn last_seen(app: &Arc<App>, caller: &Caller, id: &str) -> Result<i64, ApiError> {
    let f = fleet(app, caller).await?;
    if let Some(d) = f.device(id) {
        return Ok(d.last_seen_ms);
    }
    // The fleet list may be seconds old: ask the store before answering 404.
    let app2 = app.clone();
    let q = quoted(id);
    let seen = app
        .run(caller, async move {
            let snap = app2.snapshot()?;
            let ctx = crate::query::session(&snap, &app2.query_config())?;
            let b = crate::query::run_readonly(
                &ctx,
                &format!("SELECT MAX(CAST(ts AS BIGINT)) FROM vitals WHERE device_id = '{q}'"),
            )
            .await?;
            Ok(match b.first() {
                Some(b) => i64s(b, 0)?.into_iter().next().flatten(),
                None => None,
            })
        })
        .await?;
    seen.ok_or_else(|| ApiError::NotFound(format!("no telemetry for device {id:?}")))
}

/// Times the API accepts: years 1 to 9999 (keeps every difference far from overflow).
const MIN_MS: i64 = -62_135_596_800_000;
const MAX_MS: i64 = 253_402_300_799_999;

/// The `from`/`to` parameters as given (checked before the device is looked up, so a bad
/// parameter is a 400 whether or not the device exists).
struct RangeParams {
    from: Option<i64>,
    to: Option<i64>,
}

fn range_params(q: &HashMap<String, String>) -> Result<RangeParams, ApiError> {
    let one = |name: &str| -> Result<Option<i64>, ApiError> {
        let v = time_param(name, q.get(name))?;
        if v.is_some_and(|ms| !(MIN_MS..=MAX_MS).contains(&ms)) {
            return Err(ApiError::param(
                name,
                "must be between the years 1 and 9999",
            ));
        }
        Ok(v)
    };
    let r = RangeParams {
        from: one("from")?,
        to: one("to")?,
    };
    if let (Some(f), Some(t)) = (r.from, r.to) {
        check_span(f, t)?;
    }
    Ok(r)
}

fn check_span(from: i64, to: i64) -> Result<(), ApiError> {
    if from >= to {
        return Err(ApiError::param("from", "must be before to"));
    }
    if to - from > 400 * DAY_MS {
        return Err(ApiError::param("from", "a range is at most 400 days"));
    }
    Ok(())
}

/// `[from, to)`: what was asked, else the last 24 h of the device's data.
fn range(p: &RangeParams, last_ms: i64) -> Result<(i64, i64), ApiError> {
    let to = p.to.unwrap_or(last_ms.saturating_add(1));
    let from = p.from.unwrap_or(to.saturating_sub(DAY_MS));
    check_span(from, to)?;
    Ok((from, to))
}

/// A session whose `dev` view holds `table`'s rows of `id` in `[from, to)`.
async fn device_view(
    app: &App,
    table: Table,
    id: &str,
    from: i64,
    to: i64,
) -> Result<SessionContext, ApiError> {
    let snap = app.snapshot()?;
    let ctx = crate::query::session(&snap, &app.query_config())?;
    let ts = |ms: i64| {
        lit(ScalarValue::TimestampMillisecond(
            Some(ms),
            Some("UTC".into()),
        ))
    };
    let df = ctx
        .table(table.name())
        .await
        .map_err(datafusion_error)?
        .filter(
            col("device_id")
                .eq(lit(id))
                .and(col("ts").gt_eq(ts(from)))
                .and(col("ts").lt(ts(to))),
        )
        .map_err(datafusion_error)?;
    ctx.register_table("dev", df.into_view())
        .map_err(datafusion_error)?;
    Ok(ctx)
}

fn stats_json(s: &SessionStats) -> Value {
    json!({
        "count": s.count,
        "energy_kwh": s.energy_kwh,
        "max_current_a": s.max_current_a,
        "ended": s.ended.iter().map(|(k, n)| json!({"reason": k, "count": n})).collect::<Vec<_>>(),
    })
}

fn pairs(v: &[(String, String)]) -> Value {
    Value::Object(
        v.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// The health report as JSON (the content `wallscope health` prints).
pub(crate) fn health_json(r: &HealthReport) -> Value {
    json!({
        "device_id": r.device_id,
        "as_of": format_rfc3339_ms(r.as_of_ms),
        "status": r.status.as_str(),
        "last_seen": format_rfc3339_ms(r.last_seen_ms),
        "identity": pairs(&r.identity),
        "vitals": r.vitals.iter().map(|c| json!({"name": c.name, "value": c.value, "normal": c.normal, "ok": c.ok})).collect::<Vec<_>>(),
        "sessions_24h": stats_json(&r.sessions_24h),
        "sessions_7d": stats_json(&r.sessions_7d),
        "recent_sessions": r.recent_sessions.iter().map(|s| json!({
            "start": format_rfc3339_ms(s.start_ms),
            "start_ms": s.start_ms,
            "minutes": s.minutes,
            "energy_wh": s.energy_wh,
            "max_current_a": s.max_current_a,
            "closures": s.closures,
            "ended": s.ended,
        })).collect::<Vec<_>>(),
        "active_findings": r.active.iter().map(finding_json).collect::<Vec<_>>(),
        "earlier_findings": r.earlier.iter().map(finding_json).collect::<Vec<_>>(),
        "notes": r.notes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "lifetime": pairs(&r.lifetime),
        "wifi": pairs(&r.wifi),
    })
}

/// The device's health report, cached per device. The hot path (a cached report) touches
/// nothing else: an unknown device is found out by the report itself (404).
async fn health_value(app: &Arc<App>, caller: &Caller, id: &str) -> Result<Arc<Value>, ApiError> {
    let a = app.clone();
    let device = id.to_string();
    Cache::get(
        app,
        |a| &a.cache.health,
        caller,
        id,
        HEALTH_MAX_AGE,
        move || async move {
            let snap = a.snapshot()?;
            let registry = a.registry()?;
            let r =
                crate::rules::health::report(&snap, registry, &a.pack, &device, &a.query_config())
                    .await
                    .map_err(|e| match e {
                        crate::rules::health::HealthError::UnknownDevice { device, .. } => {
                            ApiError::NotFound(format!("no telemetry for device {device:?}"))
                        }
                        other => ApiError::Internal(other.to_string()),
                    })?;
            Ok(health_json(&r))
        },
    )
    .await
}

pub(crate) async fn health(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    known_params(&q, &[])?;
    Ok(Json((*health_value(&app, &caller, &id).await?).clone()))
}

pub(crate) async fn sessions(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    known_params(&q, &[])?;
    let h = health_value(&app, &caller, &id).await?;
    Ok(Json(json!({
        "device_id": id,
        "as_of": h["as_of"],
        "last_24h": h["sessions_24h"],
        "last_7d": h["sessions_7d"],
        "recent": h["recent_sessions"],
    })))
}

/// Checks the `fields` parameter against the vitals catalogue.
fn fields_param(v: Option<&String>) -> Result<Vec<(&'static str, FieldKind)>, ApiError> {
    let names: Vec<&str> = match v.filter(|s| !s.is_empty()) {
        Some(s) => s.split(',').map(str::trim).collect(),
        None => DEFAULT_FIELDS.to_vec(),
    };
    let mut out: Vec<(&'static str, FieldKind)> = Vec::new();
    for n in names {
        if out.iter().any(|(name, _)| *name == n) {
            continue;
        }
        let Some(f) = VITALS.iter().find(|f| f.name == n) else {
            return Err(ApiError::param(
                "fields",
                format!("{n:?} is not a vitals field (see DOMAIN.md §2; e.g. grid_v, currentA_a)"),
            ));
        };
        match f.kind {
            FieldKind::F64 | FieldKind::I64 | FieldKind::Bool => out.push((f.name, f.kind)),
            _ => {
                return Err(ApiError::param(
                    "fields",
                    format!("{n:?} is not numeric and cannot be plotted"),
                ));
            }
        }
    }
    if out.is_empty() || out.len() > 40 {
        return Err(ApiError::param("fields", "name 1 to 40 fields"));
    }
    Ok(out)
}

/// Rounds for JSON: plots need no more than 4 decimals, and it halves the payload.
fn round(v: Option<f64>) -> Value {
    match v {
        Some(x) if x.is_finite() => json!((x * 10_000.0).round() / 10_000.0),
        _ => Value::Null,
    }
}

pub(crate) async fn vitals(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    known_params(&q, &["from", "to", "points", "fields"])?;
    let points = usize_param("points", q.get("points"), 1000, 10..=20_000)?;
    let fields = fields_param(q.get("fields"))?;
    let rp = range_params(&q)?;
    let last = last_seen(&app, &caller, &id).await?;
    let (from, to) = range(&rp, last)?;
    let bucket_ms = ((to - from) as f64 / points as f64).ceil().max(1.0) as i64;
    let a = app.clone();
    let device = id.clone();
    let fl = fields.clone();
    let batches = app
        .run(&caller, async move {
            let ctx = device_view(&a, Table::Vitals, &device, from, to).await?;
            let mut cols = Vec::new();
            for (name, ty) in &fl {
                let e = if *ty == FieldKind::Bool {
                    format!("CAST(\"{name}\" AS INT)")
                } else {
                    format!("\"{name}\"")
                };
                cols.push(format!(
                    "MIN({e}) AS \"min_{name}\", MAX({e}) AS \"max_{name}\""
                ));
            }
            let sql = format!(
                "SELECT (CAST(ts AS BIGINT) - {from}) / {bucket_ms} AS b, COUNT(*) AS n, {} \
                 FROM dev GROUP BY 1 ORDER BY 1",
                cols.join(", ")
            );
            Ok(crate::query::run_readonly(&ctx, &sql).await?)
        })
        .await?;
    let mut t = Vec::new();
    let mut samples = 0i64;
    let mut series: Vec<(Vec<Value>, Vec<Value>)> = vec![(Vec::new(), Vec::new()); fields.len()];
    for b in &batches {
        let bk = i64s(b, 0)?;
        let n = i64s(b, 1)?;
        for (k, _) in fields.iter().enumerate() {
            let mn = f64s(b, 2 + 2 * k)?;
            let mx = f64s(b, 3 + 2 * k)?;
            series[k].0.extend(mn.into_iter().map(round));
            series[k].1.extend(mx.into_iter().map(round));
        }
        t.extend(bk.iter().map(|x| json!(from + x.unwrap_or(0) * bucket_ms)));
        samples += n.iter().flatten().sum::<i64>();
    }
    let mut out = serde_json::Map::new();
    for ((name, _), (mn, mx)) in fields.iter().zip(series) {
        out.insert(name.to_string(), json!({"min": mn, "max": mx}));
    }
    Ok(Json(json!({
        "device_id": id,
        "from": format_rfc3339_ms(from),
        "to": format_rfc3339_ms(to),
        "from_ms": from,
        "to_ms": to,
        "bucket_ms": bucket_ms,
        "samples": samples,
        "t": t,
        "series": out,
    })))
}

/// Segments of constant EVSE state and contactor position.
pub(crate) async fn timeline(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    known_params(&q, &["from", "to"])?;
    let rp = range_params(&q)?;
    let last = last_seen(&app, &caller, &id).await?;
    let (from, to) = range(&rp, last)?;
    const MAX_CHANGES: usize = 20_000;
    let a = app.clone();
    let device = id.clone();
    let batches = app
        .run(&caller, async move {
            let ctx = device_view(&a, Table::Vitals, &device, from, to).await?;
            // Only the rows where something changes (LAG over time): a month of 2-second
            // data is 1.3 M rows but a few thousand changes.
            let sql = format!(
                "SELECT t, evse_state, contactor FROM ( \
                   SELECT CAST(ts AS BIGINT) AS t, evse_state, CAST(contactor_closed AS INT) AS contactor, \
                     LAG(evse_state) OVER (ORDER BY ts) AS pe, \
                     LAG(CAST(contactor_closed AS INT)) OVER (ORDER BY ts) AS pc, \
                     ROW_NUMBER() OVER (ORDER BY ts) AS rn \
                   FROM dev) \
                 WHERE rn = 1 OR (pe IS DISTINCT FROM evse_state) OR (pc IS DISTINCT FROM contactor) \
                 ORDER BY t LIMIT {}",
                MAX_CHANGES + 1
            );
            Ok(crate::query::run_readonly(&ctx, &sql).await?)
        })
        .await?;
    let mut changes = Vec::new();
    for b in &batches {
        let t = i64s(b, 0)?;
        let s = i64s(b, 1)?;
        let c = i64s(b, 2)?;
        for i in 0..b.num_rows() {
            changes.push((t[i].unwrap_or(0), s[i], c[i]));
        }
    }
    let truncated = changes.len() > MAX_CHANGES;
    changes.truncate(MAX_CHANGES);
    let mut segments = Vec::new();
    for (i, (t, s, c)) in changes.iter().enumerate() {
        let end = changes.get(i + 1).map(|n| n.0).unwrap_or(last.min(to));
        segments.push(json!({
            "from_ms": t, "to_ms": end.max(*t),
            "evse_state": s,
            "state": s.map(crate::rules::health::state_name),
            "contactor_closed": c.map(|x| x != 0),
        }));
    }
    Ok(Json(json!({
        "device_id": id,
        "from_ms": from,
        "to_ms": to,
        "truncated": truncated,
        "segments": segments,
    })))
}

/// Findings overlapping a range: the recorded ones (what `run` stored, or what `serve`
/// evaluated at start) — instant at any range; with `evaluate=true`, evaluated now with the
/// server's rule pack over the range (seconds for a month of 2-second data).
pub(crate) async fn findings(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    known_params(&q, &["from", "to", "evaluate"])?;
    let evaluate = match q.get("evaluate").map(String::as_str) {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(v) => {
            return Err(ApiError::param(
                "evaluate",
                format!("{v:?}: use true or false"),
            ));
        }
    };
    let rp = range_params(&q)?;
    let last = last_seen(&app, &caller, &id).await?;
    let (from, to) = range(&rp, last)?;
    let found: Vec<Finding> = if evaluate {
        let a = app.clone();
        let device = id.clone();
        app.run(&caller, async move {
            let snap = a.snapshot()?;
            let registry = a.registry()?;
            let scope = crate::rules::Scope {
                since_ms: Some(from),
                until_ms: Some(to),
                devices: Some(vec![device]),
            };
            let mut f = crate::rules::evaluate(&snap, registry, &a.pack, &scope, &a.query_config())
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .findings;
            crate::rules::finding::sort_for_people(&mut f);
            Ok(f)
        })
        .await?
    } else {
        let f = fleet(&app, &caller).await?;
        let mut v: Vec<Finding> = f
            .findings
            .iter()
            .filter(|x| x.device_id == id && x.last_ms >= from && x.first_ms < to)
            .cloned()
            .collect();
        crate::rules::finding::sort_for_people(&mut v);
        v
    };
    Ok(Json(json!({
        "device_id": id,
        "from_ms": from,
        "to_ms": to,
        "evaluated": evaluate,
        "findings": found.iter().map(finding_json).collect::<Vec<_>>(),
    })))
}

pub(crate) async fn alerts(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    known_params(&q, &[])?;
    last_seen(&app, &caller, &id).await?;
    let f = fleet(&app, &caller).await?;
    let rows = f
        .alerts
        .iter()
        .filter(|r| r.device_id.as_deref() == Some(id.as_str()));
    let acts = crate::alerts::actions::load(&app.data_dir)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(
        json!({"device_id": id, "alerts": alert_summaries(rows, &acts)}),
    ))
}

/// The range as a capture file (what `wallscope export` writes), for replay or a case.
pub(crate) async fn export(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    known_params(&q, &["from", "to"])?;
    let rp = range_params(&q)?;
    let last = last_seen(&app, &caller, &id).await?;
    let (from, to) = range(&rp, last)?;
    let a = app.clone();
    let device = id.clone();
    let bytes = app
        .run(&caller, async move {
            let tmp = ScratchDir::new().map_err(|e| ApiError::Internal(format!("export: {e}")))?;
            let out = tmp.0.join("case.jsonl");
            let snap = a.snapshot()?;
            let spec = crate::pipeline::export::ExportSpec {
                device,
                since_ms: Some(from),
                until_ms: Some(to),
                out: out.clone(),
            };
            crate::pipeline::export::export(&snap, &a.pack, &spec, &a.query_config())
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            std::fs::read(&out).map_err(|e| ApiError::Internal(e.to_string()))
        })
        .await?;
    let name = format!(
        "{}-{}.jsonl",
        id.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
            "_"
        ),
        format_rfc3339_ms(from).replace(':', "")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// A private scratch directory for one export (outside the data directory), removed when
/// dropped — also when the request is cancelled mid-export.
struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    fn new() -> std::io::Result<ScratchDir> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
        let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let p = std::env::temp_dir().join(format!("wallscope-export-{name}"));
        std::fs::create_dir(&p)?;
        Ok(ScratchDir(p))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
