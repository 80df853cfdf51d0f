//! `/metrics` in the Prometheus text format (0.0.4).
//!
//! Names and labels are the constants below, designed once: `wallscope_` prefix, units in
//! the name (`_seconds`, `_bytes`), `_total` for counters, and only low-cardinality labels
//! (table, error class, fault code, severity, alert state, sink, route template, status
//! code) — never a device id. Ingest counters come from the `ingest-status.json` a running
//! (or the last) `run` leaves every 2 s; store figures from the snapshot, so
//! `wallscope_store_rows{table}` equals `SELECT COUNT(*)` of that table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::fleet::Cache;
use super::{ApiError, App, Caller};
use crate::ingest::Counter;
use crate::model::Table;

pub const BUILD_INFO: &str = "wallscope_build_info";
pub const INGEST_RECEIVED: &str = "wallscope_ingest_received_messages_total";
pub const INGEST_RECEIVED_BYTES: &str = "wallscope_ingest_received_bytes_total";
pub const INGEST_ROWS_DURABLE: &str = "wallscope_ingest_rows_durable_total";
pub const INGEST_DEAD_LETTERS: &str = "wallscope_ingest_dead_letters_total";
pub const INGEST_ACKED: &str = "wallscope_ingest_acked_messages_total";
pub const INGEST_ACKS_PENDING: &str = "wallscope_ingest_acks_pending";
pub const INGEST_PENDING_BYTES: &str = "wallscope_ingest_pending_bytes";
pub const INGEST_RECONNECTS: &str = "wallscope_ingest_reconnects_total";
pub const INGEST_COMMITS: &str = "wallscope_ingest_commits_total";
pub const INGEST_ACK_LATENCY_P99: &str = "wallscope_ingest_ack_latency_p99_seconds";
pub const INGEST_STATUS_AGE: &str = "wallscope_ingest_status_age_seconds";
pub const STORE_ROWS: &str = "wallscope_store_rows";
pub const STORE_PARQUET_FILES: &str = "wallscope_store_parquet_files";
pub const STORE_PARQUET_BYTES: &str = "wallscope_store_parquet_bytes";
pub const STORE_WAL_ROWS: &str = "wallscope_store_wal_rows";
pub const STORE_WAL_BYTES: &str = "wallscope_store_wal_bytes";
pub const STORE_DEAD_LETTERS: &str = "wallscope_store_dead_letters";
pub const RULE_EVALUATIONS: &str = "wallscope_rule_evaluations_total";
pub const RULE_EVAL_SECONDS: &str = "wallscope_rule_evaluation_seconds_total";
pub const RULE_ERRORS: &str = "wallscope_rule_errors_total";
pub const RULE_LAG: &str = "wallscope_rule_lag_seconds";
pub const RULE_WATERMARK: &str = "wallscope_rule_watermark_timestamp_seconds";
pub const FINDINGS: &str = "wallscope_findings";
pub const ALERTS: &str = "wallscope_alerts";
pub const SINK_BACKLOG: &str = "wallscope_sink_backlog_notifications";
pub const HTTP_REQUESTS: &str = "wallscope_http_requests_total";
pub const HTTP_DURATION: &str = "wallscope_http_request_duration_seconds";
pub const SQL_QUERIES: &str = "wallscope_sql_queries_total";
pub const SQL_REJECTED: &str = "wallscope_sql_rejected_total";
pub const QUERIES_BUSY: &str = "wallscope_queries_refused_busy_total";
pub const QUERIES_TIMED_OUT: &str = "wallscope_queries_timed_out_total";
pub const AUTH_FAILURES: &str = "wallscope_auth_failures_total";
pub const UPTIME: &str = "wallscope_api_uptime_seconds";

/// Request duration buckets, seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct RouteStats {
    by_code: BTreeMap<u16, u64>,
    buckets: [u64; BUCKETS.len()],
    sum_s: f64,
    count: u64,
}

/// The API's own counters.
#[derive(Default)]
pub struct ApiMetrics {
    pub sql_ok: Counter,
    pub sql_failed: Counter,
    pub sql_rejected: Counter,
    pub queries_refused_busy: Counter,
    pub queries_timed_out: Counter,
    pub auth_failures: Counter,
    routes: Mutex<BTreeMap<String, RouteStats>>,
}

impl ApiMetrics {
    /// Counts one answered request under its route template (unmatched: `other`).
    pub fn observe(&self, route: Option<&str>, status: StatusCode, took: Duration) {
        let mut m = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let r = m.entry(route.unwrap_or("other").to_string()).or_default();
        *r.by_code.entry(status.as_u16()).or_default() += 1;
        let s = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                r.buckets[i] += 1;
            }
        }
        r.sum_s += s;
        r.count += 1;
    }
}

