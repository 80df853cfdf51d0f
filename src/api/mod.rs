//! The specialist console: the HTTP API under `/api/v1`, the dashboard, `/metrics`,
//! `/healthz` and `/readyz` (`wallscope serve`, `run --http`, `demo --serve`).
//!
//! Contract:
//! - **Reads only what is durable.** Every answer comes from a [`Snapshot`] of the data
//!   directory (manifest files + WAL tail), loaded at most every `snapshot_max_age_ms`, the
//!   same way `wallscope sql` reads while `run` writes; the server never takes the store's
//!   lock, so it runs beside `run` or inside it.
//! - **Every route but `/healthz` needs a bearer token** ([`auth`]); the dashboard's static
//!   shell (`/`, `/assets/…`) holds no data and is public, its data comes from the API with
//!   the token the page was given. Operators (not read tokens) ack and silence. More than
//!   [`Limits::max_auth_failures_per_min`] failed authentications from one address in a
//!   minute get 429. Request bodies are capped ([`Limits::max_body_bytes`], 413 beyond).
//! - **Queries run on their own runtime** (a small thread pool apart from ingest and from
//!   the HTTP workers), each with a timeout, a memory pool, a row cap and a concurrency cap
//!   (429 beyond it, at once). A query whose client goes away is cancelled: dropping its
//!   handle aborts the task and its DataFusion stream.
//! - **Errors** are JSON `{"error": "...", "parameter": "..."}` with 400 (bad parameter,
//!   named), 401, 403, 404 (unknown device or alert), 413, 422 (a query over its memory),
//!   429, 504 (timeout), 500.
//! - Slow answers that many people ask for (fleet list, a device's health report) are cached
//!   per snapshot and served stale while one refresh runs, so a page under load never waits
//!   for the rule pack.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::clock::Clock;
use crate::rules::pack::Pack;
use crate::store::Snapshot;

pub mod assets;
pub mod auth;
mod columns;
mod device;
mod fleet;
mod flight;
pub mod metrics;
pub mod openapi;
mod sql;
mod tls;

pub use auth::{Caller, Role, Tokens};

/// Limits of the API's query work.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Rows `POST /sql` returns at most (the answer says when it was cut).
    pub sql_row_limit: usize,
    /// Memory pool of one query (sorts, joins, aggregates).
    pub query_memory_limit_bytes: usize,
    /// Disk one query may spill to.
    pub query_spill_limit_bytes: u64,
    /// Wall-clock limit of one request's query work.
    pub query_timeout_ms: u64,
    /// Queries running at once, in all and per token; more get 429.
    pub max_concurrent_queries: usize,
    pub max_concurrent_queries_per_token: usize,
    /// Threads of the query runtime.
    pub query_threads: usize,
    pub max_body_bytes: usize,
    /// How old a snapshot of the data directory may be before a request reloads it.
    pub snapshot_max_age_ms: u64,
    /// Failed authentications one address may make per minute before it gets 429.
    pub max_auth_failures_per_min: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sql_row_limit: 100_000,
            query_memory_limit_bytes: 1 << 30,
            query_spill_limit_bytes: 2 << 30,
            query_timeout_ms: 30_000,
            max_concurrent_queries: 16,
            max_concurrent_queries_per_token: 8,
            query_threads: 2,
            max_body_bytes: 1 << 20,
            snapshot_max_age_ms: 1_000,
            max_auth_failures_per_min: auth::MAX_AUTH_FAILURES_PER_MIN,
        }
    }
}

