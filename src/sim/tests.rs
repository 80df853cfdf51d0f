//! Simulator tests: determinism, envelope shape, §3 session timings read back from the
//! emitted records, and for every injectable fault the §8 signature on the labelled device
//! (with the same detectors finding nothing on healthy devices).

use std::collections::BTreeMap;

use serde_json::Value;

use super::*;
use crate::capture::CaptureRecord;

const START: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z: evening in North America

fn config(devices: usize, duration_ms: i64, poll: i64, seed: u64) -> SimConfig {
    SimConfig {
        devices,
        start_ms: START,
        duration_ms,
        seed,
        poll_interval_ms: poll,
        ..SimConfig::default()
    }
}

fn run(cfg: SimConfig) -> (Simulator, Vec<CaptureRecord>, SimStats) {
    let mut sim = Simulator::new(cfg).expect("valid config");
    let mut out = Vec::new();
    let stats = sim
        .run(&mut |r| {
            out.push(r);
            Ok(())
        })
        .expect("run");
    (sim, out, stats)
}

/// A parsed message: envelope time and the charger's JSON.
struct Msg {
    ts: i64,
    data: Value,
}

/// Parsed payloads per (device, kind index); non-JSON quirk payloads are skipped.
fn parse(records: &[CaptureRecord]) -> BTreeMap<(String, usize), Vec<Msg>> {
    let mut m: BTreeMap<(String, usize), Vec<Msg>> = BTreeMap::new();
    for r in records {
        let Ok(v) = serde_json::from_slice::<Value>(&r.payload) else {
            continue;
        };
        let mut parts = r.topic.split('/');
        let (Some(_), Some(dev), Some(kind)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Some(k) = kind_index(&r.topic) else {
            continue;
        };
        let (Some(ts), Some(data)) = (v["ts"].as_i64(), v.get("data")) else {
            continue;
        };
        let _ = kind;
        m.entry((dev.to_string(), k)).or_default().push(Msg {
            ts,
            data: data.clone(),
        });
    }
    m
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn b(v: &Value, k: &str) -> bool {
    v[k].as_bool().unwrap_or(false)
}

fn max_out_v(v: &Value) -> f64 {
    f(v, "voltageA_v")
        .max(f(v, "voltageB_v"))
        .max(f(v, "voltageC_v"))
}

/// Time spans (first, last sample) of consecutive samples where `pred` holds.
fn runs(ms: &[Msg], pred: impl Fn(&Value) -> bool) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut cur: Option<(i64, i64)> = None;
    for m in ms {
        if pred(&m.data) {
            cur = Some(match cur {
                Some((a, _)) => (a, m.ts),
                None => (m.ts, m.ts),
            });
        } else if let Some(c) = cur.take() {
            out.push(c);
        }
    }
    out.extend(cur);
    out
}

fn long(spans: Vec<(i64, i64)>, min_ms: i64) -> Vec<(i64, i64)> {
    spans.into_iter().filter(|(a, z)| z - a >= min_ms).collect()
}

/// The §8 signatures, as simple sample-span rules. Returns evidence spans per fault.
fn detect(
    dev: &DeviceInfo,
    vitals: &[Msg],
    wifi: &[Msg],
    all_ts: &[i64],
    poll: i64,
) -> BTreeMap<FaultCode, Vec<(i64, i64)>> {
    use FaultCode::*;
    let mut found: BTreeMap<FaultCode, Vec<(i64, i64)>> = BTreeMap::new();
    let mut put = |code: FaultCode, spans: Vec<(i64, i64)>, min_count: usize| {
        if spans.len() >= min_count && !spans.is_empty() {
            found.insert(code, spans);
        }
    };
    let cc = |v: &Value| b(v, "contactor_closed");
    let amps = |v: &Value| f(v, "vehicle_current_a");
    // F01: closed, live output, < 1 A for ≥ 20 s (one poll of slack), at least twice.
    put(
        F01,
        long(
            runs(vitals, |v| {
                cc(v)
                    && amps(v) < 1.0
                    && f(v, "voltageB_v").max(max_out_v(v)) >= 0.8 * f(v, "grid_v")
            }),
            (20_000 - poll).max(1),
        ),
        2,
    );
    put(
        F02,
        long(
            runs(vitals, |v| {
                b(v, "vehicle_connected")
                    && !cc(v)
                    && v["evse_state"] == 9
                    && f(v, "session_energy_wh") == 0.0
            }),
            10 * MIN,
        ),
        1,
    );
    put(
        F03,
        long(runs(vitals, |v| !cc(v) && max_out_v(v) > 50.0), 6_000),
        1,
    );
    put(
        F04,
        long(
            runs(vitals, |v| cc(v) && max_out_v(v) < 0.2 * f(v, "grid_v")),
            1,
        ),
        1,
    );
    put(F06, runs(vitals, |v| f(v, "handle_temp_c") >= 78.0), 1);
    // F07: loaded voltage drop against the last idle sample before the close, per ampere.
    let mut r_high = Vec::new();
    let mut idle_v = f64::NAN;
    for m in vitals {
        if !cc(&m.data) {
            idle_v = f(&m.data, "grid_v");
        } else if amps(&m.data) >= 20.0 && (idle_v - f(&m.data, "grid_v")) / amps(&m.data) > 0.15 {
            r_high.push((m.ts, m.ts));
        }
    }
    put(F07, r_high, 2);
    // F09: the contactor opens right after a sample with > 5 A.
    let mut abrupt = Vec::new();
    for w in vitals.windows(2) {
        if cc(&w[0].data)
            && amps(&w[0].data) > 5.0
            && !cc(&w[1].data)
            && w[1].ts - w[0].ts <= 5 * poll / 2
        {
            abrupt.push((w[0].ts, w[1].ts));
        }
    }
    put(F09, abrupt, 2);
    let limit = f64::from(dev.max_current_a) * 1.1 + 1.0;
    put(F12, long(runs(vitals, |v| amps(v) > limit), 1), 1);
    // F13: a gap while charging hard, and the unit comes back with its uptime reset.
    let mut trips = Vec::new();
    for w in vitals.windows(2) {
        if cc(&w[0].data)
            && amps(&w[0].data) > 10.0
            && w[1].ts - w[0].ts > 3 * poll
            && f(&w[1].data, "uptime_s") < f(&w[0].data, "uptime_s")
        {
            trips.push((w[0].ts, w[1].ts));
        }
    }
    put(F13, trips, 2);
    let (lo, hi, hz0) = if dev.service_type == "split_phase" {
        (220.0, 254.0, 60.0)
    } else {
        (207.0, 253.0, 50.0)
    };
    put(
        F14,
        long(runs(vitals, |v| !(lo..=hi).contains(&f(v, "grid_v"))), MIN),
        1,
    );
    put(
        F15,
        long(runs(vitals, |v| (f(v, "grid_hz") - hz0).abs() > 0.5), MIN),
        1,
    );
    // F18: a connected stretch that never closes yet changes state at least 5 times.
    let mut osc = Vec::new();
    let mut seg: Vec<&Msg> = Vec::new();
    for m in vitals.iter().chain(std::iter::once(&Msg {
        ts: i64::MAX,
        data: Value::Null,
    })) {
        if b(&m.data, "vehicle_connected") {
            seg.push(m);
            continue;
        }
        if seg.len() > 1 && seg.iter().all(|s| !cc(&s.data)) {
            let changes = seg
                .windows(2)
                .filter(|w| w[0].data["evse_state"] != w[1].data["evse_state"])
                .count();
            if changes >= 5 {
                osc.push((seg[0].ts, seg[seg.len() - 1].ts));
            }
        }
        seg.clear();
    }
    put(F18, osc, 1);
    put(
        F19,
        long(
            runs(vitals, |v| {
                b(v, "vehicle_connected") && !(1.0..=3.5).contains(&f(v, "prox_v"))
            }),
            1,
        ),
        1,
    );
    put(
        F20,
        long(
            runs(wifi, |v| {
                f(v, "wifi_rssi") < -80.0 && v["internet"] == false
            }),
            15 * MIN,
        ),
        1,
    );
    let resets: Vec<(i64, i64)> = vitals
        .windows(2)
        .filter(|w| f(&w[1].data, "uptime_s") < f(&w[0].data, "uptime_s"))
        .map(|w| (w[0].ts, w[1].ts))
        .collect();
    if resets.windows(3).any(|w| w[2].1 - w[0].0 <= 24 * HOUR) {
        put(F22, resets, 3);
    }
    put(
        F23,
        long(runs(vitals, |v| v["config_status"] != 5), 10 * MIN),
        1,
    );
    let mut sensor = long(
        runs(vitals, |v| {
            !cc(v)
                && f(v, "currentA_a")
                    .max(f(v, "currentB_a"))
                    .max(f(v, "currentC_a"))
                    > 1.0
        }),
        MIN,
    );
    let stuck = long(runs_const(vitals, "handle_temp_c"), 24 * HOUR);
    sensor.extend(stuck);
    put(F24, sensor, 1);
    let gaps: Vec<(i64, i64)> = all_ts
        .windows(2)
        .filter(|w| w[1] - w[0] > 30 * MIN)
        .map(|w| (w[0], w[1]))
        .collect();
    put(F00, gaps, 1);
    found
}

/// Spans over which `key` keeps exactly the same value.
fn runs_const(ms: &[Msg], key: &str) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut cur: Option<(f64, i64, i64)> = None;
    for m in ms {
        let v = f(&m.data, key);
        if v.is_nan() {
            continue;
        }
        cur = match cur {
            Some((x, a, _)) if x == v => Some((x, a, m.ts)),
            Some((_, a, z)) => {
                out.push((a, z));
                Some((v, m.ts, m.ts))
            }
            None => Some((v, m.ts, m.ts)),
        };
    }
    if let Some((_, a, z)) = cur {
        out.push((a, z));
    }
    out
}

