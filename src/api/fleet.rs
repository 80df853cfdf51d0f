//! Fleet-wide answers: the device list with status, the fleet summary, stored findings,
//! alerts with their acks and silences, and the operator actions.
//!
//! A device's status here is the health report's rule (`rules::health::status_of`) applied
//! to the stored findings (what `run` or `diagnose --store` recorded), so the list costs one
//! scan, not one rule evaluation per charger; the device page re-evaluates.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};

use super::columns::{i64s, strings};
use super::{ApiError, App, Caller, Role, known_params, require, time_param, usize_param};
use crate::alerts::actions::{self, Action, ActionError};
use crate::alerts::lifecycle::State as AlertState;
use crate::alerts::table::AlertRow;
use crate::capture::format_rfc3339_ms;
use crate::rules::finding::Finding;
use crate::rules::health::{self, ACTIVE_WITHIN_MS};

type Params = Query<HashMap<String, String>>;

/// How long a fleet list may be served before a refresh starts.
const FLEET_MAX_AGE: Duration = Duration::from_secs(5);

/// Answers computed once and shared: kept per key, served stale while one refresh runs.
/// A [`Cache::clear`] bumps the generation, so an answer computed from before it is not
/// stored after it. Concurrent first requests for one key share one computation.
pub(crate) struct Cache<T> {
    map: Mutex<HashMap<String, Entry<T>>>,
    /// First computations under way, awaited by every request that misses meanwhile.
    pending: Mutex<HashMap<String, Pending<T>>>,
    generation: std::sync::atomic::AtomicU64,
}

type Pending<T> =
    futures::future::Shared<futures::future::BoxFuture<'static, Result<Arc<T>, ApiError>>>;

struct Entry<T> {
    at: Instant,
    value: Arc<T>,
    refreshing: bool,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            map: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            generation: Default::default(),
        }
    }
}

/// The caches of one server.
#[derive(Default)]
pub(crate) struct Caches {
    pub fleet: Cache<Fleet>,
    pub health: Cache<Value>,
    pub dead: Cache<Vec<(String, u64)>>,
}

impl Caches {
    /// Forgets every cached answer (new findings change statuses).
    pub(crate) fn clear(&self) {
        self.fleet.clear();
        self.health.clear();
    }
}

/// Entries beyond this are dropped wholesale (a cache, not a store).
const MAX_ENTRIES: usize = 20_000;

impl<T: Send + Sync + 'static> Cache<T> {
    fn clear(&self) {
        use std::sync::atomic::Ordering;
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        m.clear();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn store(&self, key: String, value: Arc<T>, generation: u64) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
            return;
        }
        if m.len() >= MAX_ENTRIES {
            m.clear();
        }
        m.insert(
            key,
            Entry {
                at: Instant::now(),
                value,
                refreshing: false,
            },
        );
    }

    /// The value for `key`: fresh, or stale while one background refresh runs, or computed
    /// now (under the caller's query slots and timeout) when there is none.
    pub(crate) async fn get<F, Fut>(
        app: &Arc<App>,
        pick: fn(&App) -> &Cache<T>,
        caller: &Caller,
        key: &str,
        max_age: Duration,
        make: F,
    ) -> Result<Arc<T>, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let cache = pick(app);
        let generation = cache.generation.load(std::sync::atomic::Ordering::SeqCst);
        {
            let mut m = cache.map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = m.get_mut(key) {
                if e.at.elapsed() < max_age || e.refreshing {
                    return Ok(e.value.clone());
                }
                e.refreshing = true;
                let stale = e.value.clone();
                let fut = make();
                let app2 = app.clone();
                let key = key.to_string();
                let timeout = Duration::from_millis(app.limits.query_timeout_ms);
                app.pool.spawn(async move {
                    use futures::FutureExt;
                    // A panic or an error keeps the old answer and lets the next request
                    // try again; it must never leave `refreshing` set.
                    let r = std::panic::AssertUnwindSafe(tokio::time::timeout(timeout, fut))
                        .catch_unwind()
                        .await;
                    let cache = pick(&app2);
                    match r {
                        Ok(Ok(Ok(v))) => cache.store(key, Arc::new(v), generation),
                        _ => {
                            let mut m = cache.map.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some(e) = m.get_mut(&key) {
                                e.refreshing = false;
                            }
                        }
                    }
                });
                return Ok(stale);
            }
        }
        let shared = {
            use futures::FutureExt;
            let mut p = cache.pending.lock().unwrap_or_else(|p| p.into_inner());
            match p.get(key) {
                Some(f) => f.clone(),
                None => {
                    let (app2, caller2, work) = (app.clone(), caller.clone(), make());
                    let f = async move { app2.run(&caller2, work).await.map(Arc::new) }
                        .boxed()
                        .shared();
                    p.insert(key.to_string(), f.clone());
                    f
                }
            }
        };
        let r = shared.await;
        if let Ok(v) = &r {
            cache.store(key.to_string(), v.clone(), generation);
        }
        // Stored first, then no longer pending: a request in between finds one or the other.
        cache
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        r
    }
}

