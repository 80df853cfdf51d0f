//! Alerts: the lifecycle on a crafted capture (a fault shorter than `for`, one that lasts,
//! one that oscillates, two chargers of one site under a site grid alert), restarts that
//! recompute instead of re-sending, the trend rules on a simulated fleet with a bad
//! firmware cohort and a site supply problem, the CLI, and the sinks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wallscope::alerts::lifecycle::{Policy, State};
use wallscope::alerts::table::AlertRow;
use wallscope::alerts::{self, Settings};
use wallscope::capture::format_rfc3339_ms;
use wallscope::clock::SystemClock;
use wallscope::rules::{self, PackSource, Scope};
use wallscope::sim::{Cohort, FaultCode, SimConfig, Simulator};

use crate::harness::{free_port, run, stderr, stdout};

const MIN: i64 = 60_000;
/// 2026-03-02T00:00:00Z, a Monday.
const T0: i64 = 1_772_409_600_000;

/// One vitals capture line: an idle charger on a 240 V supply reading `grid_v`.
fn vitals_line(dev: &str, t_ms: i64, seq: u64, grid_v: f64) -> String {
    // Temperatures move a little, as real sensors do (a flat line is F24's business).
    let wobble = ((t_ms / 10_000) % 7) as f64 * 0.1;
    let data = serde_json::json!({
        "contactor_closed": false, "vehicle_connected": false, "session_s": 0,
        "grid_v": grid_v, "grid_hz": 59.9 + wobble / 10.0,
        "vehicle_current_a": 0.0, "currentA_a": 0.0, "currentB_a": 0.0, "currentC_a": 0.0,
        "currentN_a": 0.0, "voltageA_v": 0.2, "voltageB_v": 0.0, "voltageC_v": 0.2,
        "relay_coil_v": 0.0, "pcba_temp_c": 25.0 + wobble, "handle_temp_c": 19.0 + wobble,
        "mcu_temp_c": 32.0 + wobble, "uptime_s": 86_400 + (t_ms - T0) / 1000,
        "input_thermopile_uv": -80, "prox_v": 0.0, "pilot_high_v": 11.7, "pilot_low_v": 11.7,
        "session_energy_wh": 0.0, "config_status": 5, "evse_state": 1, "current_alerts": []
    });
    let ts = format_rfc3339_ms(t_ms);
    let payload = serde_json::json!({"ts": ts, "seq": seq, "data": data});
    serde_json::json!({"ts": ts, "topic": format!("wc/{dev}/vitals"), "payload": payload})
        .to_string()
}

/// A device, its site, and the minutes (from T0) during which it reads 258 V (above ANSI
/// Range B, 254 V).
type Device = (&'static str, &'static str, Vec<(i64, i64)>);

fn scenario() -> Vec<Device> {
    vec![
        // Shorter than `for` (10 min): pending, then cancelled; never fires.
        ("short", "S-A", vec![(60, 63)]),
        // Lasts 40 min: fires once, resolves once.
        ("long", "S-B", vec![(60, 100)]),
        // 2 min out, 3 min back, twenty times: one alert, not a storm.
        (
            "osc",
            "S-C",
            (0..20).map(|k| (60 + 5 * k, 62 + 5 * k)).collect(),
        ),
        // Two chargers of one site at once: the site alert fires and mutes theirs.
        ("site1", "S-D", vec![(60, 100)]),
        ("site2", "S-D", vec![(60, 100)]),
    ]
}

