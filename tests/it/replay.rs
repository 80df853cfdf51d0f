//! Capture and replay against a real broker (Mosquitto per test, the embedded broker where
//! it is absent): replay → record is byte-exact; a capture replayed into `run` gives the
//! findings `diagnose` gives; an exported case file reproduces its findings; a killed
//! recorder leaves readable files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wallscope::capture::CaptureRecord;
use wallscope::sim::{FaultCode, SimConfig, Simulator};

use crate::harness::{run, stderr, stdout};
use crate::mqtt::{Ingester, TestBroker};

/// Writes a simulated fleet as a capture (and its registry beside it).
fn simulate(dir: &Path, cfg: SimConfig) -> PathBuf {
    let path = dir.join("sim.jsonl");
    let mut sim = Simulator::new(cfg).unwrap();
    let mut text = String::new();
    sim.run(&mut |r| {
        text.push_str(&r.render());
        text.push('\n');
        Ok(())
    })
    .unwrap();
    std::fs::write(&path, text).unwrap();
    let mut reg = Vec::new();
    wallscope::sim::write_devices_csv(sim.devices(), &mut reg).unwrap();
    std::fs::write(dir.join("devices.csv"), reg).unwrap();
    path
}

/// (topic, payload bytes) → count, over capture files; every line must parse.
fn messages(paths: &[PathBuf]) -> BTreeMap<(String, Vec<u8>), u64> {
    messages_of(paths, true)
}

/// Like [`messages`]; `strict: false` skips torn lines (a file being written, or cut by a
/// kill) instead of failing.
fn messages_of(paths: &[PathBuf], strict: bool) -> BTreeMap<(String, Vec<u8>), u64> {
    let mut m = BTreeMap::new();
    for p in paths {
        wallscope::source::read_file(
            p,
            wallscope::source::InputFormat::Capture,
            None,
            &mut |msg| *m.entry((msg.topic, msg.payload)).or_default() += 1,
            &mut |b| assert!(!strict, "{}:{}: {}", b.path.display(), b.line, b.why),
            &mut |_| {},
        )
        .unwrap();
    }
    m
}

/// The `ts` of a bridge envelope payload.
fn envelope_ts(payload: &[u8]) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
    v["ts"].as_i64().unwrap()
}

/// `wallscope record` into `out`, once its subscription is in place.
fn start_recorder(dir: &Path, url: &str, out: &Path) -> Ingester {
    let r = Ingester::spawn_cmd(
        &dir.join("recdata"),
        &["record", "--broker", url, "--out", out.to_str().unwrap()],
    );
    r.wait_log("subscribed with QoS 1", 1);
    r
}

fn replay(file: &Path, port: u16, extra: &[&str]) -> String {
    let url = format!("mqtt://127.0.0.1:{port}");
    let mut args = vec!["replay", file.to_str().unwrap(), "--to", &url];
    args.extend_from_slice(extra);
    let o = run(file.parent().unwrap(), &args);
    assert!(o.status.success(), "replay failed: {}", stderr(&o));
    stdout(&o)
}