struct Scan {
    sim: Simulator,
    found: BTreeMap<String, BTreeMap<FaultCode, Vec<(i64, i64)>>>,
}

fn scan(cfg: SimConfig) -> Scan {
    let poll = cfg.poll_interval_ms;
    let (sim, records, _) = run(cfg);
    let parsed = parse(&records);
    let mut found = BTreeMap::new();
    for dev in sim.devices() {
        let id = dev.device_id.clone();
        let empty = Vec::new();
        let vitals = parsed.get(&(id.clone(), 0)).unwrap_or(&empty);
        let wifi = parsed.get(&(id.clone(), 2)).unwrap_or(&empty);
        let prefix = format!("wc/{id}/");
        let all_ts: Vec<i64> = records
            .iter()
            .filter(|r| r.topic.starts_with(&prefix))
            .map(|r| r.ts_ms)
            .collect();
        found.insert(id, detect(dev, vitals, wifi, &all_ts, poll));
    }
    Scan { sim, found }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let mut cfg = config(4, 3 * HOUR, 10_000, 7);
    cfg.faults = vec![FaultCode::F01, FaultCode::F14];
    let (mut sim, a, stats_a) = run(cfg.clone());
    let (_, b2, stats_b) = run(cfg.clone());
    assert!(!a.is_empty());
    assert_eq!(a, b2);
    assert_eq!(stats_a, stats_b);
    // Running the same simulator again replays the same plan.
    let mut again = Vec::new();
    sim.run(&mut |r| {
        again.push(r);
        Ok(())
    })
    .expect("second run");
    assert_eq!(a, again);
    cfg.seed = 8;
    let (_, c, _) = run(cfg);
    assert_ne!(a, c);
}