/// Certificate chain and key (PEM) for HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything a server needs.
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Arrow Flight SQL on its own port (none: off).
    pub flight_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Tokens accepted besides those of `api-tokens.json` (which is re-read when it
    /// changes, so `token create`/`revoke` apply to a running server within a second).
    pub extra_tokens: Tokens,
    pub tls: Option<TlsFiles>,
    pub limits: Limits,
    /// The rule pack health reports and device findings are judged with.
    pub pack: Pack,
    /// A device registry to use instead of `devices.csv` in the data directory.
    pub registry: Option<PathBuf>,
    /// Evaluate the rules once at start when the stored findings are older than the data
    /// and no `run` is writing them (a store filled by `import`), so the fleet's statuses
    /// are right; the result stays in memory.
    pub evaluate_at_start: bool,
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTPS: {0}")]
    Tls(String),
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
    #[error("query runtime: {0}")]
    Runtime(std::io::Error),
    #[error("API tokens: {0}")]
    Tokens(String),
}

/// An error as the API answers it.
#[derive(Debug, Clone)]
pub enum ApiError {
    BadParam {
        name: String,
        message: String,
    },
    Unauthorized,
    Forbidden(String),
    NotFound(String),
    TooMany(String),
    /// A query that needs more memory than its pool.
    Resources(String),
    Timeout(u64),
    Internal(String),
}