/// Writes the capture (4 h of 10 s polls) and the registry; returns the capture's path.
fn write_scenario(dir: &Path) -> PathBuf {
    let mut lines = Vec::new();
    for (dev, _, outs) in scenario() {
        for (seq, k) in (0..4 * 360).enumerate() {
            let t = T0 + k * 10_000;
            let m = (t - T0) as f64 / MIN as f64;
            let out = outs.iter().any(|(a, b)| m >= *a as f64 && m < *b as f64);
            lines.push((
                t,
                vitals_line(dev, t, seq as u64, if out { 258.0 } else { 241.0 }),
            ));
        }
    }
    lines.sort_by_key(|(t, _)| *t);
    let path = dir.join("lifecycle.jsonl");
    let text: String = lines.into_iter().map(|(_, l)| l + "\n").collect();
    std::fs::write(&path, text).unwrap();
    let mut reg = String::from(
        "device_id,service_type,breaker_a,max_current_a,part_number,site,installer,commissioned_at,firmware_version\n",
    );
    for (dev, site, _) in scenario() {
        reg.push_str(&format!(
            "{dev},split_phase,60,48,1734412-02-E,{site},Volt Bros,2024-05-01,25.34.1\n"
        ));
    }
    std::fs::write(dir.join("devices.csv"), reg).unwrap();
    path
}

fn settings_for_10min() -> Settings {
    Settings {
        fault_policy: Policy {
            for_ms: 10 * MIN,
            clear_ms: 30 * MIN,
            keep_firing_ms: 0,
        },
        ..Settings::default()
    }
}