/// One charger in the fleet list.
#[derive(Debug, Clone)]
pub(crate) struct DeviceRow {
    pub device_id: String,
    pub status: health::Status,
    pub last_seen_ms: i64,
    pub firmware: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub active_alerts: usize,
    /// Fault codes of the findings active in the last 24 h, most severe first.
    pub faults: Vec<String>,
}

impl DeviceRow {
    fn to_json(&self) -> Value {
        json!({
            "device_id": self.device_id,
            "status": self.status.as_str(),
            "last_seen": format_rfc3339_ms(self.last_seen_ms),
            "firmware": self.firmware,
            "site": self.labels.get("site"),
            "installer": self.labels.get("installer"),
            "labels": self.labels,
            "active_alerts": self.active_alerts,
            "faults": self.faults,
        })
    }
}

/// The fleet as of the store's newest telemetry.
pub(crate) struct Fleet {
    pub now_ms: Option<i64>,
    pub devices: Vec<DeviceRow>,
    pub findings: Vec<Finding>,
    pub alerts: Vec<AlertRow>,
}

impl Fleet {
    pub(crate) fn device(&self, id: &str) -> Option<&DeviceRow> {
        self.devices
            .binary_search_by(|d| d.device_id.as_str().cmp(id))
            .ok()
            .map(|i| &self.devices[i])
    }
}

/// Builds the fleet list: one scan of vitals and version, the stored findings and alerts,
/// the registry's labels.
pub(crate) async fn load_fleet(app: Arc<App>) -> Result<Fleet, ApiError> {
    let snapshot = app.snapshot()?;
    let ctx = crate::query::session(&snapshot, &app.query_config())?;
    if let Some(r) = app.registry()? {
        crate::query::set_devices(&ctx, r)?;
    }
    let sql = "WITH seen AS (SELECT device_id, MAX(CAST(ts AS BIGINT)) AS last_seen FROM vitals GROUP BY device_id), \
               fw AS (SELECT device_id, last_value(firmware_version ORDER BY ts) AS firmware FROM version GROUP BY device_id) \
               SELECT seen.device_id, seen.last_seen, fw.firmware FROM seen LEFT JOIN fw ON seen.device_id = fw.device_id \
               WHERE seen.device_id IS NOT NULL ORDER BY seen.device_id";
    let batches = crate::query::run_readonly(&ctx, sql).await?;
    let reg = ctx
        .table(crate::model::DEVICES_TABLE)
        .await
        .map_err(super::datafusion_error)?
        .collect()
        .await
        .map_err(super::datafusion_error)?;
    let mut labels: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    for b in &reg {
        labels.extend(crate::alerts::registry_labels(b, None));
    }
    let mut findings = crate::rules::finding::load(&snapshot.dir)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let evaluated = app
        .evaluated
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(ev) = evaluated {
        crate::rules::finding::merge(&mut findings, (*ev).clone());
    }
    let alerts =
        crate::alerts::table::load(&snapshot.dir).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut rows = Vec::new();
    for b in &batches {
        let ids = strings(b, 0)?;
        let seen = i64s(b, 1)?;
        let fw = strings(b, 2)?;
        for i in 0..b.num_rows() {
            let (Some(id), Some(seen)) = (ids[i].clone(), seen[i]) else {
                continue;
            };
            rows.push((id, seen, fw[i].clone()));
        }
    }
    let now_ms = rows.iter().map(|r| r.1).max();
    let now = now_ms.unwrap_or(0);
    let mut by_device: HashMap<&str, Vec<&Finding>> = HashMap::new();
    for f in &findings {
        if f.last_ms >= now - ACTIVE_WITHIN_MS {
            by_device.entry(f.device_id.as_str()).or_default().push(f);
        }
    }
    let states = crate::alerts::latest_states(&alerts);
    let mut firing: HashMap<&str, usize> = HashMap::new();
    let mut counted = std::collections::HashSet::new();
    for r in &alerts {
        if let Some(d) = &r.device_id
            && states.get(r.alert_id.as_str()) == Some(&AlertState::Firing)
            && counted.insert(r.alert_id.as_str())
        {
            *firing.entry(d.as_str()).or_default() += 1;
        }
    }
    let devices = rows
        .into_iter()
        .map(|(id, seen, firmware)| {
            let mut active = by_device.get(id.as_str()).cloned().unwrap_or_default();
            active.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.fault.cmp(&b.fault)));
            let worst = active.first().map(|f| f.severity);
            let mut faults: Vec<String> = Vec::new();
            for f in &active {
                if !faults.contains(&f.fault) {
                    faults.push(f.fault.clone());
                }
            }
            DeviceRow {
                status: health::status_of(now, seen, worst),
                last_seen_ms: seen,
                firmware,
                labels: labels.get(&id).cloned().unwrap_or_default(),
                active_alerts: firing.get(id.as_str()).copied().unwrap_or(0),
                faults,
                device_id: id,
            }
        })
        .collect();
    Ok(Fleet {
        now_ms,
        devices,
        findings,
        alerts,
    })
}