impl ApiError {
    pub fn param(name: &str, message: impl Into<String>) -> ApiError {
        ApiError::BadParam {
            name: name.into(),
            message: message.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadParam { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Resources(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::BadParam { name, message } => write!(f, "{name}: {message}"),
            ApiError::Unauthorized => f.write_str(
                "a bearer token is required (Authorization: Bearer <token>; `wallscope token create` makes one)",
            ),
            ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::TooMany(m)
            | ApiError::Resources(m)
            | ApiError::Internal(m) => f.write_str(m),
            ApiError::Timeout(ms) => write!(f, "the query ran longer than its {ms} ms limit and was cancelled"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({ "error": self.to_string() });
        if let ApiError::BadParam { name, .. } = &self {
            body["parameter"] = json!(name);
        }
        let mut r = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<crate::query::QueryError> for ApiError {
    fn from(e: crate::query::QueryError) -> Self {
        use crate::query::QueryError;
        match e {
            QueryError::Refused(m) => ApiError::param("sql", format!("refused: {m}")),
            QueryError::Sql(e) => datafusion_error(e),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Sorts DataFusion's errors into the user's (400, 422) and ours (500).
pub(crate) fn datafusion_error(e: datafusion::error::DataFusionError) -> ApiError {
    use datafusion::error::DataFusionError as D;
    match e.find_root() {
        D::ResourcesExhausted(m) => ApiError::Resources(format!(
            "the query needs more memory than its limit ({m}); narrow it with WHERE or LIMIT"
        )),
        D::SQL(..)
        | D::Plan(_)
        | D::SchemaError(..)
        | D::NotImplemented(_)
        | D::Configuration(_)
        // Division by zero, a bad cast of a value: the query's fault, found while running.
        | D::ArrowError(..)
        | D::Execution(_) => ApiError::param("sql", e.to_string()),
        _ => ApiError::Internal(e.to_string()),
    }
}

/// The routes, with who may call them: the router is built from this list, the OpenAPI
/// document describes it, and the tests walk it (a new route is covered automatically).
pub struct Route {
    pub method: Method,
    /// axum's form (`/api/v1/devices/:id`).
    pub path: &'static str,
    /// `None`: public.
    pub role: Option<Role>,
    pub summary: &'static str,
    /// (name, required, description) of query parameters.
    pub params: &'static [(&'static str, bool, &'static str)],
}

const RANGE: [(&str, bool, &str); 2] = [
    (
        "from",
        false,
        "start, RFC 3339 or epoch ms (default: to − 24 h)",
    ),
    (
        "to",
        false,
        "end, RFC 3339 or epoch ms (default: the device's newest data)",
    ),
];

macro_rules! route {
    ($m:ident, $p:expr, $role:expr, $s:expr) => {
        route!($m, $p, $role, $s, &[])
    };
    ($m:ident, $p:expr, $role:expr, $s:expr, $params:expr) => {
        Route {
            method: Method::$m,
            path: $p,
            role: $role,
            summary: $s,
            params: $params,
        }
    };
}

pub fn routes() -> Vec<Route> {
    const R: Option<Role> = Some(Role::Read);
    const O: Option<Role> = Some(Role::Operator);
    vec![
        route!(
            GET,
            "/healthz",
            None,
            "Liveness: 200 while the process serves"
        ),
        route!(
            GET,
            "/readyz",
            R,
            "Readiness: 200 when the data directory can be read"
        ),
        route!(GET, "/metrics", R, "Prometheus metrics (text format)"),
        route!(GET, "/api/v1/openapi.json", R, "This document"),
        route!(
            GET,
            "/api/v1/fleet",
            R,
            "Fleet summary: status counts, active alerts, fault trend per day, cohort alerts",
            &[("days", false, "days of fault trend (default 30)")]
        ),
        route!(
            GET,
            "/api/v1/devices",
            R,
            "Devices with status, last seen, firmware, site and active alerts",
            &[
                (
                    "status",
                    false,
                    "ok, degraded, faulted or offline (comma-separated)"
                ),
                ("site", false, "exact site"),
                ("firmware", false, "exact firmware version"),
                ("q", false, "substring of the device id"),
                (
                    "sort",
                    false,
                    "device_id, status, last_seen, alerts, site or firmware"
                ),
                ("order", false, "asc or desc"),
                ("limit", false, "at most this many (default 1000)"),
            ]
        ),
        route!(
            GET,
            "/api/v1/devices/:id",
            R,
            "The device's health report (what `wallscope health` shows)"
        ),
        route!(
            GET,
            "/api/v1/devices/:id/vitals",
            R,
            "Vitals over a range, downsampled to min/max per bucket",
            &[
                RANGE[0],
                RANGE[1],
                ("points", false, "buckets at most (default 1000, 10–20000)"),
                (
                    "fields",
                    false,
                    "comma-separated vitals fields (default: the plotted ones)"
                ),
            ]
        ),
        route!(
            GET,
            "/api/v1/devices/:id/timeline",
            R,
            "EVSE state and contactor segments over a range",
            &[RANGE[0], RANGE[1]]
        ),
        route!(
            GET,
            "/api/v1/devices/:id/sessions",
            R,
            "Charging sessions: the last 24 h and 7 days, recent sessions"
        ),
        route!(
            GET,
            "/api/v1/devices/:id/findings",
            R,
            "Findings over a range with evidence and ordered steps (the rule pack, evaluated now)",
            &[RANGE[0], RANGE[1]]
        ),
        route!(GET, "/api/v1/devices/:id/alerts", R, "The device's alerts"),
        route!(
            GET,
            "/api/v1/devices/:id/export",
            R,
            "The range as a capture file (JSON Lines) to replay or attach to a case",
            &[RANGE[0], RANGE[1]]
        ),
        route!(
            GET,
            "/api/v1/findings",
            R,
            "Stored findings across the fleet, newest first",
            &[
                ("device", false, "device id"),
                ("fault", false, "fault code (F01…)"),
                (
                    "since",
                    false,
                    "only episodes still going at or after this time"
                ),
                ("limit", false, "at most this many (default 500)"),
            ]
        ),
        route!(
            GET,
            "/api/v1/alerts",
            R,
            "Alerts with their current state, acks and silences",
            &[
                (
                    "state",
                    false,
                    "pending, firing, resolved, cancelled or active (pending+firing; default: all)"
                ),
                ("kind", false, "fault or trend"),
                ("device", false, "device id"),
                ("limit", false, "at most this many (default 500)"),
            ]
        ),
        route!(
            GET,
            "/api/v1/alerts/:id",
            R,
            "One alert: every transition, acks"
        ),
        route!(
            POST,
            "/api/v1/alerts/:id/ack",
            O,
            "Acknowledge an alert (operator); body {\"note\": \"...\"}"
        ),
        route!(GET, "/api/v1/silences", R, "Silences, active first"),
        route!(
            POST,
            "/api/v1/silences",
            O,
            "Silence a device and/or rule (operator); body {\"device\", \"rule\", \"for\": \"2h\", \"reason\"}"
        ),
        route!(
            POST,
            "/api/v1/sql",
            R,
            "Read-only SQL; body {\"sql\": \"...\", \"format\": \"json\"|\"arrow\", \"limit\": n}"
        ),
    ]
}

/// What every handler shares.
pub struct App {
    pub(crate) data_dir: PathBuf,
    extra_tokens: Tokens,
    file_tokens: Mutex<FileTokens>,
    pub(crate) limits: Limits,
    pub(crate) pack: Arc<Pack>,
    pub(crate) registry: Option<PathBuf>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) brake: auth::FailureBrake,
    pub(crate) metrics: metrics::ApiMetrics,
    snapshot: Mutex<Option<(Instant, Arc<Snapshot>)>>,
    pool: tokio::runtime::Handle,
    global: Arc<Semaphore>,
    per_token: Mutex<HashMap<String, Arc<Semaphore>>>,
    pub(crate) cache: fleet::Caches,
    pub(crate) started_ms: i64,
    /// Findings of the evaluation at start (see [`ServeConfig::evaluate_at_start`]).
    pub(crate) evaluated: Mutex<Option<Arc<Vec<crate::rules::Finding>>>>,
    /// Whether that evaluation is still running (the fleet page says so and polls).
    pub(crate) evaluating: std::sync::atomic::AtomicBool,
}

/// Scalar functions left out of sessions for user SQL (see [`App::user_session`]).
const UNBOUNDED_FUNCTIONS: &[&str] = &[
    "range",
    "generate_series",
    "array_repeat",
    "repeat",
    "lpad",
    "rpad",
];

/// The token file as last read, and when it was last checked for changes.
struct FileTokens {
    checked: Instant,
    modified: Option<std::time::SystemTime>,
    tokens: Tokens,
}

/// How often the token file's modification time is looked at.
const TOKEN_RELOAD: Duration = Duration::from_secs(1);

/// Aborts a spawned task when the request that waits for it goes away.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl App {
    /// The caller a presented token belongs to.
    pub(crate) fn check_token(&self, token: &str) -> Option<Caller> {
        if let Some(c) = self.extra_tokens.check(token) {
            return Some(c);
        }
        let mut f = self.file_tokens.lock().unwrap_or_else(|p| p.into_inner());
        if f.checked.elapsed() >= TOKEN_RELOAD {
            f.checked = Instant::now();
            let modified = std::fs::metadata(self.data_dir.join(auth::TOKENS_FILE))
                .and_then(|m| m.modified())
                .ok();
            if modified != f.modified {
                match Tokens::load(&self.data_dir) {
                    Ok(t) => {
                        f.tokens = t;
                        f.modified = modified;
                    }
                    // Keep the tokens we had: a half-edited file must not lock everyone out.
                    Err(e) => tracing::warn!("API tokens not reloaded: {e}"),
                }
            }
        }
        f.tokens.check(token)
    }

    fn token_count(&self) -> usize {
        let f = self.file_tokens.lock().unwrap_or_else(|p| p.into_inner());
        f.tokens.len() + self.extra_tokens.len()
    }

    /// A snapshot no older than `snapshot_max_age_ms`.
    pub(crate) fn snapshot(&self) -> Result<Arc<Snapshot>, ApiError> {
        let max_age = Duration::from_millis(self.limits.snapshot_max_age_ms);
        let mut s = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, snap)) = s.as_ref()
            && at.elapsed() < max_age
        {
            return Ok(snap.clone());
        }
        if !self.data_dir.exists() {
            return Err(ApiError::Internal(format!(
                "data directory {} does not exist yet",
                self.data_dir.display()
            )));
        }
        let snap = Arc::new(
            Snapshot::load(&self.data_dir).map_err(|e| ApiError::Internal(e.to_string()))?,
        );
        *s = Some((Instant::now(), snap.clone()));
        Ok(snap)
    }

    /// [`App::snapshot`] off the async workers (loading one reads the WAL tail).
    pub(crate) async fn snapshot_blocking(self: &Arc<Self>) -> Result<Arc<Snapshot>, ApiError> {
        let a = self.clone();
        tokio::task::spawn_blocking(move || a.snapshot())
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
    }

    /// The registry batch, if one is configured or present in the data directory.
    pub(crate) fn registry(&self) -> Result<Option<arrow::array::RecordBatch>, ApiError> {
        let path = self
            .registry
            .clone()
            .unwrap_or_else(|| self.data_dir.join(crate::model::DEVICES_FILE));
        if !path.is_file() {
            return Ok(None);
        }
        crate::registry::load(&path)
            .map(Some)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    pub(crate) fn query_config(&self) -> crate::query::QueryConfig {
        crate::query::QueryConfig {
            memory_limit_bytes: self.limits.query_memory_limit_bytes,
            target_partitions: self.limits.query_threads.max(1),
            spill_limit_bytes: self.limits.query_spill_limit_bytes,
        }
    }

    /// A session for SQL a caller wrote: the store's tables, the API's limits, and without
    /// the scalar functions that build one huge value from a small input (`range(0, 1e9)`,
    /// `repeat('x', 1e9)`): their results are not memory the pool sees, so they could take
    /// the process down before any limit applies.
    pub(crate) fn user_session(
        &self,
        snap: &Snapshot,
    ) -> Result<datafusion::prelude::SessionContext, ApiError> {
        let ctx = crate::query::session(snap, &self.query_config())?;
        for f in UNBOUNDED_FUNCTIONS {
            ctx.deregister_udf(f);
        }
        Ok(ctx)
    }

    /// Runs `work` on the query runtime under the request's concurrency slots and timeout.
    pub(crate) async fn run<T, F>(&self, caller: &Caller, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let global = self.global.clone().try_acquire_owned().map_err(|_| {
            self.metrics.queries_refused_busy.inc();
            ApiError::TooMany(format!(
                "{} queries are running; try again shortly",
                self.limits.max_concurrent_queries
            ))
        })?;
        let mine = {
            let mut m = self.per_token.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(caller.name.clone())
                .or_insert_with(|| {
                    Arc::new(Semaphore::new(self.limits.max_concurrent_queries_per_token))
                })
                .clone()
        };
        let mine = mine.try_acquire_owned().map_err(|_| {
            self.metrics.queries_refused_busy.inc();
            ApiError::TooMany(format!(
                "token {:?} has {} queries running; wait for one to finish",
                caller.name, self.limits.max_concurrent_queries_per_token
            ))
        })?;
        let task = AbortOnDrop(self.pool.spawn(async move {
            let r = work.await;
            drop((global, mine));
            r
        }));
        let limit = self.limits.query_timeout_ms;
        match tokio::time::timeout(Duration::from_millis(limit), &mut { task }.0).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(ApiError::Internal(format!("query task: {e}"))),
            Err(_) => {
                self.metrics.queries_timed_out.inc();
                Err(ApiError::Timeout(limit))
            }
        }
    }
}

/// Parses a time parameter: RFC 3339 or epoch milliseconds.
pub(crate) fn time_param(name: &str, v: Option<&String>) -> Result<Option<i64>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(ms));
    }
    crate::capture::parse_rfc3339_ms(v)
        .map(Some)
        .ok_or_else(|| {
            ApiError::param(
                name,
                format!("{v:?} is neither RFC 3339 nor epoch milliseconds"),
            )
        })
}

pub(crate) fn usize_param(
    name: &str,
    v: Option<&String>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ApiError> {
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    let n: usize = v
        .parse()
        .map_err(|_| ApiError::param(name, format!("{v:?} is not a whole number")))?;
    if !range.contains(&n) {
        return Err(ApiError::param(
            name,
            format!("{n} is outside {}–{}", range.start(), range.end()),
        ));
    }
    Ok(n)
}

/// Rejects query parameters a route does not know (a typo must not be ignored silently).
pub(crate) fn known_params(q: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    for k in q.keys() {
        if !known.contains(&k.as_str()) {
            return Err(ApiError::param(
                k,
                format!(
                    "unknown parameter; this route takes {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
    }
    Ok(())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn is_public(path: &str) -> bool {
    path == "/healthz" || path == "/" || path == "/index.html" || path.starts_with("/assets/")
}

/// The address failures are counted under: IPv4 as is, IPv6 by its /64 (a host there
/// can take any address of its prefix).
pub(crate) fn brake_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Authenticates every request but the public ones; puts the [`Caller`] in the request.
/// Only a wrong token counts towards the brake: a request without one (a browser asking for
/// a favicon) is refused but is no guess.
async fn authenticate(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    let started = Instant::now();
    let matched = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string());
    if !is_public(&path) {
        let now = app.clock.now_ms();
        let key = brake_key(peer.ip());
        let refused = if app.brake.blocked(key, now) {
            app.metrics.auth_failures.inc();
            Some(ApiError::TooMany(
                "too many failed authentications from this address; wait a minute".into(),
            ))
        } else {
            match bearer(req.headers()) {
                Some(t) => match app.check_token(t) {
                    Some(c) => {
                        req.extensions_mut().insert(c);
                        None
                    }
                    None => {
                        app.brake.failed(key, now);
                        app.metrics.auth_failures.inc();
                        tracing::debug!(%peer, %path, "wrong token");
                        Some(ApiError::Unauthorized)
                    }
                },
                None => {
                    app.metrics.auth_failures.inc();
                    Some(ApiError::Unauthorized)
                }
            }
        };
        if let Some(e) = refused {
            let r = e.into_response();
            app.metrics
                .observe(matched.as_deref(), r.status(), started.elapsed());
            return r;
        }
    }
    let r = json_errors(next.run(req).await).await;
    app.metrics
        .observe(matched.as_deref(), r.status(), started.elapsed());
    r
}

/// Turns axum's plain-text rejections (405, 413, a query string that does not decode, …)
/// into the API's JSON error form.
async fn json_errors(r: Response) -> Response {
    let status = r.status();
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return r;
    }
    let (parts, body) = r.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut out = (status, axum::Json(json!({ "error": message }))).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// Checks the caller's role for an operator route.
pub(crate) fn require(caller: &Caller, role: Role) -> Result<(), ApiError> {
    if caller.role >= role {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "token {:?} is {}; this needs an {} token",
            caller.name,
            caller.role.as_str(),
            role.as_str()
        )))
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.snapshot_blocking().await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

async fn fallback() -> ApiError {
    ApiError::NotFound("no such route; GET /api/v1/openapi.json lists them".into())
}

/// The router over `app` (also what the tests drive).
pub fn router(app: Arc<App>) -> Router {
    let mut r: Router<Arc<App>> = Router::new();
    for route in routes() {
        let m = route.method.clone();
        let h = handler_for(&m, route.path);
        r = r.route(route.path, h);
    }
    r.route("/", get(assets::index))
        .route("/index.html", get(assets::index))
        .route("/assets/*file", get(assets::file))
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            authenticate,
        ))
        .layer(DefaultBodyLimit::max(app.limits.max_body_bytes))
        .with_state(app)
}

fn handler_for(m: &Method, path: &str) -> axum::routing::MethodRouter<Arc<App>> {
    match (m.as_str(), path) {
        ("GET", "/healthz") => get(healthz),
        ("GET", "/readyz") => get(readyz),
        ("GET", "/metrics") => get(metrics::handler),
        ("GET", "/api/v1/openapi.json") => get(openapi::handler),
        ("GET", "/api/v1/fleet") => get(fleet::summary),
        ("GET", "/api/v1/devices") => get(fleet::devices),
        ("GET", "/api/v1/devices/:id") => get(device::health),
        ("GET", "/api/v1/devices/:id/vitals") => get(device::vitals),
        ("GET", "/api/v1/devices/:id/timeline") => get(device::timeline),
        ("GET", "/api/v1/devices/:id/sessions") => get(device::sessions),
        ("GET", "/api/v1/devices/:id/findings") => get(device::findings),
        ("GET", "/api/v1/devices/:id/alerts") => get(device::alerts),
        ("GET", "/api/v1/devices/:id/export") => get(device::export),
        ("GET", "/api/v1/findings") => get(fleet::findings),
        ("GET", "/api/v1/alerts") => get(fleet::alerts),
        ("GET", "/api/v1/alerts/:id") => get(fleet::alert),
        ("POST", "/api/v1/alerts/:id/ack") => post(fleet::ack),
        ("GET", "/api/v1/silences") => get(fleet::silences),
        ("POST", "/api/v1/silences") => post(fleet::silence),
        ("POST", "/api/v1/sql") => post(sql::handler),
        (m, p) => unreachable!("route {m} {p} has no handler"),
    }
}

/// Whether the stored findings are older than the data and nobody is writing them: the
/// directory has data, no `run` holds its lock, and `findings.parquet` is missing or older
/// than the manifest and the WAL.
fn findings_are_stale(dir: &std::path::Path) -> bool {
    let mtime = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let Err(crate::store::StoreError::Locked { .. }) = crate::store::hold_shared(dir) {
        return false;
    }
    let mut newest = mtime(dir.join("manifest.json"));
    if let Ok(rd) = std::fs::read_dir(dir.join("wal")) {
        for e in rd.flatten() {
            newest = newest.max(mtime(e.path()));
        }
    }
    match (newest, mtime(dir.join(crate::model::FINDINGS_FILE))) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(d), Some(f)) => d > f,
    }
}

async fn evaluate_at_start(app: Arc<App>) {
    let started = Instant::now();
    tracing::info!(
        "the stored findings are older than the data: evaluating the rules over the store"
    );
    let r = async {
        let snap = app.snapshot()?;
        let registry = app.registry()?;
        crate::rules::evaluate(
            &snap,
            registry,
            &app.pack,
            &crate::rules::Scope::default(),
            &app.query_config(),
        )
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
    }
    .await;
    match r {
        Ok(eval) => {
            eprintln!(
                "rules evaluated over the store in {:.1} s: {} finding(s) (kept in memory; `run` stores its own)",
                started.elapsed().as_secs_f64(),
                eval.findings.len()
            );
            *app.evaluated.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Arc::new(eval.findings));
        }
        Err(e) => eprintln!("rule evaluation at start failed: {e}"),
    }
    app.evaluating
        .store(false, std::sync::atomic::Ordering::Relaxed);
    app.cache.clear();
}

/// A running server: its address, and how to stop it.
pub struct Server {
    pub addr: SocketAddr,
    pub https: bool,
    /// Where Flight SQL listens, when it is on.
    pub flight_addr: Option<SocketAddr>,
    flight: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
    app: Arc<App>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
    pool_stop: Option<std::sync::mpsc::Sender<()>>,
}

impl Server {
    /// Tokens the server accepts now.
    pub fn tokens(&self) -> usize {
        self.app.token_count()
    }