/// Imports the capture into `data`, evaluates the built-in pack and stores the findings.
fn import_and_find(data: &Path, capture: &Path, registry: &Path) {
    let o = run(data, &["import", capture.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::copy(registry, data.join("devices.csv")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let snapshot = wallscope::store::Snapshot::load(data).unwrap();
    let pack = rules::pack::load(&PackSource::builtin()).unwrap();
    let eval = rt
        .block_on(rules::evaluate(
            &snapshot,
            None,
            &pack,
            &Scope::default(),
            &wallscope::query::QueryConfig::default(),
        ))
        .unwrap();
    rules::finding::save(data, &eval.findings).unwrap();
}

fn evaluate(data: &Path, s: &Settings) -> (alerts::Outcome, alerts::AlertState) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(alerts::evaluate_dir(data, None, s, 1_000))
        .unwrap()
}

/// (rule, key) → the states of each of its alerts, in order.
fn lifecycles(rows: &[AlertRow]) -> BTreeMap<(String, String), Vec<Vec<State>>> {
    let mut by_id: BTreeMap<&str, Vec<&AlertRow>> = BTreeMap::new();
    for r in rows {
        by_id.entry(&r.alert_id).or_default().push(r);
    }
    let mut out: BTreeMap<(String, String), Vec<Vec<State>>> = BTreeMap::new();
    for v in by_id.values_mut() {
        v.sort_by_key(|r| (r.at_ms, r.state));
        out.entry((v[0].rule.clone(), v[0].key.clone()))
            .or_default()
            .push(v.iter().map(|r| r.state).collect());
    }
    out
}

/// The columns a replay must reproduce (not the wall-clock ones).
fn event_columns(rows: &[AlertRow]) -> Vec<(String, String, String, String, i64, i64)> {
    let mut v: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.alert_id.clone(),
                r.rule.clone(),
                r.key.clone(),
                r.state.as_str().to_string(),
                r.at_ms,
                r.started_ms,
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn lifecycle_on_a_crafted_capture() {
    let d = tempfile::tempdir().unwrap();
    let capture = write_scenario(d.path());
    let data = d.path().join("data");
    import_and_find(&data, &capture, &d.path().join("devices.csv"));
    let s = settings_for_10min();
    let (o, state) = evaluate(&data, &s);
    let lc = lifecycles(&state.rows);
    let sv = |dev: &str| {
        lc.get(&("supply_voltage".to_string(), dev.to_string()))
            .cloned()
    };
    use State::*;
    assert_eq!(sv("short"), Some(vec![vec![Pending, Cancelled]]), "{lc:?}");
    assert_eq!(
        sv("long"),
        Some(vec![vec![Pending, Firing, Resolved]]),
        "{lc:?}"
    );
    assert_eq!(
        sv("osc"),
        Some(vec![vec![Pending, Firing, Resolved]]),
        "{lc:?}"
    );
    assert_eq!(
        sv("site1"),
        Some(vec![vec![Pending, Firing, Resolved]]),
        "{lc:?}"
    );
    let long_firing = state
        .rows
        .iter()
        .find(|r| r.key == "long" && r.state == Firing)
        .unwrap();
    assert_eq!(
        long_firing.at_ms,
        T0 + 70 * MIN,
        "fires `for` after the first evidence"
    );
    assert!(long_firing.notification_id.is_some());

    // The site alert fires, names the site, and mutes its chargers' supply alerts.
    let site = lc
        .get(&("site_grid_anomaly".to_string(), "site=S-D".to_string()))
        .unwrap_or_else(|| panic!("no site alert: {lc:?}"));
    assert_eq!(site.len(), 1);
    assert!(site[0].contains(&Firing));
    let site_id = state
        .rows
        .iter()
        .find(|r| r.rule == "site_grid_anomaly")
        .unwrap()
        .alert_id
        .clone();
    for dev in ["site1", "site2"] {
        for r in state
            .rows
            .iter()
            .filter(|r| r.key == dev && r.rule == "supply_voltage")
        {
            if matches!(r.state, Firing | Resolved) {
                assert_eq!(r.inhibited_by.as_deref(), Some(site_id.as_str()), "{r:?}");
                assert!(r.notification_id.is_none());
            }
        }
    }
    for dev in ["short", "long", "osc"] {
        assert!(
            state
                .rows
                .iter()
                .filter(|r| r.key == dev)
                .all(|r| r.inhibited_by.is_none()),
            "{dev} has no site alert over it"
        );
    }
    assert!(o.notifications.len() >= 2, "{o:?}");

    // A restart recomputes: nothing new, nothing re-sent.
    let (again, state2) = evaluate(&data, &s);
    assert_eq!(again.transitions, 0);
    assert!(again.notifications.is_empty());
    assert_eq!(state2.rows, state.rows);

    // From scratch (the same capture evaluated again): the same rows in event time.
    std::fs::remove_dir_all(data.join("alerts")).unwrap();
    let (_, fresh) = evaluate(&data, &s);
    assert_eq!(event_columns(&fresh.rows), event_columns(&state.rows));

    // The table is queryable, and the CLI shows the alerts.
    let n = crate::harness::sql_one(&data, "SELECT count(*) FROM alerts WHERE state = 'firing'");
    assert!(n.parse::<u64>().unwrap() >= 4, "{n}");
    let o = run(
        Path::new(data.to_str().unwrap()),
        &["alerts", "list", "--all"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("site=S-D") && out.contains("supply_voltage"),
        "{out}"
    );
    let o = run(
        Path::new(data.to_str().unwrap()),
        &["alerts", "show", &long_firing.alert_id],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("firing") && out.contains("resolved") && out.contains("steps:"),
        "{out}"
    );
}

#[test]
fn ack_and_silence_are_stored_and_apply() {
    let d = tempfile::tempdir().unwrap();
    let capture = write_scenario(d.path());
    let data = d.path().join("data");
    import_and_find(&data, &capture, &d.path().join("devices.csv"));
    let dd = data.to_str().unwrap();
    // A silence for one device before the alerts are evaluated: its notifications stay
    // muted, its transitions are still recorded.
    let o = run(
        Path::new(dd),
        &[
            "alerts",
            "silence",
            "--device",
            "long",
            "--for",
            "2h",
            "--reason",
            "customer informed",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        Path::new(dd),
        &["alerts", "silence", "--for", "2h", "--reason", "x"],
    );
    assert!(!o.status.success(), "a silence of everything is refused");
    // Wall clock matters for silences: evaluate with the real clock.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let now = wallscope::clock::Clock::now_ms(&SystemClock);
    let (_, state) = rt
        .block_on(alerts::evaluate_dir(
            &data,
            None,
            &settings_for_10min(),
            now,
        ))
        .unwrap();
    let long: Vec<&AlertRow> = state.rows.iter().filter(|r| r.key == "long").collect();
    assert!(long.iter().any(|r| r.state == State::Firing));
    for r in &long {
        if matches!(r.state, State::Firing | State::Resolved) {
            assert!(
                r.silenced_by.is_some() && r.notification_id.is_none(),
                "{r:?}"
            );
        }
    }
    let id = long[0].alert_id.clone();
    let o = run(
        Path::new(dd),
        &["alerts", "ack", &id, "--by", "ana", "--note", "on it"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(Path::new(dd), &["alerts", "ack", "A000000000000"]);
    assert!(
        !o.status.success() && stderr(&o).contains("alerts list --all"),
        "{}",
        stderr(&o)
    );
    let o = run(Path::new(dd), &["alerts", "show", &id]);
    assert!(stdout(&o).contains("acknowledged by ana"), "{}", stdout(&o));
    let acks = crate::harness::sql_one(
        &data,
        "SELECT count(*) FROM alert_actions WHERE action = 'ack'",
    );
    assert_eq!(acks, "1");
}

/// Findings standing in for the fault rules' output: one per injected fault episode (the
/// rules' accuracy on such episodes is the rules tests' business).
fn findings_from_labels(sim: &Simulator) -> Vec<rules::Finding> {
    sim.labels()
        .iter()
        .map(|l| rules::Finding {
            rule: format!("injected_{}", l.fault.as_str().to_lowercase()),
            fault: l.fault.as_str().to_string(),
            device_id: l.device_id.clone(),
            first_ms: l.onset_ms,
            last_ms: l.end_ms.max(l.onset_ms + 60_000),
            severity: rules::Severity::Major,
            class: "hardware".into(),
            owner: "remote".into(),
            title: format!("injected {}", l.fault.as_str()),
            summary: "injected".into(),
            evidence: Vec::new(),
            steps: Vec::new(),
            detected_ms: l.onset_ms,
        })
        .collect()
}

#[test]
fn trend_rules_find_the_bad_cohort_and_the_site_and_nothing_else() {
    let d = tempfile::tempdir().unwrap();
    let sim = Simulator::new(SimConfig {
        devices: 1000,
        duration_ms: 7 * 86_400_000,
        start_ms: T0,
        seed: 11,
        fault_rate: 0.06,
        cohort: Some(Cohort {
            share: 0.05,
            fault: FaultCode::F06,
            rate: 0.5,
        }),
        site_fault: Some(FaultCode::F14),
        ..SimConfig::default()
    })
    .unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut reg = Vec::new();
    wallscope::sim::write_devices_csv(sim.devices(), &mut reg).unwrap();
    std::fs::write(data.join("devices.csv"), &reg).unwrap();
    let mut findings = findings_from_labels(&sim);
    // Repeats: a GFCI that trips three times in a day on five chargers (must fire), twice on
    // three (holds at most: must not start an alert), three times but 30 h apart on one.
    let day3 = T0 + 3 * 86_400_000;
    let mut episode = |dev: &str, at: i64| {
        let mut f = findings[0].clone();
        f.rule = "injected_f09".into();
        f.fault = "F09".into();
        f.device_id = dev.to_string();
        f.first_ms = at;
        f.last_ms = at + 20 * MIN;
        f.detected_ms = at + 20 * MIN;
        findings.push(f);
    };
    for k in 1..=5 {
        for e in 0..3 {
            episode(&format!("wc{k:04}"), day3 + e * 4 * 3_600_000);
        }
    }
    for k in 6..=8 {
        for e in 0..2 {
            episode(&format!("wc{k:04}"), day3 + e * 4 * 3_600_000);
        }
    }
    for e in 0..3 {
        episode("wc0009", day3 + e * 30 * 3_600_000);
    }
    // The store needs telemetry for the clock: one vitals row per device at the end.
    let end = T0 + 7 * 86_400_000;
    let lines: String = sim
        .devices()
        .iter()
        .enumerate()
        .map(|(i, dev)| vitals_line(&dev.device_id, end - 1000, i as u64, 241.0) + "\n")
        .collect();
    std::fs::write(d.path().join("tail.jsonl"), lines).unwrap();
    let o = run(
        Path::new(data.to_str().unwrap()),
        &["import", d.path().join("tail.jsonl").to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    rules::finding::save(&data, &findings).unwrap();
    let (o, state) = evaluate(&data, &Settings::default());
    assert!(o.ticks > 100, "{o:?}");
    let firing: BTreeSet<(String, String)> = state
        .rows
        .iter()
        .filter(|r| r.state == State::Firing)
        .map(|r| (r.rule.clone(), r.key.clone()))
        .collect();

    // The cohort: firmware 25.44.1 with F06, and no other cohort.
    let cohorts: Vec<&(String, String)> = firing
        .iter()
        .filter(|(r, _)| r == "cohort_fault_rate")
        .collect();
    assert!(
        cohorts
            .iter()
            .any(|(_, k)| k == "firmware_version=25.44.1/F06"),
        "the bad firmware cohort did not fire: {cohorts:?}"
    );
    assert!(
        cohorts.iter().all(|(_, k)| k.ends_with("/F06")),
        "a cohort alert on something else: {cohorts:?}"
    );
    let firmware: Vec<_> = cohorts
        .iter()
        .filter(|(_, k)| k.starts_with("firmware_version="))
        .collect();
    assert_eq!(firmware.len(), 1, "{firmware:?}");

    // The site: the one with the injected supply problem, named.
    let site_devices: BTreeSet<&str> = sim
        .labels()
        .iter()
        .filter(|l| l.fault == FaultCode::F14)
        .map(|l| l.device_id.as_str())
        .collect();
    let sites: BTreeSet<String> = sim
        .devices()
        .iter()
        .filter(|d| site_devices.contains(d.device_id.as_str()))
        .map(|d| d.site.clone())
        .collect();
    let site_alerts: BTreeSet<String> = firing
        .iter()
        .filter(|(r, _)| r == "site_grid_anomaly")
        .map(|(_, k)| k.trim_start_matches("site=").to_string())
        .collect();
    let bad_site: BTreeSet<String> = sim
        .devices()
        .iter()
        .filter(|d| site_devices.contains(d.device_id.as_str()))
        .map(|d| d.site.clone())
        .filter(|s| {
            sim.devices()
                .iter()
                .filter(|d| &d.site == s && site_devices.contains(d.device_id.as_str()))
                .count()
                >= 2
        })
        .collect();
    assert_eq!(
        bad_site.len(),
        1,
        "one site gets the grid problem: {sites:?}"
    );
    assert_eq!(site_alerts, bad_site);

    // Repeats: exactly the devices with three injected episodes of one fault beginning
    // within the 24 h before some hourly tick.
    let watermark = end - 1000 - 2 * MIN;
    let mut want: BTreeSet<String> = BTreeSet::new();
    let mut by: BTreeMap<(&str, &str), Vec<i64>> = BTreeMap::new();
    for f in &findings {
        if f.fault != "F00" {
            by.entry((f.device_id.as_str(), f.fault.as_str()))
                .or_default()
                .push(f.first_ms);
        }
    }
    for ((dev, f), t) in by {
        let fires = (T0 / 3_600_000..=watermark / 3_600_000).any(|h| {
            let tick = h * 3_600_000;
            t.iter()
                .filter(|&&x| x >= tick - 86_400_000 && x < tick)
                .count()
                >= 3
        });
        if fires {
            want.insert(format!("{dev}/{f}"));
        }
    }
    let got: BTreeSet<String> = firing
        .iter()
        .filter(|(r, _)| r == "repeat_fault")
        .map(|(_, k)| k.clone())
        .collect();
    for k in 1..=5 {
        assert!(want.contains(&format!("wc{k:04}/F09")), "{want:?}");
    }
    for k in 6..=9 {
        assert!(!want.contains(&format!("wc{k:04}/F09")), "{want:?}");
    }
    assert_eq!(got, want);
}

/// A minimal HTTP receiver: records each POST's idempotency key and checks its signature.
struct Receiver {
    keys: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16, secret: &'static str) -> Receiver {
        Self::start_slow(port, secret, 0)
    }

    /// Answers each request `delay_ms` late (deliveries stay in flight that long).
    fn start_slow(port: u16, secret: &'static str, delay_ms: u64) -> Receiver {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let keys = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (k, s) = (keys.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut c, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Headers, then the body by content-length.
                let (head, body) = loop {
                    let n = c.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break (String::new(), Vec::new());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..at]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse().unwrap())
                            .unwrap_or(0);
                        while buf.len() < at + 4 + len {
                            let n = c.read(&mut chunk).unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        break (head, buf[at + 4..at + 4 + len].to_vec());
                    }
                };
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}:")))
                        .map(|v| v.trim().to_string())
                };
                let sig_ok = header("x-wallscope-signature")
                    == Some(alerts::sink::signature(secret, &body).to_lowercase());
                let status = if sig_ok { "200 OK" } else { "401 Unauthorized" };
                std::thread::sleep(std::time::Duration::from_millis(delay_ms));
                let _ = c.write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                );
                if sig_ok && let Some(key) = header("idempotency-key") {
                    // Headers were lowercased for matching; ids are `N` + lowercase hex.
                    k.lock().unwrap().push(format!("N{}", &key[1..]));
                }
            }
        });
        Receiver {
            keys,
            stop,
            thread: Some(thread),
        }
    }

    fn keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn notification_rows(n: usize) -> Vec<AlertRow> {
    (0..n)
        .map(|i| AlertRow {
            alert_id: alerts::alert_id("handle_overtemp", &format!("wc{i:04}"), T0),
            rule: "handle_overtemp".into(),
            kind: "fault".into(),
            key: format!("wc{i:04}"),
            device_id: Some(format!("wc{i:04}")),
            fault: Some("F06".into()),
            state: State::Firing,
            at_ms: T0 + i as i64,
            started_ms: T0,
            severity: "major".into(),
            owner: "customer".into(),
            title: "Handle over-temperature".into(),
            summary: "handle at 81 °C".into(),
            labels: BTreeMap::new(),
            evidence: "{\"max_handle_c\":81.0}".into(),
            steps: "[]".into(),
            inhibited_by: None,
            silenced_by: None,
            notification_id: Some(format!("N{:016x}", i + 1)),
            recorded_ms: 0,
        })
        .collect()
}

#[test]
fn a_webhook_that_is_down_gets_everything_when_it_returns() {
    use std::sync::atomic::Ordering::Relaxed;
    let d = tempfile::tempdir().unwrap();
    let port = free_port();
    let rows = notification_rows(200);
    let outbox = alerts::sink::notifications(&rows);
    assert_eq!(outbox.len(), 200);
    let cfg = alerts::sink::SinkConfig {
        name: "hook".into(),
        target: alerts::sink::Target::Webhook {
            url: format!("http://127.0.0.1:{port}/alerts"),
            secret: Some("s3cret".into()),
            timeout_ms: 2000,
        },
        max_backlog: 10_000,
        backoff_min_ms: 20,
        backoff_max_ms: 300,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sink = rt.block_on(async {
        alerts::sink::spawn(cfg.clone(), d.path(), outbox.clone(), false).unwrap()
    });
    // Down: every attempt is refused, nothing is lost, the caller is never blocked.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(sink.metrics.failed_attempts.load(Relaxed) > 0);
    assert_eq!(sink.metrics.delivered.load(Relaxed), 0);
    let receiver = Receiver::start(port, "s3cret");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while receiver.keys().len() < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} delivered",
            receiver.keys().len()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    rt.block_on(sink.close(std::time::Duration::from_secs(1)));
    let got: BTreeSet<String> = receiver.keys().into_iter().collect();
    let want: BTreeSet<String> = outbox.iter().map(|n| n.id.clone()).collect();
    assert_eq!(
        got, want,
        "every notification, each with its idempotency key"
    );
    // A restart sends nothing again: the delivered log says what went.
    let before = receiver.keys().len();
    let again = rt.block_on(async { alerts::sink::spawn(cfg, d.path(), outbox, false).unwrap() });
    std::thread::sleep(std::time::Duration::from_millis(500));
    rt.block_on(again.close(std::time::Duration::from_secs(1)));
    assert_eq!(receiver.keys().len(), before);
}

#[test]
fn a_file_sink_keeps_its_backlog_bounded_and_counts_what_it_drops() {
    use std::sync::atomic::Ordering::Relaxed;
    let d = tempfile::tempdir().unwrap();
    let rows = notification_rows(50);
    let outbox = alerts::sink::notifications(&rows);
    let out = d.path().join("notes.jsonl");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = alerts::sink::SinkConfig {
        name: "file".into(),
        target: alerts::sink::Target::File { path: out.clone() },
        max_backlog: 20,
        backoff_min_ms: 10,
        backoff_max_ms: 100,
    };
    let sink = rt.block_on(async { alerts::sink::spawn(cfg, d.path(), outbox, false).unwrap() });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sink.metrics.delivered.load(Relaxed) + sink.metrics.dropped.load(Relaxed) < 50
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let dropped = sink.metrics.dropped.load(Relaxed);
    let delivered = sink.metrics.delivered.load(Relaxed);
    rt.block_on(sink.close(std::time::Duration::from_secs(1)));
    assert_eq!(
        dropped, 30,
        "past the bound, the oldest are dropped and counted"
    );
    assert_eq!(delivered, 20);
    let lines = std::fs::read_to_string(&out).unwrap();
    assert_eq!(lines.lines().count(), 20);
    for l in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["state"], "firing");
        assert!(v["idempotency_key"].as_str().unwrap().starts_with('N'));
    }
}

