//! `health <device>`: one screen on one charger — status, last seen, firmware, the latest
//! vitals against their normal ranges, sessions in the last 24 h and 7 days, active
//! findings with evidence and steps, lifetime counters and Wi-Fi.
//!
//! "Now" is the newest telemetry of the whole store (event time, as everywhere in the rule
//! layer), so a device that went quiet while the rest of the fleet kept reporting is
//! offline, and an old capture is judged as of its own end.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::prelude::SessionContext;

use super::engine::{self, EvalError, Note, Scope};
use super::finding::{Finding, sort_for_people};
use super::pack::Pack;
use super::spec::Severity;
use crate::query::{self, QueryConfig};
use crate::store::Snapshot;

const DAY_MS: i64 = 86_400_000;
/// Silence longer than this makes a device offline (the F00 rule's default).
pub const OFFLINE_AFTER_MS: i64 = 20 * 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Degraded,
    Faulted,
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Degraded => "degraded",
            Status::Faulted => "faulted",
            Status::Offline => "offline",
        }
    }
}

/// A device's status as of `now_ms` (the store's newest telemetry): offline after
/// [`OFFLINE_AFTER_MS`] of silence, else by the worst finding active in the last 24 h.
pub fn status_of(now_ms: i64, last_seen_ms: i64, worst: Option<Severity>) -> Status {
    if now_ms - last_seen_ms >= OFFLINE_AFTER_MS {
        Status::Offline
    } else if worst >= Some(Severity::Major) {
        Status::Faulted
    } else if worst >= Some(Severity::Minor) {
        Status::Degraded
    } else {
        Status::Ok
    }
}

/// How far back a finding counts as active in a status.
pub const ACTIVE_WITHIN_MS: i64 = DAY_MS;

/// One latest reading against its normal range.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub value: String,
    pub normal: String,
    pub ok: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SessionStats {
    pub count: u64,
    pub energy_kwh: f64,
    pub max_current_a: f64,
    /// How sessions ended, with counts.
    pub ended: Vec<(String, u64)>,
}

#[derive(Debug, Clone)]
pub struct SessionLine {
    pub start_ms: i64,
    pub minutes: f64,
    pub energy_wh: f64,
    pub max_current_a: f64,
    pub closures: i64,
    pub ended: String,
}

#[derive(Debug, Clone)]
pub struct HealthReport {
    pub device_id: String,
    pub as_of_ms: i64,
    pub status: Status,
    pub last_seen_ms: i64,
    /// firmware, part number, serial, and the registry's facts, as label/value.
    pub identity: Vec<(String, String)>,
    pub vitals: Vec<Check>,
    pub sessions_24h: SessionStats,
    pub sessions_7d: SessionStats,
    pub recent_sessions: Vec<SessionLine>,
    /// Findings whose evidence reaches into the last 24 h, most severe first.
    pub active: Vec<Finding>,
    /// Findings that ended earlier in the last 7 days.
    pub earlier: Vec<Finding>,
    pub notes: Vec<Note>,
    pub lifetime: Vec<(String, String)>,
    pub wifi: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("health report: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    #[error("no telemetry for device {device:?} in this store{known}")]
    UnknownDevice { device: String, known: String },
}

async fn scalar_i64(ctx: &SessionContext, sql: &str) -> Result<Option<i64>, EvalError> {
    let b = ctx.sql(sql).await?.collect().await?;
    Ok(b.first().filter(|b| b.num_rows() > 0).and_then(|b| {
        let c = arrow::compute::cast(b.column(0), &DataType::Int64).ok()?;
        let c = c.as_primitive::<Int64Type>();
        (!c.is_null(0)).then(|| c.value(0))
    }))
}

/// Text of column `name` in row 0 of `b` (empty when absent or null).
fn cell(b: &RecordBatch, name: &str) -> Option<String> {
    let c = b.column_by_name(name)?;
    if c.is_null(0) {
        return None;
    }
    let f = arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &Default::default()).ok()?;
    Some(f.value(0).to_string())
}

fn num(b: &RecordBatch, name: &str) -> Option<f64> {
    cell(b, name).and_then(|s| s.parse().ok())
}

async fn latest_row(ctx: &SessionContext, table: &str) -> Result<Option<RecordBatch>, EvalError> {
    let sql = format!("SELECT * FROM {table} ORDER BY ts DESC LIMIT 1");
    let b = ctx.sql(&sql).await?.collect().await?;
    Ok(b.into_iter().find(|b| b.num_rows() > 0))
}