    /// Stops accepting, lets requests in flight finish, and ends the query runtime.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some((stop, task)) = self.flight.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        let r = match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Io(std::io::Error::other(e.to_string()))),
        };
        if let Some(p) = self.pool_stop.take() {
            let _ = p.send(());
        }
        r
    }

    /// Serves until the task ends (an error) — for callers that stop on a signal instead.
    pub async fn wait(mut self) -> Result<(), ServeError> {
        let r = match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Io(std::io::Error::other(e.to_string()))),
        };
        if let Some(p) = self.pool_stop.take() {
            let _ = p.send(());
        }
        r
    }
}

/// Binds and starts serving in the background. Requests are served on a runtime of their
/// own and queries on another, so neither waits for the caller's tasks: under `run --http`
/// ingest and the live rules keep the caller's workers busy, and a request that had to wait
/// for one of them would take as long as a rule evaluation.
pub async fn start(cfg: ServeConfig) -> Result<Server, ServeError> {
    let runtime = |name: &str, threads: usize| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(name)
            .enable_all()
            .build()
            .map_err(ServeError::Runtime)
    };
    let pool_rt = runtime("wallscope-query", cfg.limits.query_threads)?;
    let http_rt = runtime("wallscope-http", 2)?;
    let pool = pool_rt.handle().clone();
    let http = http_rt.handle().clone();
    let (pool_stop, pool_rx) = std::sync::mpsc::channel::<()>();
    // The runtimes are dropped on a plain thread: dropping one inside async code panics.
    std::thread::Builder::new()
        .name("wallscope-runtimes".into())
        .spawn(move || {
            let _ = pool_rx.recv();
            http_rt.shutdown_timeout(Duration::from_secs(2));
            pool_rt.shutdown_timeout(Duration::from_secs(2));
        })
        .map_err(ServeError::Runtime)?;
    let started = http.spawn(start_on(cfg, pool)).await;
    let mut server = match started {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = pool_stop.send(());
            return Err(e);
        }
        Err(e) => {
            let _ = pool_stop.send(());
            return Err(ServeError::Io(std::io::Error::other(e.to_string())));
        }
    };
    server.pool_stop = Some(pool_stop);
    Ok(server)
}