pub(crate) async fn fleet(app: &Arc<App>, caller: &Caller) -> Result<Arc<Fleet>, ApiError> {
    let a = app.clone();
    Cache::get(
        app,
        |a| &a.cache.fleet,
        caller,
        "",
        FLEET_MAX_AGE,
        move || load_fleet(a),
    )
    .await
}

/// A finding as the API shows it.
pub(crate) fn finding_json(f: &Finding) -> Value {
    let evidence: Value = serde_json::from_str(&f.evidence_json()).unwrap_or_default();
    json!({
        "device_id": f.device_id,
        "fault": f.fault,
        "rule": f.rule,
        "severity": f.severity.as_str(),
        "title": f.title,
        "class": f.class,
        "owner": f.owner,
        "first_ts": format_rfc3339_ms(f.first_ms),
        "last_ts": format_rfc3339_ms(f.last_ms),
        "first_ms": f.first_ms,
        "last_ms": f.last_ms,
        "summary": f.summary,
        "evidence": evidence,
        "steps": f.steps.iter().map(|s| json!({"who": s.who.as_str(), "text": s.text})).collect::<Vec<_>>(),
    })
}

/// One alert: its latest transition, when it started, how many transitions, its acks.
pub(crate) fn alert_summaries<'a>(
    rows: impl IntoIterator<Item = &'a AlertRow>,
    acts: &actions::Actions,
) -> Vec<Value> {
    let mut by: BTreeMap<&str, Vec<&AlertRow>> = BTreeMap::new();
    for r in rows {
        by.entry(r.alert_id.as_str()).or_default().push(r);
    }
    let mut out: Vec<(i64, Value)> = by
        .into_iter()
        .map(|(id, mut rs)| {
            rs.sort_by_key(|r| (r.at_ms, r.state));
            let last = rs[rs.len() - 1];
            let mut v = last.to_json();
            v["transitions"] = json!(rs.len());
            v["silenced_by"] = json!(last.silenced_by);
            v["inhibited_by"] = json!(last.inhibited_by);
            v["acks"] = acts
                .acks_of(id)
                .filter_map(|a| match a {
                    Action::Ack {
                        by, at_ms, note, ..
                    } => Some(json!({"by": by, "at": format_rfc3339_ms(*at_ms), "note": note})),
                    _ => None,
                })
                .collect();
            (last.at_ms, v)
        })
        .collect();
    out.sort_by_key(|b| std::cmp::Reverse(b.0));
    out.into_iter().map(|(_, v)| v).collect()
}

