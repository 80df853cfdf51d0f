//! Live-mode benchmark: a simulated fleet publishes its telemetry in real time through one
//! Mosquitto into `wallscope run` with the live rules on, and the run's own counters say
//! whether ingest keeps up and how long findings trail the data they come from.
//!
//! cargo build --release --bins --examples && target/release/examples/e2e_live \
//!     [--devices 200000] [--poll-s 10] [--seconds 120] [--fault-rate 0.02] \
//!     [--faulty 0] [--history-min 180]
//!
//! The fleet is simulated up front (with its faults, starting now, so event time is wall
//! time), then published paced by each message's timestamp: devices / poll-s messages per
//! second. Every second the benchmark reads `ingest-status.json`: rows durable, rule
//! evaluations, `rule_lag_ms_last` — wall time from a batch becoming durable to the end of
//! the evaluation that covered it, i.e. how long a finding trails its evidence landing —
//! and `rule_watermark_ms`, the newest event time each evaluation covered.
//!
//! A simulated fault needs 30 min to 3 h of telemetry before its signature is complete, far
//! longer than a live run. `--faulty N` splits the fleet: N chargers (of `--devices`), every
//! one with a fault, are simulated from `--history-min` before now; their past is imported
//! before `run` starts (what the store of a running deployment holds) and their present is
//! published live with the rest, so signatures complete while the load runs. The other
//! chargers are simulated for the live window only.
//!
//! Alerts go to a file sink (group wait 1 s); a thread tails it. Each firing fault
//! notification is timed two ways: from its finding's `detected_at` (event time of the
//! newest data the detecting evaluation saw: a lower bound of the latency), and from the
//! watermark of the evaluation before it (the evidence that completed the signature landed
//! after that: an upper bound). Event time is wall time here, since the fleet is paced in
//! real time. Alerts for a (rule, device) that `diagnose --store` finds in the imported past
//! are left out, and so are those no earlier live evaluation bounds.
//! Needs `mosquitto` and the release `wallscope` binary beside this example.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wallscope::ingest::BrokerUrl;
use wallscope::ingest::publish::Publisher;
use wallscope::sim::{SimConfig, Simulator};

mod support;
use support::{mosquitto, wallscope_bin};

struct Args {
    devices: usize,
    poll_s: i64,
    seconds: i64,
    fault_rate: f64,
    faulty: usize,
    history_min: i64,
}