/// Builds the report for `device`.
pub async fn report(
    snapshot: &Snapshot,
    devices: Option<RecordBatch>,
    pack: &Pack,
    device: &str,
    cfg: &QueryConfig,
) -> Result<HealthReport, HealthError> {
    let all = query::session(snapshot, cfg).map_err(EvalError::from)?;
    let now = scalar_i64(&all, "SELECT MAX(CAST(ts AS BIGINT)) FROM vitals").await?;
    let quoted = device.replace('\'', "''");
    let last_seen = scalar_i64(
        &all,
        &format!("SELECT MAX(CAST(ts AS BIGINT)) FROM vitals WHERE device_id = '{quoted}'"),
    )
    .await?;
    let (Some(now), Some(last_seen)) = (now, last_seen) else {
        let b = all
            .sql("SELECT DISTINCT device_id FROM vitals ORDER BY device_id LIMIT 11")
            .await
            .map_err(EvalError::from)?
            .collect()
            .await
            .map_err(EvalError::from)?;
        let mut ids = Vec::new();
        for b in &b {
            let c = arrow::compute::cast(b.column(0), &DataType::Utf8)
                .map_err(|e| EvalError::DataFusion(e.into()))?;
            ids.extend(c.as_string::<i32>().iter().flatten().map(String::from));
        }
        let known = if ids.is_empty() {
            String::new()
        } else {
            let more = if ids.len() > 10 { ", …" } else { "" };
            ids.truncate(10);
            format!("; devices here: {}{more}", ids.join(", "))
        };
        return Err(HealthError::UnknownDevice {
            device: device.into(),
            known,
        });
    };
    let scope = Scope {
        since_ms: Some(now - 7 * DAY_MS),
        until_ms: Some(now + 1),
        devices: Some(vec![device.to_string()]),
    };
    let lookback = pack.longest_window_ms();
    let prepared = engine::prepare(snapshot, devices, lookback, &scope, cfg)
        .await?
        .ok_or_else(|| HealthError::UnknownDevice {
            device: device.into(),
            known: String::new(),
        })?;
    let eval = engine::run_pack(&prepared, pack, &scope).await?;
    let ctx = &prepared.ctx;
    let mut findings = eval.findings;
    sort_for_people(&mut findings);
    let (active, earlier): (Vec<Finding>, Vec<Finding>) = findings
        .into_iter()
        .partition(|f| f.last_ms >= now - ACTIVE_WITHIN_MS);
    let status = status_of(now, last_seen, active.iter().map(|f| f.severity).max());

    let mut identity = Vec::new();
    if let Some(v) = latest_row(ctx, "version").await? {
        for (label, col) in [
            ("firmware", "firmware_version"),
            ("part number", "part_number"),
            ("serial", "serial_number"),
        ] {
            if let Some(x) = cell(&v, col) {
                identity.push((label.to_string(), x));
            }
        }
    }
    let reg = ctx
        .sql(&format!(
            "SELECT * FROM devices WHERE device_id = '{quoted}'"
        ))
        .await?
        .collect()
        .await?;
    let reg = reg.into_iter().find(|b| b.num_rows() > 0);
    let mut service_type = None;
    let mut max_current = None;
    if let Some(r) = &reg {
        service_type = cell(r, "service_type");
        max_current = num(r, "max_current_a");
        for col in [
            "site",
            "installer",
            "service_type",
            "breaker_a",
            "max_current_a",
            "commissioned_at",
        ] {
            if let Some(x) = cell(r, col) {
                identity.push((col.replace('_', " "), x));
            }
        }
    } else {
        identity.push((
            "registry".into(),
            "no entry (pass --devices FILE for site, breaker, max current)".into(),
        ));
    }

    let vitals = match latest_row(ctx, "vitals").await? {
        Some(v) => checks(&v, service_type.as_deref(), max_current),
        None => Vec::new(),
    };

    let sessions = ctx
        .sql(&format!(
            "SELECT first_ms, span_ms, energy_wh, max_current_a, closures, ended FROM sessions \
             WHERE last_ms >= {} ORDER BY first_ms",
            now - 7 * DAY_MS
        ))
        .await?
        .collect()
        .await?;
    let mut lines = Vec::new();
    for b in &sessions {
        let i = |n: usize| arrow::compute::cast(b.column(n), &DataType::Int64);
        let f = |n: usize| arrow::compute::cast(b.column(n), &DataType::Float64);
        let conv = |e: arrow::error::ArrowError| EvalError::DataFusion(e.into());
        let (start, span, energy, maxi, clos) = (
            i(0).map_err(conv)?,
            i(1).map_err(conv)?,
            f(2).map_err(conv)?,
            f(3).map_err(conv)?,
            i(4).map_err(conv)?,
        );
        let ended = arrow::compute::cast(b.column(5), &DataType::Utf8).map_err(conv)?;
        for r in 0..b.num_rows() {
            lines.push(SessionLine {
                start_ms: start.as_primitive::<Int64Type>().value(r),
                minutes: span.as_primitive::<Int64Type>().value(r) as f64 / 60_000.0,
                energy_wh: energy
                    .as_primitive::<arrow::datatypes::Float64Type>()
                    .value(r),
                max_current_a: maxi
                    .as_primitive::<arrow::datatypes::Float64Type>()
                    .value(r),
                closures: clos.as_primitive::<Int64Type>().value(r),
                ended: ended.as_string::<i32>().value(r).to_string(),
            });
        }
    }
    let stats = |since: i64| {
        let mut s = SessionStats::default();
        for l in lines.iter().filter(|l| l.start_ms >= since) {
            s.count += 1;
            s.energy_kwh += l.energy_wh / 1000.0;
            s.max_current_a = s.max_current_a.max(l.max_current_a);
            match s.ended.iter_mut().find(|(e, _)| *e == l.ended) {
                Some(e) => e.1 += 1,
                None => s.ended.push((l.ended.clone(), 1)),
            }
        }
        s
    };
    let sessions_24h = stats(now - DAY_MS);
    let sessions_7d = stats(i64::MIN);
    let recent_sessions = lines.iter().rev().take(5).cloned().collect();

    let mut lifetime = Vec::new();
    if let Some(l) = latest_row(ctx, "lifetime").await? {
        for col in [
            "energy_wh",
            "charge_starts",
            "connector_cycles",
            "contactor_cycles",
            "contactor_cycles_loaded",
            "thermal_foldbacks",
            "alert_count",
            "uptime_s",
        ] {
            if let Some(x) = cell(&l, col) {
                lifetime.push((col.to_string(), x));
            }
        }
    }
    let mut wifi = Vec::new();
    if let Some(w) = latest_row(ctx, "wifi").await? {
        for col in [
            "wifi_rssi",
            "wifi_signal_strength",
            "wifi_snr",
            "wifi_connected",
            "internet",
        ] {
            if let Some(x) = cell(&w, col) {
                wifi.push((col.to_string(), x));
            }
        }
    }
    Ok(HealthReport {
        device_id: device.to_string(),
        as_of_ms: now,
        status,
        last_seen_ms: last_seen,
        identity,
        vitals,
        sessions_24h,
        sessions_7d,
        recent_sessions,
        active,
        earlier,
        notes: eval.notes,
        lifetime,
        wifi,
    })
}

