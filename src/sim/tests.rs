//! Simulator tests: determinism, envelope shape, §3 session timings read back from the
//! emitted records, and for every injectable fault the §8 signature on the labelled device
//! (with the same detectors finding nothing on healthy devices).
//!
//! Payloads are read into typed structs: a `serde_json::Value` per message made these tests
//! four times slower than the simulation they check.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::*;
use crate::capture::CaptureRecord;

const START: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z: evening in North America
const VITALS: usize = 0;
const LIFETIME: usize = 1;
const WIFI: usize = 2;
const VERSION: usize = 3;

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

#[derive(Deserialize)]
struct Envelope<T> {
    ts: i64,
    data: T,
}

/// The vitals fields the checks read. The quirk that drops a field never drops these.
#[derive(Deserialize, Debug, Clone)]
struct Vit {
    contactor_closed: bool,
    vehicle_connected: bool,
    session_s: i64,
    grid_v: f64,
    grid_hz: f64,
    vehicle_current_a: f64,
    #[serde(rename = "currentA_a")]
    cur_a: f64,
    #[serde(rename = "currentB_a")]
    cur_b: f64,
    #[serde(rename = "currentC_a")]
    cur_c: f64,
    #[serde(rename = "voltageA_v")]
    volt_a: f64,
    #[serde(rename = "voltageB_v")]
    volt_b: f64,
    #[serde(rename = "voltageC_v")]
    volt_c: f64,
    relay_coil_v: Option<f64>,
    relay_k1_v: Option<f64>,
    pcba_temp_c: f64,
    handle_temp_c: f64,
    uptime_s: i64,
    prox_v: f64,
    session_energy_wh: f64,
    config_status: i64,
    evse_state: i64,
}

impl Vit {
    fn max_out_v(&self) -> f64 {
        self.volt_a.max(self.volt_b).max(self.volt_c)
    }

    fn phase_max_a(&self) -> f64 {
        self.cur_a.max(self.cur_b).max(self.cur_c)
    }
}

#[derive(Deserialize)]
struct Wifi {
    wifi_rssi: i64,
    internet: bool,
}

#[derive(Deserialize)]
struct Lifetime {
    contactor_cycles: i64,
    charge_starts: i64,
    connector_cycles: i64,
    energy_wh: i64,
    uptime_s: i64,
    charging_time_s: i64,
}

#[derive(Deserialize)]
struct Version {
    firmware_version: String,
}

/// A parsed message: envelope time and the charger's data.
struct Msg<T> {
    ts: i64,
    d: T,
}

/// Messages of one kind per device; payloads that do not parse (quirks) are skipped.
fn parse<T: DeserializeOwned>(
    records: &[CaptureRecord],
    kind: usize,
) -> BTreeMap<String, Vec<Msg<T>>> {
    let mut m: BTreeMap<String, Vec<Msg<T>>> = BTreeMap::new();
    for r in records {
        if kind_index(&r.topic) != Some(kind) {
            continue;
        }
        let Some(dev) = r.topic.split('/').nth(1) else {
            continue;
        };
        let Ok(e) = serde_json::from_slice::<Envelope<T>>(&r.payload) else {
            continue;
        };
        m.entry(dev.to_string()).or_default().push(Msg {
            ts: e.ts,
            d: e.data,
        });
    }
    m
}