fn load_actions(app: &App) -> Result<actions::Actions, ApiError> {
    actions::load(&app.data_dir).map_err(|e| ApiError::Internal(e.to_string()))
}

pub(crate) async fn devices(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    known_params(
        &q,
        &["status", "site", "firmware", "q", "sort", "order", "limit"],
    )?;
    let statuses: Option<Vec<health::Status>> = q
        .get("status")
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.split(',')
                .map(|x| match x.trim() {
                    "ok" => Ok(health::Status::Ok),
                    "degraded" => Ok(health::Status::Degraded),
                    "faulted" => Ok(health::Status::Faulted),
                    "offline" => Ok(health::Status::Offline),
                    other => Err(ApiError::param(
                        "status",
                        format!("{other:?}: use ok, degraded, faulted or offline"),
                    )),
                })
                .collect()
        })
        .transpose()?;
    let sort = q.get("sort").map(String::as_str).unwrap_or("device_id");
    if ![
        "device_id",
        "status",
        "last_seen",
        "alerts",
        "site",
        "firmware",
    ]
    .contains(&sort)
    {
        return Err(ApiError::param(
            "sort",
            format!("{sort:?}: use device_id, status, last_seen, alerts, site or firmware"),
        ));
    }
    let desc = match q.get("order").map(String::as_str) {
        None | Some("") | Some("asc") => false,
        Some("desc") => true,
        Some(o) => return Err(ApiError::param("order", format!("{o:?}: use asc or desc"))),
    };
    let limit = usize_param("limit", q.get("limit"), 1000, 1..=100_000)?;
    let f = fleet(&app, &caller).await?;
    let mut rows: Vec<&DeviceRow> = f
        .devices
        .iter()
        .filter(|d| statuses.as_ref().is_none_or(|s| s.contains(&d.status)))
        .filter(|d| {
            q.get("site")
                .is_none_or(|s| d.labels.get("site") == Some(s))
        })
        .filter(|d| {
            q.get("firmware")
                .is_none_or(|s| d.firmware.as_ref() == Some(s))
        })
        .filter(|d| q.get("q").is_none_or(|s| d.device_id.contains(s.as_str())))
        .collect();
    let rank = |s: health::Status| match s {
        health::Status::Ok => 0,
        health::Status::Degraded => 1,
        health::Status::Faulted => 2,
        health::Status::Offline => 3,
    };
    rows.sort_by(|a, b| {
        let o = match sort {
            "status" => rank(a.status).cmp(&rank(b.status)),
            "last_seen" => a.last_seen_ms.cmp(&b.last_seen_ms),
            "alerts" => a.active_alerts.cmp(&b.active_alerts),
            "site" => a.labels.get("site").cmp(&b.labels.get("site")),
            "firmware" => a.firmware.cmp(&b.firmware),
            _ => std::cmp::Ordering::Equal,
        }
        .then_with(|| a.device_id.cmp(&b.device_id));
        if desc { o.reverse() } else { o }
    });
    let total = rows.len();
    rows.truncate(limit);
    Ok(Json(json!({
        "as_of": f.now_ms.map(format_rfc3339_ms),
        "total": total,
        "devices": rows.iter().map(|d| d.to_json()).collect::<Vec<_>>(),
    })))
}