fn args() -> Args {
    let mut a = Args {
        devices: 200_000,
        poll_s: 10,
        seconds: 120,
        fault_rate: 0.02,
        faulty: 0,
        history_min: 180,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let val = pair.get(1).expect("every flag takes a value");
        match pair[0].as_str() {
            "--devices" => a.devices = val.parse().unwrap(),
            "--poll-s" => a.poll_s = val.parse().unwrap(),
            "--seconds" => a.seconds = val.parse().unwrap(),
            "--fault-rate" => a.fault_rate = val.parse().unwrap(),
            "--faulty" => a.faulty = val.parse().unwrap(),
            "--history-min" => a.history_min = val.parse().unwrap(),
            f => panic!("unknown flag {f}"),
        }
    }
    a
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let a = args();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    // 1. The fleet, simulated before the clock starts (a little ahead of now, so the
    // schedule begins in the future once generation is done).
    let gen_started = Instant::now();
    // Generation (and the import of the faulty chargers' past: ~10 µs a message) runs ahead
    // of the schedule.
    let lead_ms =
        5_000 + a.devices as i64 / 20 + a.faulty as i64 * a.history_min * 6 / a.poll_s / 10;
    let start_ms = chrono::Utc::now().timestamp_millis() + lead_ms;
    assert!(a.faulty <= a.devices, "--faulty cannot exceed --devices");
    let mut sim = Simulator::new(SimConfig {
        devices: a.devices - a.faulty,
        start_ms,
        duration_ms: a.seconds * 1000,
        seed: 11,
        poll_interval_ms: a.poll_s * 1000,
        fault_rate: a.fault_rate,
        device_prefix: "lv".into(),
        ..SimConfig::default()
    })
    .unwrap();
    let mut msgs: Vec<(i64, String, Vec<u8>)> = Vec::new();
    sim.run(&mut |r| {
        msgs.push((r.ts_ms, r.topic, r.payload));
        Ok(())
    })
    .unwrap();
    let mut reg = Vec::new();
    wallscope::sim::write_devices_csv(sim.devices(), &mut reg).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let mut history = 0u64;
    let mut in_past: std::collections::HashSet<(String, String)> = Default::default();
    if a.faulty > 0 {
        // The faulty chargers: their past into a capture imported before `run`, their
        // present into the live schedule.
        let mut fx = Simulator::new(SimConfig {
            devices: a.faulty,
            start_ms: start_ms - a.history_min * 60_000,
            duration_ms: a.history_min * 60_000 + a.seconds * 1000,
            seed: 12,
            poll_interval_ms: a.poll_s * 1000,
            fault_rate: 1.0,
            device_prefix: "fx".into(),
            ..SimConfig::default()
        })
        .unwrap();
        let past_path = tmp.path().join("past.jsonl");
        let mut past = std::io::BufWriter::new(std::fs::File::create(&past_path).unwrap());
        fx.run(&mut |r| {
            if r.ts_ms < start_ms {
                use std::io::Write;
                history += 1;
                writeln!(past, "{}", r.render())
            } else {
                msgs.push((r.ts_ms, r.topic, r.payload));
                Ok(())
            }
        })
        .unwrap();
        drop(past);
        let mut more = Vec::new();
        wallscope::sim::write_devices_csv(fx.devices(), &mut more).unwrap();
        let body = more.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
        reg.extend_from_slice(&more[body..]);
        let st = Command::new(wallscope_bin())
            .arg("--data-dir")
            .arg(&data)
            .arg("import")
            .arg(&past_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("wallscope binary (cargo build --release first)");
        // Exit 1 means some lines were dead-lettered (the simulator's firmware quirks).
        assert!(st.code().is_some_and(|c| c <= 1), "import failed: {st}");
        // What the past already shows (diagnose, read-only): those alerts are not timed.
        std::fs::write(tmp.path().join("devices.csv"), &reg).unwrap();
        let out = Command::new(wallscope_bin())
            .arg("diagnose")
            .arg("--store")
            .arg(&data)
            .arg("--json")
            .arg("--devices")
            .arg(tmp.path().join("devices.csv"))
            .stderr(Stdio::null())
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                && let (Some(r), Some(d)) = (v["rule"].as_str(), v["device_id"].as_str())
            {
                in_past.insert((r.to_string(), d.to_string()));
            }
        }
    }
    msgs.sort_by_key(|m| m.0);
    if a.faulty == 0 {
        std::fs::write(tmp.path().join("devices.csv"), reg).unwrap();
    }
    eprintln!(
        "simulated {} live messages of {} devices{} in {:.1} s",
        msgs.len(),
        a.devices,
        if a.faulty > 0 {
            format!(
                " ({} faulty, {history} messages of their past {} min imported, showing {} findings)",
                a.faulty,
                a.history_min,
                in_past.len()
            )
        } else {
            String::new()
        },
        gen_started.elapsed().as_secs_f64()
    );

    // 2. Broker and `wallscope run` with the live rules (their default interval) and the
    // alerts, delivered to a JSON Lines file.
    let mq = mosquitto(tmp.path());
    let notes = tmp.path().join("notes.jsonl");
    let cfg = tmp.path().join("wallscope.toml");
    std::fs::write(
        &cfg,
        format!(
            "[alerts]\ngroup_wait_ms = 1000\n[[alerts.sinks]]\nname = \"bench\"\nkind = \"file\"\npath = \"{}\"\n",
            notes.display()
        ),
    )
    .unwrap();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, i64)>>> = Default::default();
    let tail_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tailer = {
        let (seen, stop, notes) = (seen.clone(), tail_stop.clone(), notes.clone());
        std::thread::spawn(move || {
            let mut offset = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let Ok(text) = std::fs::read_to_string(&notes) else {
                    continue;
                };
                let now = chrono::Utc::now().timestamp_millis();
                let Some(done) = text[offset..].rfind('\n') else {
                    continue;
                };
                for line in text[offset..offset + done].lines() {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                        && let Some(id) = v["notification_id"].as_str()
                    {
                        seen.lock().unwrap().push((id.to_string(), now));
                    }
                }
                offset += done + 1;
            }
        })
    };
    // E2E_LOG=FILE keeps the run's log (with RUST_LOG=wallscope=debug: each live
    // evaluation's breakdown).
    let ws_log = match std::env::var_os("E2E_LOG") {
        Some(p) => Stdio::from(std::fs::File::create(p).expect("E2E_LOG is writable")),
        None => Stdio::null(),
    };
    let mut ws = Command::new(wallscope_bin())
        .arg("--data-dir")
        .arg(&data)
        .args([
            "run",
            "--broker",
            &format!("mqtt://127.0.0.1:{}", mq.port),
            "--client-id",
            "bench-live",
            "--status-interval-s",
            "0",
            "--config",
        ])
        .arg(&cfg)
        .arg("--devices")
        .arg(tmp.path().join("devices.csv"))
        .stdout(Stdio::null())
        .stderr(ws_log)
        .spawn()
        .expect("wallscope binary (cargo build --release first)");
    while wallscope::ingest::read_status(&data).is_none_or(|s| s.connections == 0) {
        std::thread::sleep(Duration::from_millis(50));
    }

    // 3. Publish on schedule while a sampler reads the counters every second.
    let n = msgs.len() as u64;
    let broker = BrokerUrl::parse(&format!("mqtt://127.0.0.1:{}", mq.port))
        .unwrap()
        .0;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let wall0 = Instant::now();
    let event0 = start_ms;
    let sampler_data = data.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut lags = Vec::new();
        let mut marks = Vec::new();
        let mut seen_evals = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            if let Some(s) = wallscope::ingest::read_status(&sampler_data)
                && s.rule_evaluations > seen_evals
            {
                seen_evals = s.rule_evaluations;
                lags.push(s.rule_lag_ms_last);
                marks.push(s.rule_watermark_ms);
            }
        }
        (lags, marks)
    });
    let (late_ms, published_s) = rt.block_on(async {
        // Wait for the schedule's start (generation ran ahead of it).
        let wait = (start_ms - chrono::Utc::now().timestamp_millis()).max(0);
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        let t = tokio::time::Instant::now();
        let mut p = Publisher::start(&broker, "bench-live-pub", 1000).unwrap();
        let mut late = Vec::new();
        for (i, (ts, topic, payload)) in msgs.into_iter().enumerate() {
            let due = t + Duration::from_millis((ts - event0).max(0) as u64);
            let now = tokio::time::Instant::now();
            if i % 1000 == 0 {
                late.push(now.saturating_duration_since(due).as_millis() as u64);
            }
            if due > now {
                tokio::time::sleep_until(due).await;
            }
            p.publish(&topic, payload).await.unwrap();
        }
        p.finish(Duration::from_secs(600)).await.unwrap();
        (late, t.elapsed().as_secs_f64())
    });

    // 4. Wait until everything is durable and one more evaluation has covered it.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(s) = wallscope::ingest::read_status(&data) {
            let done = s.received >= n && s.acks_pending == 0;
            last = Some(s);
            if done {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let evals_at_end = last.as_ref().map_or(0, |s| s.rule_evaluations);
    while Instant::now() < deadline
        && wallscope::ingest::read_status(&data).is_some_and(|s| s.rule_evaluations <= evals_at_end)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let drained_s = wall0.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut lags, marks) = sampler.join().unwrap();
    let s = wallscope::ingest::read_status(&data).unwrap();
    let _ = Command::new("kill").arg(ws.id().to_string()).status();
    let _ = ws.wait();
    std::thread::sleep(Duration::from_millis(300));
    tail_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    tailer.join().unwrap();
    let (alert_lat, alert_upper) =
        alert_latencies(&data, &seen.lock().unwrap(), &marks, start_ms, &in_past);
    // The lag of each evaluation seen, in order: where in the run the slow ones fell.
    eprintln!(
        "lag by evaluation (s): {}",
        lags.iter()
            .map(|l| format!("{:.1}", *l as f64 / 1000.0))
            .collect::<Vec<_>>()
            .join(" ")
    );
    lags.sort_unstable();
    let mut late_ms = late_ms;
    late_ms.sort_unstable();

    let rate = a.devices as f64 / a.poll_s as f64;
    println!(
        "| fleet | offered | published in | durable | rule evaluations | mean evaluation | finding lag p50 / p90 / max | findings | publisher behind schedule p99 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {} chargers at {} s polls, {} s | {:.0} msg/s ({} msgs) | {:.1} s | {} rows ({:.0} msg/s over {:.1} s) | {} | {:.0} ms | {} / {} / {} ms | {} | {} ms |",
        a.devices,
        a.poll_s,
        a.seconds,
        rate,
        n,
        published_s,
        s.rows_durable,
        s.received as f64 / drained_s,
        drained_s,
        s.rule_evaluations,
        s.rule_eval_ms as f64 / s.rule_evaluations.max(1) as f64,
        percentile(&lags, 0.5),
        percentile(&lags, 0.9),
        s.rule_lag_ms_max,
        s.findings_new,
        percentile(&late_ms, 0.99),
    );
    if s.rule_errors > 0 {
        println!("rule errors: {}", s.rule_errors);
    }
    println!(
        "alert notifications: {} firing fault alerts from live evaluations ({} evaluations sampled); \
         evidence → notification from the detecting evaluation's newest data (lower bound) p50 {} ms, p99 {} ms, max {} ms; \
         from the previous evaluation's newest data (upper bound) p50 {} ms, p99 {} ms, max {} ms",
        alert_lat.len(),
        marks.len(),
        percentile(&alert_lat, 0.5),
        percentile(&alert_lat, 0.99),
        alert_lat.last().copied().unwrap_or(0),
        percentile(&alert_upper, 0.5),
        percentile(&alert_upper, 0.99),
        alert_upper.last().copied().unwrap_or(0),
    );
}