/// The latest vitals against their normal ranges (DOMAIN.md §2.2, §4, §6).
fn checks(v: &RecordBatch, service_type: Option<&str>, max_current: Option<f64>) -> Vec<Check> {
    let mut out = Vec::new();
    let mut push = |name: &'static str, value: Option<f64>, unit: &str, lo: f64, hi: f64| {
        if let Some(x) = value {
            out.push(Check {
                name,
                value: format!("{x:.1} {unit}"),
                normal: format!("{lo}–{hi} {unit}"),
                ok: (lo..=hi).contains(&x),
            });
        }
    };
    let hz = num(v, "grid_hz");
    let fifty = hz.is_some_and(|h| h < 55.0);
    let grid = num(v, "grid_v");
    let (vlo, vhi) = match (fifty, service_type, grid) {
        (true, _, _) => (207.0, 253.0),
        (false, Some("three_phase"), _) => (197.0, 218.0),
        (false, _, Some(g)) if g < 225.0 => (197.0, 218.0),
        _ => (228.0, 252.0),
    };
    push("grid_v", grid, "V", vlo, vhi);
    let (hlo, hhi) = if fifty { (49.5, 50.5) } else { (59.5, 60.5) };
    push("grid_hz", hz, "Hz", hlo, hhi);
    push(
        "vehicle_current_a",
        num(v, "vehicle_current_a"),
        "A",
        0.0,
        max_current.unwrap_or(48.0),
    );
    push("handle_temp_c", num(v, "handle_temp_c"), "°C", -30.0, 70.0);
    push("pcba_temp_c", num(v, "pcba_temp_c"), "°C", -30.0, 85.0);
    push("mcu_temp_c", num(v, "mcu_temp_c"), "°C", -30.0, 95.0);
    let connected = cell(v, "vehicle_connected").as_deref() == Some("true");
    if connected {
        push("prox_v", num(v, "prox_v"), "V", 1.3, 3.0);
    } else {
        push("prox_v", num(v, "prox_v"), "V", 0.0, 0.6);
    }
    if let Some(c) = num(v, "config_status") {
        out.push(Check {
            name: "config_status",
            value: format!("{c}"),
            normal: "5 (commissioned)".into(),
            ok: c == 5.0,
        });
    }
    if let Some(s) = num(v, "evse_state") {
        out.push(Check {
            name: "evse_state",
            value: format!("{s} ({})", state_name(s as i64)),
            normal: "1 idle, 9 waiting for car, 11 charging".into(),
            ok: true,
        });
    }
    out
}

/// Meaning of an `evse_state` code (DOMAIN.md §2.7, the recommended interpretation).
pub fn state_name(s: i64) -> &'static str {
    match s {
        0 => "booting",
        1 => "idle",
        2 | 3 => "vehicle detected",
        4 => "connected, ready",
        6 => "negotiating",
        7 => "transient (plug-in / unlatch)",
        8 => "charge finished",
        9 => "connected, not charging",
        10 => "charging at reduced current",
        11 => "contactor closed",
        13 => "just unplugged",
        _ => "unknown",
    }
}