pub(crate) async fn summary(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    known_params(&q, &["days"])?;
    let days = usize_param("days", q.get("days"), 30, 1..=366)? as i64;
    let f = fleet(&app, &caller).await?;
    let mut counts: BTreeMap<&str, usize> = ["ok", "degraded", "faulted", "offline"]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
    for d in &f.devices {
        *counts.entry(d.status.as_str()).or_default() += 1;
    }
    // New episodes per day and fault over the last `days` days of the store.
    const DAY: i64 = 86_400_000;
    let end_day = f.now_ms.unwrap_or(0).div_euclid(DAY);
    let first_day = end_day - days + 1;
    let mut trend: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for x in &f.findings {
        let d = x.first_ms.div_euclid(DAY);
        if d >= first_day && d <= end_day {
            trend
                .entry(x.fault.as_str())
                .or_insert_with(|| vec![0; days as usize])[(d - first_day) as usize] += 1;
        }
    }
    let acts = load_actions(&app)?;
    let all = alert_summaries(&f.alerts, &acts);
    let active: Vec<&Value> = all.iter().filter(|a| a["state"] == "firing").collect();
    let cohort: Vec<&Value> = all
        .iter()
        .filter(|a| a["kind"] == "trend" && (a["state"] == "firing" || a["state"] == "pending"))
        .collect();
    let evaluated = app
        .evaluated
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_some();
    let findings_source = if app.evaluating.load(std::sync::atomic::Ordering::Relaxed) {
        "evaluating"
    } else if evaluated {
        "stored and evaluated at start"
    } else {
        "stored"
    };
    Ok(Json(json!({
        "as_of": f.now_ms.map(format_rfc3339_ms),
        "findings_source": findings_source,
        "devices": f.devices.len(),
        "status": counts,
        "active_alerts": active.len(),
        "alerts": active.iter().take(100).collect::<Vec<_>>(),
        "cohort_alerts": cohort,
        "fault_trend": {
            "days": (first_day..=end_day).map(|d| format_rfc3339_ms(d * DAY)[..10].to_string()).collect::<Vec<_>>(),
            "series": trend,
        },
    })))
}

pub(crate) async fn findings(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    known_params(&q, &["device", "fault", "since", "limit"])?;
    let since = time_param("since", q.get("since"))?;
    let limit = usize_param("limit", q.get("limit"), 500, 1..=100_000)?;
    let fault = q.get("fault").map(|f| f.to_uppercase());
    let f = fleet(&app, &caller).await?;
    let mut rows: Vec<&Finding> = f
        .findings
        .iter()
        .filter(|x| q.get("device").is_none_or(|d| &x.device_id == d))
        .filter(|x| fault.as_ref().is_none_or(|c| &x.fault == c))
        .filter(|x| since.is_none_or(|s| x.last_ms >= s))
        .collect();
    rows.sort_by(|a, b| b.last_ms.cmp(&a.last_ms).then(b.severity.cmp(&a.severity)));
    let total = rows.len();
    rows.truncate(limit);
    Ok(Json(json!({
        "total": total,
        "findings": rows.iter().map(|x| finding_json(x)).collect::<Vec<_>>(),
    })))
}

pub(crate) async fn alerts(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    known_params(&q, &["state", "kind", "device", "limit"])?;
    let states: Option<Vec<&str>> = match q.get("state").map(String::as_str) {
        None | Some("") => None,
        Some("active") => Some(vec!["pending", "firing"]),
        Some(s) => {
            let v: Vec<&str> = s.split(',').map(str::trim).collect();
            for x in &v {
                if !AlertState::ALL.iter().any(|a| a.as_str() == *x) {
                    return Err(ApiError::param(
                        "state",
                        format!("{x:?}: use pending, firing, resolved, cancelled or active"),
                    ));
                }
            }
            Some(v)
        }
    };
    if let Some(k) = q.get("kind")
        && k != "fault"
        && k != "trend"
    {
        return Err(ApiError::param(
            "kind",
            format!("{k:?}: use fault or trend"),
        ));
    }
    let limit = usize_param("limit", q.get("limit"), 500, 1..=100_000)?;
    let f = fleet(&app, &caller).await?;
    let acts = load_actions(&app)?;
    let rows = f
        .alerts
        .iter()
        .filter(|r| {
            q.get("device")
                .is_none_or(|d| r.device_id.as_ref() == Some(d))
        })
        .filter(|r| q.get("kind").is_none_or(|k| &r.kind == k));
    let mut all = alert_summaries(rows, &acts);
    if let Some(s) = &states {
        all.retain(|a| s.iter().any(|x| a["state"] == *x));
    }
    let total = all.len();
    all.truncate(limit);
    Ok(Json(json!({"total": total, "alerts": all})))
}