/// The notification ids the table holds.
fn table_notifications(data: &Path) -> BTreeSet<String> {
    alerts::table::load(data)
        .unwrap()
        .into_iter()
        .filter_map(|r| r.notification_id)
        .collect()
}

#[test]
fn kill_9_during_firing_and_delivery_repeats_no_transition_and_loses_no_notification() {
    use crate::mqtt::{Ingester, TestBroker};
    let d = tempfile::tempdir().unwrap();
    let capture = write_scenario(d.path());
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(d.path().join("devices.csv"), data.join("devices.csv")).unwrap();
    let port = free_port();
    std::fs::write(d.path().join("secret"), "k3y\n").unwrap();
    let cfg = d.path().join("wallscope.toml");
    std::fs::write(
        &cfg,
        format!(
            "[alerts]\nfor_s = 600\nclear_after_s = 1800\ngroup_by = [\"rule\", \"device_id\"]\ngroup_wait_ms = 0\n\
             [[alerts.sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/a\"\n\
             secret_file = \"{}\"\nbackoff_min_ms = 50\nbackoff_max_ms = 200\n\
             [[alerts.sinks]]\nname = \"file\"\nkind = \"file\"\npath = \"notes.jsonl\"\n",
            d.path().join("secret").display()
        ),
    )
    .unwrap();
    // Each delivery takes 300 ms: the kill lands with notifications in flight.
    let receiver = Receiver::start_slow(port, "k3y", 300);
    let broker = TestBroker::start(&d.path().join("broker"));
    let url = broker.url();
    let args = [
        "--broker",
        url.as_str(),
        "--config",
        cfg.to_str().unwrap(),
        "--rules-interval",
        "200ms",
    ];
    let ing = Ingester::spawn(&data, &args);
    ing.wait_log("subscribed with QoS 1", 1);
    let o = run(
        d.path(),
        &[
            "replay",
            capture.to_str().unwrap(),
            "--to",
            &url,
            "--speed",
            "max",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while receiver.keys().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no notification arrived"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ing.kill9();
    let before_restart = receiver.keys().len();

    // Restart with no new data: the sweep judges the stored devices, the stop sends what
    // waits, the sinks deliver what their logs lack.
    let ing = Ingester::spawn(&data, &args);
    ing.wait_log("connected;", 2);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(ing.stop(), "run did not stop cleanly");

    let rows = alerts::table::load(&data).unwrap();
    let mut seen = BTreeSet::new();
    for r in &rows {
        assert!(
            seen.insert((r.alert_id.clone(), r.state)),
            "transition stored twice: {} {:?}",
            r.alert_id,
            r.state
        );
    }
    let lc = lifecycles(&rows);
    use State::*;
    for dev in ["long", "osc"] {
        assert_eq!(
            lc.get(&("supply_voltage".to_string(), dev.to_string())),
            Some(&vec![vec![Pending, Firing, Resolved]]),
            "{lc:?}"
        );
    }
    let want = table_notifications(&data);
    let got: BTreeSet<String> = receiver.keys().into_iter().collect();
    assert!(!want.is_empty());
    assert_eq!(
        got, want,
        "every notification delivered, under its own key ({before_restart} before the kill)"
    );
    // The file sink: every notification at least once, duplicates with the same key.
    let lines = std::fs::read_to_string(data.join("notes.jsonl")).unwrap();
    let keys: BTreeSet<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["idempotency_key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys, want);

    // What live ingest stored equals a batch evaluation of the same findings.
    let copy = d.path().join("batch");
    std::fs::create_dir_all(&copy).unwrap();
    let o = run(
        Path::new(copy.to_str().unwrap()),
        &["import", capture.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::copy(data.join("devices.csv"), copy.join("devices.csv")).unwrap();
    std::fs::create_dir_all(copy.join("findings")).unwrap();
    std::fs::copy(
        data.join(wallscope::model::FINDINGS_FILE),
        copy.join(wallscope::model::FINDINGS_FILE),
    )
    .unwrap();
    let s = settings_for_10min();
    let (_, batch) = evaluate(&copy, &s);
    assert_eq!(event_columns(&batch.rows), event_columns(&rows));
}

#[test]
fn an_mqtt_sink_publishes_every_notification_with_qos_1() {
    use crate::mqtt::{Ingester, TestBroker};
    use std::sync::atomic::Ordering::Relaxed;
    let d = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(&d.path().join("broker"));
    let url = broker.url();
    // The subscriber is `wallscope record` on the alert topic: it writes what arrives.
    let out = d.path().join("alerts.jsonl");
    let rec = Ingester::spawn_cmd(
        &d.path().join("recdata"),
        &[
            "record",
            "--broker",
            &url,
            "--topic",
            "ops/alerts",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    rec.wait_log("subscribed with QoS 1", 1);
    let rows = notification_rows(30);
    let outbox = alerts::sink::notifications(&rows);
    let cfg = alerts::sink::SinkConfig {
        name: "mqtt".into(),
        target: alerts::sink::Target::Mqtt {
            broker: wallscope::ingest::BrokerUrl::parse(&url).unwrap().0,
            topic: "ops/alerts".into(),
            client_id: "alerts-test".into(),
        },
        max_backlog: 1000,
        backoff_min_ms: 20,
        backoff_max_ms: 200,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sink =
        rt.block_on(async { alerts::sink::spawn(cfg, d.path(), outbox.clone(), false).unwrap() });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while sink.metrics.delivered.load(Relaxed) < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker did not ack every notification"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    rt.block_on(sink.close(std::time::Duration::from_secs(1)));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let keys = loop {
        let keys: BTreeSet<String> = std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["topic"], "ops/alerts");
                v["payload"]["idempotency_key"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        if keys.len() >= 30 || std::time::Instant::now() > deadline {
            break keys;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(rec.stop());
    let want: BTreeSet<String> = outbox.iter().map(|n| n.id.clone()).collect();
    assert_eq!(keys, want);
}