/// Records until `want` messages are in `out` (or a minute passes).
fn wait_recorded(out: &Path, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = std::fs::read_to_string(out)
            .map(|t| t.lines().count() as u64)
            .unwrap_or(0);
        if n >= want {
            return;
        }
        assert!(Instant::now() < deadline, "recorded {n} of {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn replay_then_record_is_byte_exact() {
    let d = tempfile::tempdir().unwrap();
    let sim = simulate(
        d.path(),
        SimConfig {
            devices: 5,
            duration_ms: 3_600_000,
            seed: 7,
            ..SimConfig::default()
        },
    );
    let broker = TestBroker::start(d.path());
    let rec = d.path().join("rec.jsonl");
    let url = broker.url();
    let recorder = start_recorder(d.path(), &url, &rec);
    let out = replay(&sim, broker.port, &["--speed", "max"]);
    assert!(out.contains("replayed"), "{out}");
    let sent = messages(std::slice::from_ref(&sim));
    let total: u64 = sent.values().sum();
    wait_recorded(&rec, total);
    assert!(recorder.stop(), "record did not exit cleanly");
    let got = messages(std::slice::from_ref(&rec));
    assert_eq!(
        got, sent,
        "recorded topics and payloads differ from the replayed capture"
    );
    // Receive times are the recorder's clock: recent, in order.
    let text = std::fs::read_to_string(&rec).unwrap();
    let times: Vec<i64> = text
        .lines()
        .map(|l| CaptureRecord::parse(l).unwrap().ts_ms)
        .collect();
    let now = chrono::Utc::now().timestamp_millis();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    assert!(times.iter().all(|t| (now - t).abs() < 300_000));
}

#[test]
fn replay_keeps_the_schedule_and_rewrites_devices_and_time() {
    let d = tempfile::tempdir().unwrap();
    // Two devices, 20 s of 2-s polls: at 10x the replay takes about 2 s.
    let sim = simulate(
        d.path(),
        SimConfig {
            devices: 2,
            duration_ms: 20_000,
            poll_interval_ms: 2_000,
            seed: 3,
            quirks: false,
            ..SimConfig::default()
        },
    );
    let sent = messages(std::slice::from_ref(&sim));
    let n: u64 = sent.values().sum();
    let broker = TestBroker::start(d.path());
    let rec = d.path().join("rec.jsonl");
    let url = broker.url();
    let recorder = start_recorder(d.path(), &url, &rec);
    let started = Instant::now();
    let out = replay(
        &sim,
        broker.port,
        &[
            "--speed",
            "10",
            "--rewrite-device",
            "wc0001=clone{1..3}",
            "--shift-time",
            "+1h",
        ],
    );
    let took = started.elapsed();
    assert!(out.contains("behind schedule: p50"), "{out}");
    // The span is ~20 s: at 10x no less than ~1.8 s (it may be slower on a loaded machine).
    assert!(
        took >= Duration::from_millis(1700),
        "too fast for 10x: {took:?}"
    );
    let per_device = sent.keys().filter(|(t, _)| t.contains("/wc0001/")).count() as u64;
    wait_recorded(&rec, n + 2 * per_device);
    assert!(recorder.stop());
    let got = messages(&[rec]);
    let topics: std::collections::BTreeSet<&str> = got
        .keys()
        .map(|(t, _)| t.split('/').nth(1).unwrap())
        .collect();
    assert_eq!(
        topics.into_iter().collect::<Vec<_>>(),
        ["clone1", "clone2", "clone3", "wc0002"]
    );
    // Every envelope moved by exactly one hour.
    let orig: Vec<i64> = sent
        .keys()
        .filter(|(t, _)| t.contains("/wc0002/"))
        .map(|(_, p)| envelope_ts(p))
        .collect();
    let moved: Vec<i64> = got
        .keys()
        .filter(|(t, _)| t.contains("/wc0002/"))
        .map(|(_, p)| envelope_ts(p) - 3_600_000)
        .collect();
    let (mut a, mut b) = (orig, moved);
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
}

/// Findings as comparable lines: rule, device, episode span.
fn finding_keys(json_lines: &str) -> Vec<String> {
    let mut v: Vec<String> = json_lines
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let f: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{} {} {} {}",
                f["rule"].as_str().unwrap(),
                f["device_id"].as_str().unwrap(),
                f["first_ts"].as_str().unwrap(),
                f["last_ts"].as_str().unwrap()
            )
        })
        .collect();
    v.sort();
    v
}

fn faulty_fleet(dir: &Path) -> PathBuf {
    simulate(
        dir,
        SimConfig {
            devices: 8,
            duration_ms: 4 * 3_600_000,
            seed: 5,
            faults: vec![
                FaultCode::F00,
                FaultCode::F03,
                FaultCode::F09,
                FaultCode::F14,
                FaultCode::F22,
            ],
            ..SimConfig::default()
        },
    )
}