pub(crate) async fn alert(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let f = fleet(&app, &caller).await?;
    // The fleet cache may be seconds old; an alert it does not know yet is read from disk.
    let from_disk;
    let rows: &[AlertRow] = if f.alerts.iter().any(|r| r.alert_id == id) {
        &f.alerts
    } else {
        from_disk = crate::alerts::table::load(&app.data_dir)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        &from_disk
    };
    let mut mine: Vec<&AlertRow> = rows.iter().filter(|r| r.alert_id == id).collect();
    if mine.is_empty() {
        return Err(ApiError::NotFound(format!("no alert {id:?}")));
    }
    mine.sort_by_key(|r| (r.at_ms, r.state));
    let acts = load_actions(&app)?;
    let mut v = alert_summaries(mine.iter().copied(), &acts).remove(0);
    v["history"] = mine
        .iter()
        .map(|r| {
            json!({
                "state": r.state.as_str(),
                "at": format_rfc3339_ms(r.at_ms),
                "notification_id": r.notification_id,
                "silenced_by": r.silenced_by,
                "inhibited_by": r.inhibited_by,
                "summary": r.summary,
            })
        })
        .collect();
    Ok(Json(v))
}

fn body_json(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::param("body", format!("not JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::param("body", "must be a JSON object"));
    }
    Ok(v)
}

fn str_field(v: &Value, name: &str) -> Result<Option<String>, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::param(name, "must be a string")),
    }
}

fn action_error(e: ActionError) -> ApiError {
    match e {
        ActionError::UnknownAlert(id) => ApiError::NotFound(format!("no alert {id:?}")),
        ActionError::Invalid(m) => ApiError::param("body", m),
        ActionError::Io { .. } => ApiError::Internal(e.to_string()),
    }
}

pub(crate) async fn ack(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Role::Operator)?;
    let v = body_json(&body)?;
    let note = str_field(&v, "note")?.unwrap_or_default();
    let rows =
        crate::alerts::table::load(&app.data_dir).map_err(|e| ApiError::Internal(e.to_string()))?;
    let a = actions::ack(
        &app.data_dir,
        &rows,
        &id,
        &caller.name,
        &note,
        app.clock.now_ms(),
    )
    .map_err(action_error)?;
    Ok(Json(serde_json::to_value(&a).unwrap_or_default()))
}

pub(crate) async fn silences(
    State(app): State<Arc<App>>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    known_params(&q, &[])?;
    let now = app.clock.now_ms();
    let acts = load_actions(&app)?;
    let mut out: Vec<Value> = acts
        .list
        .iter()
        .filter_map(|a| match a {
            Action::Silence {
                id,
                device,
                rule,
                from_ms,
                until_ms,
                by,
                reason,
            } => Some(json!({
                "id": id, "device": device, "rule": rule,
                "from": format_rfc3339_ms(*from_ms), "until": format_rfc3339_ms(*until_ms),
                "active": (*from_ms..*until_ms).contains(&now),
                "by": by, "reason": reason,
            })),
            _ => None,
        })
        .collect();
    out.sort_by_key(|s| {
        (
            s["active"] != true,
            std::cmp::Reverse(s["from"].to_string()),
        )
    });
    Ok(Json(json!({"silences": out})))
}

pub(crate) async fn silence(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Role::Operator)?;
    let v = body_json(&body)?;
    for k in v
        .as_object()
        .map(|o| o.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        if !["device", "rule", "for", "reason"].contains(&k.as_str()) {
            return Err(ApiError::param(
                &k,
                "unknown field; a silence takes device, rule, for, reason",
            ));
        }
    }
    let for_ms = match str_field(&v, "for")? {
        Some(s) => crate::config::parse_duration_ms(&s).map_err(|e| ApiError::param("for", e))?,
        None => return Err(ApiError::param("for", "required: how long, e.g. \"2h\"")),
    };
    let req = actions::SilenceRequest {
        device: str_field(&v, "device")?,
        rule: str_field(&v, "rule")?,
        for_ms,
        by: caller.name.clone(),
        reason: str_field(&v, "reason")?.unwrap_or_default(),
    };
    let a = actions::silence(&app.data_dir, req, app.clock.now_ms()).map_err(action_error)?;
    Ok(Json(serde_json::to_value(&a).unwrap_or_default()))
}