#[test]
fn payloads_are_enveloped_json_in_time_order() {
    let (sim, records, stats) = run(config(6, 6 * HOUR, 5_000, 3));
    assert_eq!(stats.messages as usize, records.len());
    assert_eq!(stats.per_kind.iter().sum::<u64>(), stats.messages);
    let mut bad = 0u64;
    let mut seqs: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_ts = i64::MIN;
    for r in &records {
        assert!(r.ts_ms >= last_ts, "records out of receive-time order");
        last_ts = r.ts_ms;
        let parts: Vec<&str> = r.topic.split('/').collect();
        assert_eq!(parts.len(), 3, "{}", r.topic);
        assert_eq!(parts[0], "wc");
        assert!(sim.devices().iter().any(|d| d.device_id == parts[1]));
        assert!(kind_index(&r.topic).is_some(), "{}", r.topic);
        // seq counts every message of a device, whatever its kind.
        let next = seqs.entry(parts[1].to_string()).or_insert(0);
        let text = String::from_utf8(r.payload.clone()).expect("payload is UTF-8");
        let seq_here: u64 = text
            .split(",\"seq\":")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse().ok())
            .expect("envelope seq");
        assert_eq!(seq_here, *next, "{text}");
        *next += 1;
        match serde_json::from_slice::<Value>(&r.payload) {
            Ok(v) => {
                let ts = v["ts"].as_i64().expect("integer ts");
                assert!(v["seq"].is_u64());
                assert!(v["data"].is_object());
                assert_eq!(v.as_object().map(|o| o.len()), Some(3));
                assert!(
                    (5..=80).contains(&(r.ts_ms - ts)),
                    "latency {}",
                    r.ts_ms - ts
                );
            }
            Err(_) => bad += 1,
        }
    }
    assert!(
        bad <= stats.quirk_payloads,
        "{bad} unparsable, {} quirks",
        stats.quirk_payloads
    );
    assert!(stats.timeouts > 0, "quirks on: some polls time out");
    // Vitals every 5 s, lifetime and wifi every minute, version hourly plus one at start.
    let per_dev = |k: usize| stats.per_kind[k] as f64 / 6.0;
    assert!((per_dev(0) - 4_320.0).abs() < 120.0, "{}", per_dev(0));
    assert!((per_dev(1) - 360.0).abs() < 15.0);
    assert!((per_dev(3) - 6.0).abs() <= 1.0);
}