/// Text-format writer: HELP and TYPE once per family, then samples.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let esc = val
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{esc}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", fmt_value(v));
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Stored dead letters per error class (one small GROUP BY, cached 10 s).
async fn dead_letters(
    app: &Arc<App>,
    caller: &Caller,
) -> Result<Arc<Vec<(String, u64)>>, ApiError> {
    let a = app.clone();
    Cache::get(app, |a| &a.cache.dead, caller, "", Duration::from_secs(10), move || async move {
        let snap = a.snapshot()?;
        let ctx = crate::query::session(&snap, &a.query_config())?;
        let b = crate::query::run_readonly(
            &ctx,
            "SELECT error_class, COUNT(*) FROM dead_letters GROUP BY error_class ORDER BY error_class",
        )
        .await?;
        let mut out = Vec::new();
        for b in &b {
            let classes = super::columns::strings(b, 0)?;
            let counts = super::columns::i64s(b, 1)?;
            for (k, v) in classes.into_iter().zip(counts) {
                out.push((k.unwrap_or_default(), v.unwrap_or(0) as u64));
            }
        }
        Ok(out)
    })
    .await
}

/// Notifications not yet in each sink's delivered log.
fn sink_backlogs(
    dir: &std::path::Path,
    rows: &[crate::alerts::table::AlertRow],
) -> Vec<(String, u64)> {
    let due: std::collections::HashSet<String> = crate::alerts::sink::notifications(rows)
        .into_iter()
        .map(|n| n.id)
        .collect();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir.join(crate::alerts::sink::SINKS_DIR)) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log")
            && let Some(name) = p.file_stem().map(|s| s.to_string_lossy().into_owned())
            && let Ok(done) = crate::alerts::sink::read_log(dir, &name)
        {
            out.push((
                name,
                due.iter().filter(|id| !done.contains(*id)).count() as u64,
            ));
        }
    }
    out.sort();
    out
}