/// The rest of [`start`], on the HTTP runtime (listeners bind to the runtime they are made on).
async fn start_on(cfg: ServeConfig, pool: tokio::runtime::Handle) -> Result<Server, ServeError> {
    let tls = match &cfg.tls {
        Some(t) => Some(tls::acceptor(t).map_err(ServeError::Tls)?),
        None => None,
    };
    let tls_files = cfg.tls.clone();
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    let started_ms = cfg.clock.now_ms();
    let file_tokens = FileTokens {
        checked: Instant::now(),
        modified: std::fs::metadata(cfg.data_dir.join(auth::TOKENS_FILE))
            .and_then(|m| m.modified())
            .ok(),
        tokens: Tokens::load(&cfg.data_dir).map_err(|e| ServeError::Tokens(e.to_string()))?,
    };
    let brake_per_min = cfg.limits.max_auth_failures_per_min;
    let app = Arc::new(App {
        file_tokens: Mutex::new(file_tokens),
        data_dir: cfg.data_dir,
        extra_tokens: cfg.extra_tokens,
        global: Arc::new(Semaphore::new(cfg.limits.max_concurrent_queries.max(1))),
        limits: cfg.limits,
        pack: Arc::new(cfg.pack),
        registry: cfg.registry,
        clock: cfg.clock,
        brake: auth::FailureBrake::new(brake_per_min),
        metrics: Default::default(),
        snapshot: Mutex::new(None),
        pool,
        per_token: Mutex::new(HashMap::new()),
        cache: Default::default(),
        started_ms,
        evaluated: Mutex::new(None),
        evaluating: std::sync::atomic::AtomicBool::new(false),
    });
    if cfg.evaluate_at_start && findings_are_stale(&app.data_dir) {
        app.evaluating
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let a = app.clone();
        app.pool.spawn(async move { evaluate_at_start(a).await });
    }
    let flight = match cfg.flight_listen {
        Some(l) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (addr, task) = flight::start(app.clone(), l, tls_files.as_ref(), rx).await?;
            Some((addr, (tx, task)))
        }
        None => None,
    };
    let flight_addr = flight.as_ref().map(|f| f.0);
    let flight = flight.map(|f| f.1);
    let router = router(app.clone());
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let https = tls.is_some();
    let task = tokio::spawn(async move {
        match tls {
            None => axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
            .map_err(ServeError::Io),
            Some(acceptor) => tls::serve(listener, acceptor, router, stop_rx).await,
        }
    });
    Ok(Server {
        addr,
        https,
        flight_addr,
        flight,
        app,
        stop: Some(stop),
        task,
        pool_stop: None,
    })
}