/// Time spans (first, last sample) of consecutive samples where `pred` holds.
fn runs<T>(ms: &[Msg<T>], pred: impl Fn(&T) -> bool) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut cur: Option<(i64, i64)> = None;
    for m in ms {
        if pred(&m.d) {
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

/// Evidence: (first, last) sample times per detected fault.
type Found = BTreeMap<FaultCode, Vec<(i64, i64)>>;

/// The §8 signatures as simple sample-span rules, with one poll interval of slack where
/// DOMAIN.md asks for it.
fn detect(
    dev: &DeviceInfo,
    vitals: &[Msg<Vit>],
    wifi: &[Msg<Wifi>],
    all_ts: &[i64],
    poll: i64,
) -> Found {
    use FaultCode::*;
    let mut found = Found::new();
    let mut put = |code: FaultCode, spans: Vec<(i64, i64)>, min_count: usize| {
        if !spans.is_empty() && spans.len() >= min_count {
            found.insert(code, spans);
        }
    };
    // F01: closed, live output, < 1 A for ≥ 20 s, at least twice.
    let dead_live = runs(vitals, |v| {
        v.contactor_closed && v.vehicle_current_a < 1.0 && v.max_out_v() >= 0.8 * v.grid_v
    });
    put(F01, long(dead_live, (20_000 - poll).max(1)), 2);
    let waiting = runs(vitals, |v| {
        v.vehicle_connected
            && !v.contactor_closed
            && v.evse_state == 9
            && v.session_energy_wh == 0.0
    });
    put(F02, long(waiting, 10 * MIN), 1);
    put(
        F03,
        long(
            runs(vitals, |v| !v.contactor_closed && v.max_out_v() > 50.0),
            6_000,
        ),
        1,
    );
    put(
        F04,
        long(
            runs(vitals, |v| {
                v.contactor_closed && v.max_out_v() < 0.2 * v.grid_v
            }),
            1,
        ),
        1,
    );
    put(F06, runs(vitals, |v| v.handle_temp_c >= 78.0), 1);
    // F07: loaded voltage drop against the last idle sample before the close, per ampere.
    let mut r_high = Vec::new();
    let mut idle_v = f64::NAN;
    for m in vitals {
        let v = &m.d;
        if !v.contactor_closed {
            idle_v = v.grid_v;
        } else if v.vehicle_current_a >= 20.0 && (idle_v - v.grid_v) / v.vehicle_current_a > 0.15 {
            r_high.push((m.ts, m.ts));
        }
    }
    put(F07, r_high, 2);
    // F09: the contactor opens right after a sample with > 5 A.
    let abrupt: Vec<(i64, i64)> = vitals
        .windows(2)
        .filter(|w| {
            w[0].d.contactor_closed
                && w[0].d.vehicle_current_a > 5.0
                && !w[1].d.contactor_closed
                && w[1].ts - w[0].ts <= 5 * poll / 2
        })
        .map(|w| (w[0].ts, w[1].ts))
        .collect();
    put(F09, abrupt, 2);
    let limit = f64::from(dev.max_current_a) * 1.1 + 1.0;
    put(
        F12,
        long(runs(vitals, |v| v.vehicle_current_a > limit), 1),
        1,
    );
    // F13: a gap while charging hard, after which the uptime has restarted.
    let trips: Vec<(i64, i64)> = vitals
        .windows(2)
        .filter(|w| {
            w[0].d.contactor_closed
                && w[0].d.vehicle_current_a > 10.0
                && w[1].ts - w[0].ts > 3 * poll
                && w[1].d.uptime_s < w[0].d.uptime_s
        })
        .map(|w| (w[0].ts, w[1].ts))
        .collect();
    put(F13, trips, 2);
    let (lo, hi, hz0) = if dev.service_type == "split_phase" {
        (220.0, 254.0, 60.0)
    } else {
        (207.0, 253.0, 50.0)
    };
    put(
        F14,
        long(runs(vitals, |v| !(lo..=hi).contains(&v.grid_v)), MIN),
        1,
    );
    put(
        F15,
        long(runs(vitals, |v| (v.grid_hz - hz0).abs() > 0.5), MIN),
        1,
    );
    // F18: a connected stretch that never closes yet changes state at least 5 times.
    let mut osc = Vec::new();
    let mut seg: Vec<&Msg<Vit>> = Vec::new();
    for (i, m) in vitals.iter().enumerate() {
        if m.d.vehicle_connected {
            seg.push(m);
            if i + 1 < vitals.len() {
                continue;
            }
        }
        if seg.len() > 1 && seg.iter().all(|s| !s.d.contactor_closed) {
            let changes = seg
                .windows(2)
                .filter(|w| w[0].d.evse_state != w[1].d.evse_state)
                .count();
            if changes >= 5 {
                osc.push((seg[0].ts, seg[seg.len() - 1].ts));
            }
        }
        seg.clear();
    }
    put(F18, osc, 1);
    let prox_bad = runs(vitals, |v| {
        v.vehicle_connected && !(1.0..=3.5).contains(&v.prox_v)
    });
    put(F19, long(prox_bad, 1), 1);
    put(
        F20,
        long(runs(wifi, |w| w.wifi_rssi < -80 && !w.internet), 15 * MIN),
        1,
    );
    let resets: Vec<(i64, i64)> = vitals
        .windows(2)
        .filter(|w| w[1].d.uptime_s < w[0].d.uptime_s)
        .map(|w| (w[0].ts, w[1].ts))
        .collect();
    if resets.windows(3).any(|w| w[2].1 - w[0].0 <= 24 * HOUR) {
        put(F22, resets, 3);
    }
    put(
        F23,
        long(runs(vitals, |v| v.config_status != 5), 10 * MIN),
        1,
    );
    let mut sensor = long(
        runs(vitals, |v| !v.contactor_closed && v.phase_max_a() > 1.0),
        MIN,
    );
    // A stuck sensor: the handle reads one value for > 24 h while the board temperature moves.
    let stuck = long(constant_spans(vitals, |v| v.handle_temp_c), 24 * HOUR);
    sensor.extend(stuck.into_iter().filter(|&(a, z)| {
        let pcba = vitals
            .iter()
            .filter(|m| (a..=z).contains(&m.ts))
            .map(|m| m.d.pcba_temp_c);
        let (lo, hi) = pcba.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
        hi - lo >= 0.5
    }));
    put(F24, sensor, 1);
    let gaps: Vec<(i64, i64)> = all_ts
        .windows(2)
        .filter(|w| w[1] - w[0] > 30 * MIN)
        .map(|w| (w[0], w[1]))
        .collect();
    put(F00, gaps, 1);
    found
}

/// Spans over which a reading keeps exactly the same value.
fn constant_spans(ms: &[Msg<Vit>], get: impl Fn(&Vit) -> f64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut cur: Option<(f64, i64, i64)> = None;
    for m in ms {
        let v = get(&m.d);
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
    found: BTreeMap<String, Found>,
}

fn scan(cfg: SimConfig) -> Scan {
    let poll = cfg.poll_interval_ms;
    let (sim, records, _) = run(cfg);
    let vitals = parse::<Vit>(&records, VITALS);
    let wifi = parse::<Wifi>(&records, WIFI);
    let mut all_ts: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for r in &records {
        if let Some(dev) = r.topic.split('/').nth(1) {
            all_ts.entry(dev).or_default().push(r.ts_ms);
        }
    }
    let mut found = BTreeMap::new();
    for dev in sim.devices() {
        let id = dev.device_id.as_str();
        let v = vitals.get(id).map_or(&[][..], Vec::as_slice);
        let w = wifi.get(id).map_or(&[][..], Vec::as_slice);
        let ts = all_ts.get(id).map_or(&[][..], Vec::as_slice);
        found.insert(id.to_string(), detect(dev, v, w, ts, poll));
    }
    Scan { sim, found }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let mut cfg = config(4, 3 * HOUR, 10_000, 7);
    cfg.faults = vec![FaultCode::F01, FaultCode::F14];
    let (mut sim, a, stats_a) = run(cfg.clone());
    let (_, b, stats_b) = run(cfg.clone());
    assert!(!a.is_empty());
    assert_eq!(a, b);
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
        // seq counts every message of a device, whatever its kind; truncated payloads too.
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
    assert!(
        (per_dev(VITALS) - 4_320.0).abs() < 120.0,
        "{}",
        per_dev(VITALS)
    );
    assert!((per_dev(LIFETIME) - 360.0).abs() < 15.0);
    assert!((per_dev(VERSION) - 6.0).abs() <= 1.0);
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
    assert!(
        records
            .iter()
            .any(|r| r.topic.ends_with("/vitals") && !text(r).ends_with("}}")),
        "a truncated vitals payload somewhere"
    );
    let mut schemas: Vec<String> = records
        .iter()
        .filter(|r| r.topic.ends_with("/vitals"))
        .filter_map(|r| serde_json::from_slice::<Value>(&r.payload).ok())
        .map(|v| {
            let keys: Vec<&str> = v["data"]
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            keys.join(",")
        })
        .collect();
    schemas.sort();
    schemas.dedup();
    // relay_coil_v vs K1/K2, with or without reasons, and quirk drops.
    assert!(schemas.len() >= 3, "{schemas:?}");
}

#[test]
fn one_unit_upgrades_its_firmware_mid_run() {
    let (sim, records, _) = run(config(6, 8 * HOUR, 10_000, 21));
    let versions = parse::<Version>(&records, VERSION);
    let vitals = parse::<Vit>(&records, VITALS);
    let mut upgraded = 0;
    for d in sim.devices() {
        let seen: Vec<&str> = versions[&d.device_id]
            .iter()
            .map(|m| m.d.firmware_version.as_str())
            .collect();
        let first = seen[0];
        assert!(
            first.starts_with(&format!("{}+g", d.firmware_version)),
            "{first} vs {}",
            d.firmware_version
        );
        if seen.iter().any(|v| *v != first) {
            upgraded += 1;
            let v = &vitals[&d.device_id];
            assert!(v[0].d.relay_coil_v.is_some() && v[0].d.relay_k1_v.is_none());
            assert!(
                v[v.len() - 1].d.relay_k1_v.is_some() && v[v.len() - 1].d.relay_coil_v.is_none()
            );
            // the upgrade reboots the unit once
            assert_eq!(
                v.windows(2)
                    .filter(|w| w[1].d.uptime_s < w[0].d.uptime_s)
                    .count(),
                1
            );
        }
    }
    assert_eq!(upgraded, 1);
}

#[test]
fn healthy_sessions_follow_the_observed_timeline() {
    // 22:00 UTC to 18:00 UTC: North-American evening plug-ins through next-morning unplugs.
    let mut cfg = config(6, 20 * HOUR, 2_000, 4);
    cfg.start_ms = START - 2 * HOUR;
    cfg.quirks = false;
    let (sim, records, _) = run(cfg);
    let parsed = parse::<Vit>(&records, VITALS);
    let amps = |m: &Msg<Vit>| m.d.vehicle_current_a;
    let mut sessions = 0;
    for d in sim.devices() {
        let Some(vitals) = parsed.get(&d.device_id) else {
            continue;
        };
        let mut i = 0;
        while i < vitals.len() {
            if !vitals[i].d.vehicle_connected {
                i += 1;
                continue;
            }
            let s0 = i;
            while i < vitals.len() && vitals[i].d.vehicle_connected {
                i += 1;
            }
            if i >= vitals.len() || s0 == 0 {
                continue; // cut by the run's edges
            }
            let seg = &vitals[s0..i];
            sessions += 1;
            let plug = seg[0].ts;
            assert!(seg[0].d.session_s <= 3);
            assert_eq!(seg[0].d.session_energy_wh, 0.0);
            assert!(matches!(seg[0].d.evse_state, 2 | 3 | 7 | 9));
            // State 7 only briefly, at plug-in or at the button press.
            for (a, z) in runs(seg, |v| v.evse_state == 7) {
                assert!(z - a <= 4_000, "state 7 for {} ms", z - a);
            }
            let Some(c) = seg.iter().position(|m| m.d.contactor_closed) else {
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
                .find(|m| amps(m) >= 1.0)
                .map(|m| m.ts)
                .expect("current flows");
            let delay = first_amp - close;
            assert!(
                (3_000..=10_000).contains(&delay),
                "first ampere {delay} ms after close"
            );
            let closed: Vec<&Msg<Vit>> = seg[c..]
                .iter()
                .take_while(|m| m.d.contactor_closed)
                .collect();
            let peak = closed.iter().map(|m| amps(m)).fold(0.0, f64::max);
            assert!(
                peak <= f64::from(d.max_current_a) + 0.3,
                "{peak} A on a {} A unit",
                d.max_current_a
            );
            let reach = closed
                .iter()
                .find(|m| amps(m) >= 0.95 * peak)
                .map(|m| m.ts)
                .expect("peak");
            if peak >= 24.0 && closed.len() > 40 {
                // §3: 39–40 A about 33 s after close; lower targets skip the upper plateaus.
                let window = if peak >= 38.0 {
                    25_000..=45_000
                } else {
                    12_000..=45_000
                };
                assert!(
                    window.contains(&(reach - close)),
                    "{peak} A after {} ms",
                    reach - close
                );
                // …through a plateau near 16 A
                assert!(
                    closed
                        .iter()
                        .filter(|m| (14.0..=18.0).contains(&amps(m)))
                        .count()
                        >= 2
                );
                // grid_v sags by I × R_source (0.04–0.09 Ω)
                let mid = closed[closed.len() / 2];
                let r = (seg[c - 1].d.grid_v - mid.d.grid_v) / amps(mid);
                assert!((-0.05..0.15).contains(&r), "r_source {r}");
            }
            // The car is already near zero in the last closed sample.
            assert!(closed.last().is_some_and(|m| amps(m) < 5.0));
            // Energy integrates and never falls, then persists after the unplug.
            let e: Vec<f64> = seg.iter().map(|m| m.d.session_energy_wh).collect();
            assert!(e.windows(2).all(|w| w[1] >= w[0]));
            let after = &vitals[i].d;
            assert_eq!(after.session_energy_wh, e[e.len() - 1]);
            assert_eq!(after.session_s, 0);
            // The button press precedes the unplug.
            let last = &seg[seg.len() - 1].d;
            assert_eq!(last.evse_state, 7, "{last:?}");
            assert!(last.prox_v > 2.5);
        }
    }
    assert!(sessions >= 5, "only {sessions} sessions");
}

#[test]
fn lifetime_counters_track_the_sessions() {
    let mut cfg = config(5, 12 * HOUR, 10_000, 9);
    cfg.quirks = false;
    let (sim, records, _) = run(cfg);
    let parsed = parse::<Lifetime>(&records, LIFETIME);
    for (idx, d) in sim.devices().iter().enumerate() {
        let lt = &parsed[&d.device_id];
        let (a, z) = (&lt[0], &lt[lt.len() - 1]);
        let plan = &sim.plans[idx];
        let plugs = plan
            .sessions
            .iter()
            .filter(|s| s.plug > a.ts && s.plug <= z.ts)
            .count() as i64;
        let closes = plan
            .sessions
            .iter()
            .flat_map(|s| &s.attempts)
            .filter(|x| x.close > a.ts && x.close <= z.ts)
            .count() as i64;
        assert_eq!(
            z.d.connector_cycles - a.d.connector_cycles,
            plugs,
            "{}",
            d.device_id
        );
        assert_eq!(z.d.charge_starts - a.d.charge_starts, closes);
        assert_eq!(z.d.contactor_cycles - a.d.contactor_cycles, closes);
        assert!(z.d.energy_wh >= a.d.energy_wh);
        assert!(z.d.uptime_s > a.d.uptime_s);
        if closes > 0 {
            assert!(z.d.charging_time_s > a.d.charging_time_s);
            assert!(z.d.energy_wh > a.d.energy_wh);
        }
    }
}

#[test]
fn healthy_fleet_shows_no_fault_signature() {
    for (poll, devices, hours, seed) in
        [(10_000, 6, 26, 31), (2_000, 4, 8, 32), (30_000, 8, 30, 33)]
    {
        let sc = scan(config(devices, hours * HOUR, poll, seed));
        assert!(sc.sim.labels().is_empty());
        for (dev, found) in &sc.found {
            assert!(
                found.is_empty(),
                "poll {poll}: healthy {dev} shows {found:?}"
            );
        }
    }
}

/// Injects `code` into a small fleet and checks that its device shows the signature inside
/// the label, and that no other device shows anything.
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
        // F01's 25–31 s closures need polls shorter than its 20 s threshold to be seen whole.
        let poll = if code == FaultCode::F01 {
            2_000
        } else {
            10_000
        };
        check_fault(
            code,
            poll,
            code.min_duration_ms() + 30 * MIN,
            100 + i as u64,
        );
    }
}

#[test]
fn f01_replicates_the_s1_capture() {
    let mut cfg = config(2, 4 * HOUR, 2_000, 77);
    cfg.faults = vec![FaultCode::F01];
    cfg.quirks = false;
    let (sim, records, _) = run(cfg);
    let l = &sim.labels()[0];
    let parsed = parse::<Vit>(&records, VITALS);
    let vitals = &parsed[&l.device_id];
    let dead = long(
        runs(vitals, |v| {
            v.contactor_closed && v.vehicle_current_a < 1.0 && v.volt_b >= 0.8 * v.grid_v
        }),
        20_000,
    );
    assert!(dead.len() >= 2, "{dead:?}");
    for (a, z) in &dead {
        assert!(z - a <= 31_000, "dead closure of {} ms", z - a);
    }
    // …in at least two sessions, in which the energy never moves.
    let sessions = runs(vitals, |v| v.vehicle_connected)
        .into_iter()
        .filter(|&(a, z)| dead.iter().any(|&(x, _)| x >= a && x <= z))
        .count();
    assert!(sessions >= 2);
    assert!(
        vitals
            .iter()
            .filter(|m| m.ts >= l.onset_ms && m.ts <= l.end_ms)
            .all(|m| m.d.session_energy_wh == 0.0)
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
        if f13.contains(&d.device_id.as_str()) {
            assert!(d.max_current_a * 5 > d.breaker_a * 4, "{d:?}");
        } else {
            assert_eq!(d.max_current_a * 5, d.breaker_a * 4, "{d:?}");
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
    let d = SimConfig::default;
    assert!(bad(SimConfig { devices: 0, ..d() }).contains("devices"));
    assert!(
        bad(SimConfig {
            duration_ms: 0,
            ..d()
        })
        .contains("duration_ms")
    );
    assert!(
        bad(SimConfig {
            poll_interval_ms: 1_000,
            ..d()
        })
        .contains("2000..=30000")
    );
    assert!(
        bad(SimConfig {
            fault_rate: 1.5,
            ..d()
        })
        .contains("fault_rate")
    );
    assert!(
        bad(SimConfig {
            fault_rate: f64::NAN,
            ..d()
        })
        .contains("fault_rate")
    );
    assert!(
        bad(SimConfig {
            device_prefix: "a/b".into(),
            ..d()
        })
        .contains("device_prefix")
    );
    assert!(
        bad(SimConfig {
            start_ms: -1,
            ..d()
        })
        .contains("start_ms")
    );
    let too_many = SimConfig {
        devices: 1,
        faults: vec![FaultCode::F01, FaultCode::F02],
        ..d()
    };
    assert!(bad(too_many).contains("only 1 devices"));
    let short = SimConfig {
        duration_ms: 30 * MIN,
        faults: vec![FaultCode::F09],
        ..d()
    };
    assert!(bad(short).contains("F09 needs a duration"));
}

#[test]
fn fault_codes_parse_and_print() {
    for c in FaultCode::ALL {
        assert_eq!(c.to_string().parse::<FaultCode>().ok(), Some(c));
        assert!(c.min_duration_ms() <= 3 * HOUR);
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
    let value_of = |key: &str| {
        data.split(&format!("\"{key}\":"))
            .nth(1)
            .and_then(|after| after.split([',', '}']).next())
            .unwrap_or("")
            .to_string()
    };
    for (key, decimals) in [
        ("grid_v", 1),
        ("grid_hz", 3),
        ("session_energy_wh", 3),
        ("vehicle_current_a", 1),
    ] {
        let num = value_of(key);
        assert_eq!(
            num.split('.').nth(1).map(str::len),
            Some(decimals),
            "{key}={num}"
        );
    }
    for key in [
        "uptime_s",
        "input_thermopile_uv",
        "evse_state",
        "config_status",
        "session_s",
    ] {
        let num = value_of(key);
        assert!(!num.is_empty() && !num.contains('.'), "{key}={num}");
    }
    assert!(data.contains("\"current_alerts\":[]"));
}

/// Throughput probe, not a pass/fail check (performance belongs to benches): 200 chargers
/// for 24 h at 10 s is ~1.7 M vitals. Run with
/// `cargo test --release --lib sim::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let hours: i64 = std::env::var("SIM_HOURS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(24);
    let mut sim = Simulator::new(config(200, hours * HOUR, 10_000, 1)).expect("valid");
    let started = std::time::Instant::now();
    let mut bytes = 0usize;
    let stats = sim
        .run(&mut |r| {
            bytes += r.payload.len() + r.topic.len();
            Ok(())
        })
        .expect("run");
    eprintln!(
        "{stats:?}: {bytes} bytes in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}