pub(crate) async fn handler(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let snap = app.snapshot_blocking().await?;
    let fleet = super::fleet::fleet(&app, &caller).await?;
    let dead = dead_letters(&app, &caller).await?;
    let now = app.clock.now_ms();
    let mut o = Out(String::new());

    o.family(BUILD_INFO, "gauge", "Always 1; the version as a label.");
    o.sample(BUILD_INFO, &[("version", crate::version())], 1.0);
    o.one(
        UPTIME,
        "gauge",
        "Seconds since this API server started.",
        (now - app.started_ms) as f64 / 1000.0,
    );

    if let Some(s) = crate::ingest::read_status(&snap.dir) {
        o.one(
            INGEST_STATUS_AGE,
            "gauge",
            "Age of the ingest counters below (written every 2 s while run runs).",
            (now - s.at_ms).max(0) as f64 / 1000.0,
        );
        o.one(
            INGEST_RECEIVED,
            "counter",
            "MQTT messages received by the live ingest.",
            s.received as f64,
        );
        o.one(
            INGEST_RECEIVED_BYTES,
            "counter",
            "Payload bytes received by the live ingest.",
            s.received_bytes as f64,
        );
        o.one(
            INGEST_ROWS_DURABLE,
            "counter",
            "Rows made durable (fsynced) by the live ingest.",
            s.rows_durable as f64,
        );
        o.one(
            INGEST_DEAD_LETTERS,
            "counter",
            "Messages the live ingest stored as dead letters.",
            s.dead_letters as f64,
        );
        o.one(
            INGEST_ACKED,
            "counter",
            "PUBACKs written after the rows were durable.",
            s.acked as f64,
        );
        o.one(
            INGEST_ACKS_PENDING,
            "gauge",
            "Messages delivered but not yet durable and acked.",
            s.acks_pending as f64,
        );
        o.one(
            INGEST_PENDING_BYTES,
            "gauge",
            "Bytes of those messages.",
            s.pending_bytes as f64,
        );
        o.one(
            INGEST_RECONNECTS,
            "counter",
            "Broker reconnections.",
            s.reconnects as f64,
        );
        o.one(
            INGEST_COMMITS,
            "counter",
            "Group commits (fsyncs) of the store.",
            s.commits as f64,
        );
        if let Some(p99) = s.ack_latency_p99_ms {
            o.one(
                INGEST_ACK_LATENCY_P99,
                "gauge",
                "99th percentile of receive-to-ack latency.",
                p99 as f64 / 1000.0,
            );
        }
        o.one(
            RULE_EVALUATIONS,
            "counter",
            "Live rule evaluations.",
            s.rule_evaluations as f64,
        );
        o.one(
            RULE_EVAL_SECONDS,
            "counter",
            "Wall time spent in live rule evaluations.",
            s.rule_eval_ms as f64 / 1000.0,
        );
        o.one(
            RULE_ERRORS,
            "counter",
            "Live rule evaluations that failed.",
            s.rule_errors as f64,
        );
        o.one(
            RULE_LAG,
            "gauge",
            "Durable batch to finished evaluation, the last one.",
            s.rule_lag_ms_last as f64 / 1000.0,
        );
        o.one(
            RULE_WATERMARK,
            "gauge",
            "Event time up to which the live findings are complete (newest data the last evaluation covered), Unix seconds.",
            s.rule_watermark_ms as f64 / 1000.0,
        );
    }

    o.family(
        STORE_ROWS,
        "gauge",
        "Rows in the store (Parquet plus WAL tail), per table.",
    );
    for t in Table::ALL {
        o.sample(STORE_ROWS, &[("table", t.name())], snap.rows(t) as f64);
    }
    o.family(
        STORE_PARQUET_FILES,
        "gauge",
        "Parquet files in the manifest, per table.",
    );
    for t in Table::ALL {
        o.sample(
            STORE_PARQUET_FILES,
            &[("table", t.name())],
            snap.files_of(t).count() as f64,
        );
    }
    o.family(
        STORE_PARQUET_BYTES,
        "gauge",
        "Bytes of those Parquet files, per table.",
    );
    for t in Table::ALL {
        o.sample(
            STORE_PARQUET_BYTES,
            &[("table", t.name())],
            snap.files_of(t).map(|f| f.bytes).sum::<u64>() as f64,
        );
    }
    let tail_rows: usize = snap.tail.iter().map(|e| e.batch.num_rows()).sum();
    o.one(
        STORE_WAL_ROWS,
        "gauge",
        "Rows in the WAL not yet compacted into Parquet.",
        tail_rows as f64,
    );
    let wal_bytes: u64 = std::fs::read_dir(snap.dir.join("wal"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    o.one(
        STORE_WAL_BYTES,
        "gauge",
        "Bytes of WAL segments on disk.",
        wal_bytes as f64,
    );
    o.family(
        STORE_DEAD_LETTERS,
        "gauge",
        "Dead letters in the store, per error class.",
    );
    for (class, n) in dead.iter() {
        o.sample(STORE_DEAD_LETTERS, &[("class", class)], *n as f64);
    }

    let mut by: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for f in &fleet.findings {
        *by.entry((f.fault.clone(), f.severity.as_str()))
            .or_default() += 1;
    }
    o.family(
        FINDINGS,
        "gauge",
        "Stored finding episodes, per fault and severity.",
    );
    for ((fault, sev), n) in &by {
        o.sample(FINDINGS, &[("fault", fault), ("severity", sev)], *n as f64);
    }
    let states = crate::alerts::latest_states(&fleet.alerts);
    o.family(ALERTS, "gauge", "Alerts by current state.");
    for s in crate::alerts::lifecycle::State::ALL {
        let n = states.values().filter(|x| **x == s).count();
        o.sample(ALERTS, &[("state", s.as_str())], n as f64);
    }
    let sinks = sink_backlogs(&snap.dir, &fleet.alerts);
    o.family(
        SINK_BACKLOG,
        "gauge",
        "Notifications not yet delivered, per sink.",
    );
    for (name, n) in &sinks {
        o.sample(SINK_BACKLOG, &[("sink", name)], *n as f64);
    }

    let m = &app.metrics;
    o.family(
        SQL_QUERIES,
        "counter",
        "POST /api/v1/sql queries by outcome.",
    );
    o.sample(SQL_QUERIES, &[("outcome", "ok")], m.sql_ok.get() as f64);
    o.sample(
        SQL_QUERIES,
        &[("outcome", "failed")],
        m.sql_failed.get() as f64,
    );
    o.sample(
        SQL_QUERIES,
        &[("outcome", "refused")],
        m.sql_rejected.get() as f64,
    );
    o.one(
        SQL_REJECTED,
        "counter",
        "SQL statements refused before execution (not read-only).",
        m.sql_rejected.get() as f64,
    );
    o.one(
        QUERIES_BUSY,
        "counter",
        "Requests refused with 429 because the query slots were taken.",
        m.queries_refused_busy.get() as f64,
    );
    o.one(
        QUERIES_TIMED_OUT,
        "counter",
        "Requests whose query work hit the timeout.",
        m.queries_timed_out.get() as f64,
    );
    o.one(
        AUTH_FAILURES,
        "counter",
        "Requests without a valid token.",
        m.auth_failures.get() as f64,
    );
    {
        let routes = m.routes.lock().unwrap_or_else(|p| p.into_inner());
        o.family(
            HTTP_REQUESTS,
            "counter",
            "Answered requests per route template and status code.",
        );
        for (route, r) in routes.iter() {
            for (code, n) in &r.by_code {
                o.sample(
                    HTTP_REQUESTS,
                    &[("route", route), ("code", &code.to_string())],
                    *n as f64,
                );
            }
        }
        o.family(
            HTTP_DURATION,
            "histogram",
            "Request duration per route template.",
        );
        let bucket = format!("{HTTP_DURATION}_bucket");
        for (route, r) in routes.iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                o.sample(
                    &bucket,
                    &[("route", route), ("le", &fmt_value(*b))],
                    r.buckets[i] as f64,
                );
            }
            o.sample(&bucket, &[("route", route), ("le", "+Inf")], r.count as f64);
            o.sample(
                &format!("{HTTP_DURATION}_sum"),
                &[("route", route)],
                r.sum_s,
            );
            o.sample(
                &format!("{HTTP_DURATION}_count"),
                &[("route", route)],
                r.count as f64,
            );
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        o.0,
    )
        .into_response())
}