/// Per firing fault alert delivered live: wall time its notification appeared minus the
/// `detected_at` of the finding that started it (lower bound), and minus the newest
/// watermark sampled before that (upper bound: the evidence landed after the previous
/// evaluation's data). Left out: alerts for a (rule, device) the imported past already
/// shows, and those with no live watermark before their detection. Both sorted.
fn alert_latencies(
    data: &std::path::Path,
    seen: &[(String, i64)],
    marks: &[i64],
    live_from_ms: i64,
    in_past: &std::collections::HashSet<(String, String)>,
) -> (Vec<u64>, Vec<u64>) {
    let rows = wallscope::alerts::table::load(data).unwrap_or_default();
    let findings = wallscope::rules::finding::load(data).unwrap_or_default();
    let (mut lower, mut upper) = (Vec::new(), Vec::new());
    for (id, wall) in seen {
        for r in rows.iter().filter(|r| {
            r.notification_id.as_deref() == Some(id.as_str())
                && r.state == wallscope::alerts::lifecycle::State::Firing
                && r.kind == "fault"
                && r.device_id
                    .as_ref()
                    .is_some_and(|d| !in_past.contains(&(r.rule.clone(), d.clone())))
        }) {
            // The finding the alert started with: same rule and device, first evidence at
            // the alert's start.
            let Some(f) = findings
                .iter()
                .filter(|f| f.rule == r.rule && Some(&f.device_id) == r.device_id.as_ref())
                .min_by_key(|f| (f.first_ms - r.started_ms).abs())
            else {
                continue;
            };
            let Some(prev) = marks
                .iter()
                .copied()
                .filter(|m| *m < f.detected_ms && *m >= live_from_ms)
                .max()
            else {
                continue;
            };
            lower.push((wall - f.detected_ms).max(0) as u64);
            upper.push((wall - prev).max(0) as u64);
        }
    }
    lower.sort_unstable();
    upper.sort_unstable();
    (lower, upper)
}