#[test]
fn a_capture_replayed_into_run_finds_what_diagnose_finds() {
    let d = tempfile::tempdir().unwrap();
    let sim = faulty_fleet(d.path());
    let reg = d.path().join("devices.csv");
    let o = run(
        d.path(),
        &[
            "diagnose",
            sim.to_str().unwrap(),
            "--devices",
            reg.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let want = finding_keys(&stdout(&o));
    assert!(
        want.len() >= 4,
        "the fleet should show several faults: {want:?}"
    );

    // Paced (the original schedule, scaled) and as fast as the broker takes it; the alert
    // transitions (their event-time columns) must come out the same too.
    let mut alerts_by_speed = Vec::new();
    for speed in ["1000", "max"] {
        let broker = TestBroker::start(&d.path().join(format!("broker-{speed}")));
        let data = d.path().join(format!("data-{speed}"));
        let url = broker.url();
        let ing = Ingester::spawn(
            &data,
            &[
                "--broker",
                &url,
                "--devices",
                reg.to_str().unwrap(),
                "--rules-interval",
                "500ms",
            ],
        );
        ing.wait_log("subscribed with QoS 1", 1);
        replay(&sim, broker.port, &["--speed", speed]);
        let sent: u64 = messages(std::slice::from_ref(&sim)).values().sum();
        let deadline = Instant::now() + Duration::from_secs(120);
        while wallscope::ingest::read_status(&data).is_none_or(|s| s.received < sent) {
            assert!(Instant::now() < deadline, "run did not receive everything");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(ing.stop(), "run did not stop cleanly");
        let stored = wallscope::rules::finding::load(&data).unwrap();
        let lines: String = stored.iter().map(|f| f.to_json_line() + "\n").collect();
        assert_eq!(
            finding_keys(&lines),
            want,
            "live findings at --speed {speed} differ from diagnose"
        );
        let mut rows: Vec<(String, String, String, &'static str, i64, i64)> =
            wallscope::alerts::table::load(&data)
                .unwrap()
                .into_iter()
                .map(|r| {
                    (
                        r.alert_id,
                        r.rule,
                        r.key,
                        r.state.as_str(),
                        r.at_ms,
                        r.started_ms,
                    )
                })
                .collect();
        rows.sort();
        alerts_by_speed.push(rows);
    }
    assert!(
        !alerts_by_speed[0].is_empty(),
        "the faulty fleet raises alerts"
    );
    assert_eq!(
        alerts_by_speed[0], alerts_by_speed[1],
        "alert transitions differ between --speed 1000 and max"
    );
}

/// `--loop` passes follow each other in time: the second pass is the first moved on by the
/// capture's span, so the store sees new events, not duplicates.
#[test]
fn loop_passes_move_on_in_time() {
    use wallscope::pipeline::replay::{ReplayConfig, Speed, replay as replay_lib};
    let d = tempfile::tempdir().unwrap();
    let sim = simulate(
        d.path(),
        SimConfig {
            devices: 2,
            duration_ms: 60_000,
            poll_interval_ms: 10_000,
            seed: 8,
            quirks: false,
            ..SimConfig::default()
        },
    );
    let sent = messages(std::slice::from_ref(&sim));
    let n: u64 = sent.values().sum();
    let broker = TestBroker::start(d.path());
    let rec = d.path().join("rec.jsonl");
    let url = broker.url();
    let recorder = start_recorder(d.path(), &url, &rec);
    let cfg = ReplayConfig {
        broker: wallscope::ingest::BrokerUrl::parse(&url).unwrap().0,
        client_id: "loop-test".into(),
        files: vec![sim.clone()],
        format: wallscope::source::InputFormat::Capture,
        device: None,
        speed: Speed::Max,
        loop_passes: Some(3),
        rewrites: vec![],
        shift_ms: 0,
        inflight: 100,
        reconnect_for_ms: 0,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stats = rt.block_on(replay_lib(&cfg, &mut |_| {})).unwrap();
    assert_eq!(
        (stats.published, stats.acked, stats.passes),
        (3 * n, 3 * n, 3)
    );
    wait_recorded(&rec, 3 * n);
    assert!(recorder.stop());
    // Three distinct envelope times per original one, a span (plus a second) apart.
    let got = messages(&[rec]);
    assert_eq!(
        got.len() as u64,
        3 * n,
        "a pass repeated another pass's payloads"
    );
    let mut times: Vec<i64> = got.keys().map(|(_, p)| envelope_ts(p)).collect();
    times.sort_unstable();
    let span = times[n as usize - 1] - times[0];
    assert!(
        times[n as usize] > times[n as usize - 1],
        "passes overlap in time"
    );
    assert!(times[2 * n as usize - 1] - times[n as usize] <= span + 1);
}

#[test]
fn an_exported_case_reproduces_its_findings() {
    let d = tempfile::tempdir().unwrap();
    let sim = faulty_fleet(d.path());
    let data = d.path().join("data");
    let reg = d.path().join("devices.csv");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(&reg, data.join("devices.csv")).unwrap();
    let o = run(&data, &["import", sim.to_str().unwrap()]);
    assert!(o.status.code().is_some_and(|c| c <= 1), "{}", stderr(&o));
    let o = run(
        &data,
        &["diagnose", "--store", data.to_str().unwrap(), "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let all = stdout(&o);
    // A device with a finding of severity minor or above.
    let device = all
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|f| f["severity"] != "info" && f["fault"] != "F00")
        .map(|f| f["device_id"].as_str().unwrap().to_string())
        .expect("a finding to export");
    let want: Vec<String> = finding_keys(&all)
        .into_iter()
        .filter(|k| k.split(' ').nth(1) == Some(device.as_str()))
        .collect();
    for ext in ["jsonl", "parquet"] {
        let case = d.path().join(format!("case.{ext}"));
        let o = run(
            &data,
            &[
                "export",
                "--device",
                &device,
                "--out",
                case.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let side = d.path().join("case.findings.jsonl");
        let stored = std::fs::read_to_string(&side).unwrap();
        assert_eq!(finding_keys(&stored), want, "sidecar of {ext}");
        let o = run(
            &data,
            &[
                "diagnose",
                case.to_str().unwrap(),
                "--devices",
                reg.to_str().unwrap(),
                "--json",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let got: Vec<String> = finding_keys(&stdout(&o))
            .into_iter()
            .filter(|k| !k.starts_with("stopped_reporting "))
            .collect();
        let want_no_f00: Vec<String> = want
            .iter()
            .filter(|k| !k.starts_with("stopped_reporting "))
            .cloned()
            .collect();
        assert_eq!(got, want_no_f00, "diagnose on the {ext} case");
    }
    // A range with no data is one clear error.
    let o = run(
        &data,
        &[
            "export",
            "--device",
            "nosuch",
            "--out",
            d.path().join("x.jsonl").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no telemetry for nosuch"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_killed_recorder_leaves_readable_rotated_compressed_files() {
    let d = tempfile::tempdir().unwrap();
    let sim = simulate(
        d.path(),
        SimConfig {
            devices: 5,
            duration_ms: 3_600_000,
            seed: 11,
            ..SimConfig::default()
        },
    );
    let sent = messages(std::slice::from_ref(&sim));
    let broker = TestBroker::start(d.path());
    let recdir = d.path().join("rec");
    let out = recdir.join("rec.jsonl.zst");
    let url = broker.url();
    let recorder = Ingester::spawn_cmd(
        &d.path().join("recdata"),
        &[
            "record",
            "--broker",
            &url,
            "--out",
            out.to_str().unwrap(),
            "--rotate-size",
            "64KiB",
            "--flush-interval",
            "10ms",
        ],
    );
    recorder.wait_log("subscribed with QoS 1", 1);
    replay(&sim, broker.port, &["--speed", "max"]);
    std::thread::sleep(Duration::from_millis(500));
    recorder.kill9();
    let files: Vec<PathBuf> = std::fs::read_dir(&recdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 2, "expected rotated files: {files:?}");
    // Every file decodes up to where the kill cut it; what was recorded was sent (acked
    // messages are on disk, and the broker holds the rest for the next start).
    let got = messages_of(&files, false);
    for (k, n) in &got {
        assert!(
            sent.get(k).is_some_and(|s| s >= n),
            "recorded a message never sent"
        );
    }
    let recorded: u64 = got.values().sum();
    assert!(recorded > 0);
    // Restarting resumes the session and appends the rest.
    let recorder = Ingester::spawn_cmd(
        &d.path().join("recdata"),
        &["record", "--broker", &url, "--out", out.to_str().unwrap()],
    );
    // Wait for it to connect (its line follows the killed one's in the shared log): when the
    // killed recorder had written everything, the loop below ends at once, and a SIGTERM
    // before the new process installs its handler would fail `stop` for no fault of its own.
    recorder.wait_log("connected;", 2);
    let total: u64 = sent.values().sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let files: Vec<PathBuf> = std::fs::read_dir(&recdir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let n: u64 = messages_of(&files, false).values().sum();
        if n >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "recorded {n} of {total} after the restart"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = d.path().join("recdata").with_extension("log");
    assert!(
        recorder.stop(),
        "record did not exit cleanly: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Stopped cleanly: every file is whole now.
    let files: Vec<PathBuf> = std::fs::read_dir(&recdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    let got = messages_of(&files, false);
    for k in sent.keys() {
        assert!(got.contains_key(k), "message lost across the kill: {}", k.0);
    }
}

#[test]
fn a_replay_survives_a_broker_restart() {
    let d = tempfile::tempdir().unwrap();
    // A restart needs a broker in another process that keeps its sessions on disk.
    let Some(mut broker) = TestBroker::mosquitto_only(d.path(), "") else {
        eprintln!("mosquitto not found: skipping the broker-restart replay test");
        return;
    };
    let sim = simulate(
        d.path(),
        SimConfig {
            devices: 10,
            duration_ms: 20 * 60_000,
            poll_interval_ms: 2000,
            seed: 11,
            ..SimConfig::default()
        },
    );
    let sent = messages(std::slice::from_ref(&sim));
    let rec = d.path().join("rec.jsonl");
    let recorder = start_recorder(d.path(), &broker.url(), &rec);
    // 20 simulated minutes at 200×: about 6 s of replay; the broker goes away for a second
    // in the middle of it.
    let (file, port) = (sim.clone(), broker.port);
    let replaying = std::thread::spawn(move || replay(&file, port, &["--speed", "200"]));
    std::thread::sleep(Duration::from_secs(2));
    broker.restart(Duration::from_secs(1));
    let out = replaying.join().unwrap();
    assert!(
        out.contains("dropped 1 time(s)"),
        "the replay did not notice the restart: {out}"
    );
    // Every message arrives at least once (the recorder's session survives the restart in
    // Mosquitto's persistence file); redeliveries may add copies, nothing else.
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got = messages_of(std::slice::from_ref(&rec), false);
        if sent
            .iter()
            .all(|(k, n)| got.get(k).copied().unwrap_or(0) >= *n)
        {
            break got;
        }
        let missing = sent.keys().filter(|k| !got.contains_key(*k)).count();
        assert!(
            Instant::now() < deadline,
            "{missing} of {} messages never arrived after the restart",
            sent.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(recorder.stop(), "record did not exit cleanly");
    assert!(
        got.keys().all(|k| sent.contains_key(k)),
        "recorded a message that was never replayed"
    );
}