#[test]
fn without_quirks_every_payload_is_clean_json() {
    let mut cfg = config(5, 4 * HOUR, 10_000, 11);
    cfg.quirks = false;
    let (_, records, stats) = run(cfg);
    assert_eq!(stats.quirk_payloads, 0);
    assert_eq!(stats.timeouts, 0);
    for r in &records {
        let v: Value = serde_json::from_slice(&r.payload).expect("clean JSON");
        assert!(v["data"].is_object());
    }
}

#[test]
fn quirks_show_up_in_a_big_enough_run() {
    let (_, records, stats) = run(config(8, 12 * HOUR, 10_000, 5));
    let text = |r: &CaptureRecord| String::from_utf8_lossy(&r.payload).into_owned();
    assert!(stats.quirk_payloads > 0);
    assert!(
        records.iter().any(|r| text(r).contains(":nan")),
        "a bare nan somewhere"
    );
    let fields: Vec<String> = records
        .iter()
        .filter(|r| r.topic.ends_with("/vitals"))
        .filter_map(|r| serde_json::from_slice::<Value>(&r.payload).ok())
        .map(|v| {
            let mut keys: Vec<&String> = v["data"]
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            keys.sort();
            keys.iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    // Several vitals schemas: relay_coil_v vs K1/K2, with or without reasons, quirk drops.
    let mut kinds = fields.clone();
    kinds.sort();
    kinds.dedup();
    assert!(kinds.len() >= 3, "{kinds:?}");
}

#[test]
fn one_unit_upgrades_its_firmware_mid_run() {
    let (sim, records, _) = run(config(6, 8 * HOUR, 10_000, 21));
    let parsed = parse(&records);
    let mut upgraded = 0;
    for d in sim.devices() {
        let versions: Vec<String> = parsed
            .get(&(d.device_id.clone(), 3))
            .map(|v| {
                v.iter()
                    .filter_map(|m| m.data["firmware_version"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let first = versions.first().cloned().unwrap_or_default();
        assert!(
            first.starts_with(&d.firmware_version),
            "{first} vs {}",
            d.firmware_version
        );
        if versions.iter().any(|v| *v != first) {
            upgraded += 1;
            let vitals = &parsed[&(d.device_id.clone(), 0)];
            assert!(
                vitals
                    .first()
                    .is_some_and(|m| m.data.get("relay_coil_v").is_some())
            );
            assert!(
                vitals
                    .last()
                    .is_some_and(|m| m.data.get("relay_k1_v").is_some())
            );
        }
    }
    assert_eq!(upgraded, 1);
}

#[test]
fn healthy_sessions_follow_the_observed_timeline() {
    // 22:00 UTC: the window covers the North-American evening, when most sessions start.
    let mut cfg = config(8, 12 * HOUR, 2_000, 4);
    cfg.start_ms = START - 2 * HOUR;
    cfg.quirks = false;
    let (sim, records, _) = run(cfg);
    let parsed = parse(&records);
    let mut sessions = 0;
    for d in sim.devices() {
        let Some(vitals) = parsed.get(&(d.device_id.clone(), 0)) else {
            continue;
        };
        let mut i = 0;
        while i < vitals.len() {
            if !b(&vitals[i].data, "vehicle_connected") {
                i += 1;
                continue;
            }
            let s0 = i;
            while i < vitals.len() && b(&vitals[i].data, "vehicle_connected") {
                i += 1;
            }
            let seg = &vitals[s0..i];
            if i >= vitals.len() || s0 == 0 {
                continue; // cut by the run's edges
            }
            sessions += 1;
            let plug = seg[0].ts;
            assert!(seg[0].data["session_s"].as_i64().is_some_and(|s| s <= 3));
            assert_eq!(f(&seg[0].data, "session_energy_wh"), 0.0);
            assert!(matches!(
                seg[0].data["evse_state"].as_i64(),
                Some(2 | 3 | 7 | 9)
            ));
            // state 7 only briefly, at plug-in or at the button press
            for r in runs(seg, |v| v["evse_state"] == 7) {
                assert!(r.1 - r.0 <= 4_000, "state 7 for {} ms", r.1 - r.0);
            }
            let Some(c) = seg.iter().position(|m| b(&m.data, "contactor_closed")) else {
                continue;
            };
            let close = seg[c].ts;
            assert!(
                (2_000..=34_000).contains(&(close - plug)),
                "close {} ms after plug-in",
                close - plug
            );
            let first_amp = seg[c..]
                .iter()
                .find(|m| amps_of(m) >= 1.0)
                .map(|m| m.ts)
                .expect("current flows");
            let delay = first_amp - close;
            assert!(
                (3_000..=10_000).contains(&delay),
                "first ampere {delay} ms after close"
            );
            // reaches its steady level within ~45 s, through a plateau near 16 A when above it
            let closed: Vec<&Msg> = seg[c..]
                .iter()
                .take_while(|m| b(&m.data, "contactor_closed"))
                .collect();
            let peak = closed.iter().map(|m| amps_of(m)).fold(0.0, f64::max);
            assert!(
                peak <= f64::from(d.max_current_a) + 0.3,
                "{peak} A on a {} A unit",
                d.max_current_a
            );
            let reach = closed
                .iter()
                .find(|m| amps_of(m) >= 0.95 * peak)
                .map(|m| m.ts)
                .expect("peak");
            if peak >= 24.0 && closed.len() > 40 {
                assert!(
                    (20_000..=50_000).contains(&(reach - close)),
                    "target after {} ms",
                    reach - close
                );
                assert!(
                    closed
                        .iter()
                        .filter(|m| (14.0..=18.0).contains(&amps_of(m)))
                        .count()
                        >= 2
                );
            }
            // the last closed sample shows the car already near zero
            let last = closed.last().expect("closed");
            assert!(amps_of(last) < 5.0);
            // energy integrates and never falls during the session, then persists after unplug
            let e: Vec<f64> = seg
                .iter()
                .map(|m| f(&m.data, "session_energy_wh"))
                .collect();
            assert!(e.windows(2).all(|w| w[1] >= w[0]));
            if let Some(after) = vitals.get(i) {
                assert_eq!(f(&after.data, "session_energy_wh"), e[e.len() - 1]);
                assert_eq!(after.data["session_s"], 0);
            }
            // the button press precedes the unplug
            assert_eq!(
                seg[seg.len() - 1].data["evse_state"],
                7,
                "{}",
                seg[seg.len() - 1].data
            );
            assert!(f(&seg[seg.len() - 1].data, "prox_v") > 2.5);
            // grid sags under load by I × R_source (0.04–0.09 Ω)
            if peak >= 24.0 {
                let idle = f(&seg[c - 1].data, "grid_v");
                let loaded = f(&closed[closed.len() / 2].data, "grid_v");
                let r = (idle - loaded) / amps_of(closed[closed.len() / 2]);
                assert!((-0.05..0.15).contains(&r), "r_source {r}");
            }
        }
    }
    assert!(sessions >= 3, "only {sessions} sessions");
}

fn amps_of(m: &Msg) -> f64 {
    f(&m.data, "vehicle_current_a")
}

#[test]
fn lifetime_counters_track_the_sessions() {
    let mut cfg = config(5, 12 * HOUR, 10_000, 9);
    cfg.quirks = false;
    let (sim, records, _) = run(cfg);
    let parsed = parse(&records);
    for (idx, d) in sim.devices().iter().enumerate() {
        let lt = &parsed[&(d.device_id.clone(), 1)];
        let (a, z) = (&lt[0], &lt[lt.len() - 1]);
        let delta = |k: &str| f(&z.data, k) - f(&a.data, k);
        let plan = &sim.plans[idx];
        let plugs = plan
            .sessions
            .iter()
            .filter(|s| s.plug > a.ts && s.plug <= z.ts)
            .count() as f64;
        let closes = plan
            .sessions
            .iter()
            .flat_map(|s| &s.attempts)
            .filter(|x| x.close > a.ts && x.close <= z.ts)
            .count() as f64;
        assert_eq!(delta("connector_cycles"), plugs, "{}", d.device_id);
        assert_eq!(delta("charge_starts"), closes);
        assert_eq!(delta("contactor_cycles"), closes);
        assert!(delta("energy_wh") >= 0.0);
        assert!(delta("uptime_s") > 0.0);
        if closes > 0.0 {
            assert!(delta("charging_time_s") > 0.0);
            assert!(delta("energy_wh") > 0.0);
        }
    }
}

#[test]
fn healthy_fleet_shows_no_fault_signature() {
    for (poll, seed) in [(10_000, 31), (2_000, 32), (30_000, 33)] {
        let hours = if poll == 2_000 { 12 } else { 30 };
        let sc = scan(config(8, hours * HOUR, poll, seed));
        assert!(sc.sim.labels().is_empty());
        for (dev, found) in &sc.found {
            assert!(
                found.is_empty(),
                "poll {poll}: healthy {dev} shows {found:?}"
            );
        }
    }
}

/// Injects `code` into a small fleet and checks its device shows the signature inside the
/// label, and no other device shows anything.
fn check_fault(code: FaultCode, poll: i64, duration_ms: i64, seed: u64) {
    let mut cfg = config(3, duration_ms, poll, seed);
    cfg.faults = vec![code];
    let sc = scan(cfg);
    let labels = sc.sim.labels();
    assert_eq!(labels.len(), 1, "{code}: {labels:?}");
    let l = &labels[0];
    assert_eq!(l.fault, code);
    assert!(l.onset_ms < l.end_ms, "{l:?}");
    assert!(
        l.onset_ms >= START && l.end_ms <= START + duration_ms,
        "{l:?}"
    );
    for (dev, found) in &sc.found {
        if *dev == l.device_id {
            let spans = found
                .get(&code)
                .unwrap_or_else(|| panic!("{code} not visible on {dev}: {found:?} {l:?}"));
            let slack = 3 * poll + 2 * MIN;
            assert!(
                spans
                    .iter()
                    .any(|&(a, z)| z >= l.onset_ms - slack && a <= l.end_ms + slack),
                "{code}: evidence {spans:?} outside label {l:?}"
            );
        } else {
            assert!(found.is_empty(), "{code}: healthy {dev} shows {found:?}");
        }
    }
}

#[test]
fn every_fault_recipe_shows_its_signature() {
    for (i, code) in FaultCode::ALL.iter().copied().enumerate() {
        let poll = if code == FaultCode::F01 {
            2_000
        } else {
            10_000
        };
        let duration = code.min_duration_ms() + 30 * MIN;
        check_fault(code, poll, duration, 100 + i as u64);
    }
}

#[test]
fn f01_replicates_the_s1_capture() {
    let mut cfg = config(2, 4 * HOUR, 2_000, 77);
    cfg.faults = vec![FaultCode::F01];
    cfg.quirks = false;
    let (sim, records, _) = run(cfg);
    let l = &sim.labels()[0];
    let parsed = parse(&records);
    let vitals = &parsed[&(l.device_id.clone(), 0)];
    let dead = long(
        runs(vitals, |v| {
            b(v, "contactor_closed")
                && f(v, "vehicle_current_a") < 1.0
                && f(v, "voltageB_v") >= 0.8 * f(v, "grid_v")
        }),
        20_000,
    );
    assert!(dead.len() >= 2, "{dead:?}");
    for (a, z) in &dead {
        assert!(z - a <= 31_000, "dead closure of {} ms", z - a);
    }
    // …in at least two sessions, and energy never moves in them
    let sessions = runs(vitals, |v| b(v, "vehicle_connected"))
        .into_iter()
        .filter(|&(a, z)| dead.iter().any(|&(x, _)| x >= a && x <= z))
        .count();
    assert!(sessions >= 2);
    assert!(
        vitals
            .iter()
            .filter(|m| m.ts >= l.onset_ms && m.ts <= l.end_ms)
            .all(|m| f(&m.data, "session_energy_wh") == 0.0)
    );
}

#[test]
fn stuck_sensor_variant_needs_a_long_run() {
    check_fault(FaultCode::F24, 30_000, 31 * HOUR, 55);
}

#[test]
fn fault_rate_spreads_random_faults() {
    let mut cfg = config(40, 6 * HOUR, 10_000, 12);
    cfg.fault_rate = 0.25;
    cfg.faults = vec![FaultCode::F09];
    let sim = Simulator::new(cfg).expect("valid");
    let mut devices: Vec<&str> = sim.labels().iter().map(|l| l.device_id.as_str()).collect();
    devices.sort();
    devices.dedup();
    assert_eq!(devices.len(), 10);
    assert!(sim.labels().iter().any(|l| l.fault == FaultCode::F09));
    // F13 units are mis-commissioned on purpose; every other unit follows the 80 % rule.
    let f13: Vec<&str> = sim
        .labels()
        .iter()
        .filter(|l| l.fault == FaultCode::F13)
        .map(|l| l.device_id.as_str())
        .collect();
    for d in sim.devices() {
        if !f13.contains(&d.device_id.as_str()) {
            assert_eq!(d.max_current_a * 5, d.breaker_a * 4, "{d:?}");
        } else {
            assert!(d.max_current_a * 5 > d.breaker_a * 4);
        }
    }
}

#[test]
fn config_errors_say_what_to_fix() {
    let bad = |c: SimConfig| {
        Simulator::new(c)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(
        bad(SimConfig {
            devices: 0,
            ..SimConfig::default()
        })
        .contains("devices")
    );
    assert!(
        bad(SimConfig {
            duration_ms: 0,
            ..SimConfig::default()
        })
        .contains("duration_ms")
    );
    assert!(
        bad(SimConfig {
            poll_interval_ms: 1_000,
            ..SimConfig::default()
        })
        .contains("2000..=30000")
    );
    assert!(
        bad(SimConfig {
            fault_rate: 1.5,
            ..SimConfig::default()
        })
        .contains("fault_rate")
    );
    assert!(
        bad(SimConfig {
            fault_rate: f64::NAN,
            ..SimConfig::default()
        })
        .contains("fault_rate")
    );
    assert!(
        bad(SimConfig {
            device_prefix: "a/b".into(),
            ..SimConfig::default()
        })
        .contains("device_prefix")
    );
    assert!(
        bad(SimConfig {
            start_ms: -1,
            ..SimConfig::default()
        })
        .contains("start_ms")
    );
    let too_many = SimConfig {
        devices: 1,
        faults: vec![FaultCode::F01, FaultCode::F02],
        ..SimConfig::default()
    };
    assert!(bad(too_many).contains("only 1 devices"));
    let short = SimConfig {
        duration_ms: 30 * MIN,
        faults: vec![FaultCode::F09],
        ..SimConfig::default()
    };
    assert!(bad(short).contains("F09 needs a duration"));
}

#[test]
fn fault_codes_parse_and_print() {
    for c in FaultCode::ALL {
        assert_eq!(c.to_string().parse::<FaultCode>().ok(), Some(c));
    }
    assert_eq!(" f07 ".parse::<FaultCode>().ok(), Some(FaultCode::F07));
    let e = "F99"
        .parse::<FaultCode>()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("F99") && e.contains("F24"), "{e}");
}

#[test]
fn csv_files_have_their_headers_and_rows() {
    let mut cfg = config(5, 3 * HOUR, 10_000, 2);
    cfg.faults = vec![FaultCode::F14, FaultCode::F02];
    let sim = Simulator::new(cfg).expect("valid");
    let mut d = Vec::new();
    write_devices_csv(sim.devices(), &mut d).expect("write");
    let d = String::from_utf8(d).expect("utf8");
    let lines: Vec<&str> = d.lines().collect();
    assert_eq!(
        lines[0],
        "device_id,service_type,breaker_a,max_current_a,part_number,site,installer,commissioned_at,firmware_version"
    );
    assert_eq!(lines.len(), 6);
    assert!(lines[1].starts_with("wc0001,"));
    assert!(lines[1..].iter().all(|l| l.split(',').count() == 9), "{d}");
    let mut l = Vec::new();
    write_labels_csv(sim.labels(), &mut l).expect("write");
    let l = String::from_utf8(l).expect("utf8");
    let rows: Vec<&str> = l.lines().collect();
    assert_eq!(rows[0], "device_id,fault,onset,end");
    assert_eq!(rows.len(), 3);
    for row in &rows[1..] {
        let cols: Vec<&str> = row.split(',').collect();
        assert!(cols[2].ends_with('Z') && cols[3].ends_with('Z'), "{row}");
        assert!(crate::capture::parse_rfc3339_ms(cols[2]).is_some());
    }
}

#[test]
fn numbers_are_formatted_like_the_captures() {
    let mut cfg = config(3, 2 * HOUR, 10_000, 6);
    cfg.quirks = false;
    let (_, records, _) = run(cfg);
    let v = records
        .iter()
        .find(|r| r.topic.ends_with("/vitals"))
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .expect("a vitals message");
    let data = &v[v.find("\"data\":").map_or(0, |i| i + 7)..];
    assert!(data.starts_with("{\"contactor_closed\":"), "{data}");
    for (key, decimals) in [
        ("grid_v", 1),
        ("grid_hz", 3),
        ("session_energy_wh", 3),
        ("vehicle_current_a", 1),
    ] {
        let after = data.split(&format!("\"{key}\":")).nth(1).expect(key);
        let num = after.split([',', '}']).next().unwrap_or("");
        let frac = num.split('.').nth(1).unwrap_or("");
        assert_eq!(frac.len(), decimals, "{key}={num}");
    }
    for key in [
        "uptime_s",
        "input_thermopile_uv",
        "evse_state",
        "config_status",
        "session_s",
    ] {
        let after = data.split(&format!("\"{key}\":")).nth(1).expect(key);
        let num = after.split([',', '}']).next().unwrap_or("");
        assert!(!num.contains('.'), "{key}={num}");
    }
    assert!(data.contains("\"current_alerts\":[]"));
}

#[test]
#[ignore]
fn debug_dump() {
    let mut cfg = config(20, 5 * HOUR, 10_000, 4);
    cfg.faults = FaultCode::ALL.to_vec();
    let (sim, records, stats) = run(cfg);
    eprintln!("{stats:?}");
    let mut w = std::fs::File::create("/tmp/sim_labels.csv").expect("f");
    write_labels_csv(sim.labels(), &mut w).expect("w");
    let mut w = std::fs::File::create("/tmp/sim_devices.csv").expect("f");
    write_devices_csv(sim.devices(), &mut w).expect("w");
    let mut w = std::fs::File::create("/tmp/sim_dump.jsonl").expect("f");
    use std::io::Write as _;
    for r in &records {
        writeln!(w, "{}", r.render()).expect("w");
    }
}
