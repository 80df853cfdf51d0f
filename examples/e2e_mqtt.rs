//! End-to-end ingest benchmark: the same N vitals messages through the same Mosquitto to
//! (a) `mosquitto_sub -q 1 > /dev/null`, (b) a bare rumqttc QoS 1 consumer that only counts,
//! (c) `wallscope run` with durable acks — live (publisher running) and drain (messages
//! queued in the session first). Prints a Markdown table for the README.
//!
//! cargo build --release --bins --examples && target/release/examples/e2e_mqtt [N]
//! Needs `mosquitto`, `mosquitto_sub` and the release `wallscope` binary beside this example.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use wallscope::ingest::BrokerUrl;
use wallscope::ingest::publish::Publisher;

mod support;
use support::{mosquitto, wallscope_bin};

fn payloads(n: usize) -> Vec<(String, Vec<u8>)> {
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    (0..n)
        .map(|i| {
            let dev = i % 500;
            let seq = i / 500;
            let p = format!(
                concat!(
                    "{{\"ts\":{},\"seq\":{},\"data\":{{\"contactor_closed\":true,\"vehicle_connected\":true,",
                    "\"session_s\":{},\"grid_v\":{:.1},\"grid_hz\":59.98,\"vehicle_current_a\":31.8,",
                    "\"currentA_a\":31.9,\"currentB_a\":31.7,\"currentC_a\":0.1,\"currentN_a\":0.0,",
                    "\"voltageA_v\":121.2,\"voltageB_v\":120.8,\"voltageC_v\":0.0,\"relay_coil_v\":11.9,",
                    "\"pcba_temp_c\":41.2,\"handle_temp_c\":33.5,\"mcu_temp_c\":48.1,\"uptime_s\":{},",
                    "\"input_thermopile_uv\":-176,\"prox_v\":1.5,\"pilot_high_v\":8.9,\"pilot_low_v\":-11.9,",
                    "\"session_energy_wh\":{:.1},\"config_status\":5,\"evse_state\":11,",
                    "\"current_alerts\":[],\"evse_not_ready_reasons\":[]}}}}"
                ),
                base + seq as i64 * 1000,
                seq,
                seq * 10,
                240.0 + (seq % 50) as f64 / 10.0,
                100_000 + seq,
                seq as f64 * 2.1
            );
            (format!("wc/b{dev:03}/vitals"), p.into_bytes())
        })
        .collect()
}

async fn publish(port: u16, id: &str, msgs: &[(String, Vec<u8>)]) -> f64 {
    let broker = BrokerUrl::parse(&format!("mqtt://127.0.0.1:{port}"))
        .unwrap()
        .0;
    let mut p = Publisher::start(&broker, id, 1000).unwrap();
    let t = Instant::now();
    for (topic, m) in msgs {
        p.publish(topic, m.clone()).await.unwrap();
    }
    p.finish(Duration::from_secs(600)).await.unwrap();
    t.elapsed().as_secs_f64()
}

/// Creates a persistent session with a QoS 1 subscription, then leaves.
async fn prepare_session(port: u16, id: &str) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(false);
    let (c, mut el) = AsyncClient::new(o, 10);
    c.subscribe("wc/+/+", QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await.unwrap() {
            break;
        }
    }
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while el.poll().await.is_ok() {}
    })
    .await;
}

/// A bare rumqttc consumer: QoS 1, automatic acks, counts to n. Returns seconds from start.
async fn bare_consumer(port: u16, id: &str, n: usize, subscribe: bool) -> f64 {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(false)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (c, mut el) = AsyncClient::new(o, 1000);
    if subscribe {
        c.subscribe("wc/+/+", QoS::AtLeastOnce).await.unwrap();
    }
    let t = Instant::now();
    let mut got = 0;
    while got < n {
        if let Event::Incoming(Packet::Publish(_)) = el.poll().await.unwrap() {
            got += 1;
        }
    }
    t.elapsed().as_secs_f64()
}

fn mosquitto_sub(port: u16, id: &str, n: usize) -> Child {
    Command::new("mosquitto_sub")
        .args([
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-c",
            "-i",
            id,
            "-t",
            "wc/+/+",
        ])
        .args(["-C", &n.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_sub")
}

fn wait_child(mut c: Child, t: Instant) -> f64 {
    c.wait().unwrap();
    t.elapsed().as_secs_f64()
}

struct WsRun {
    secs: f64,
    p99_ms: Option<u64>,
    rss_max_mib: f64,
    rss_end_mib: f64,
}

/// Runs `wallscope run` until n rows are durable; returns time from spawn.
fn wallscope_run(port: u16, id: &str, data: &Path, n: usize, cfg: &Path) -> (Child, Instant) {
    let t = Instant::now();
    let child = Command::new(wallscope_bin())
        .arg("--data-dir")
        .arg(data)
        .args([
            "run",
            "--broker",
            &format!("mqtt://127.0.0.1:{port}"),
            "--client-id",
            id,
        ])
        .arg("--config")
        .arg(cfg)
        .args(["--status-interval-s", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wallscope binary (cargo build --release first)");
    let _ = n;
    // E2E_PERF=dir: profile this run with `perf record -g` (attached to the process).
    if let Ok(dir) = std::env::var("E2E_PERF") {
        let out = Path::new(&dir).join(format!("{id}.perf"));
        let _ = Command::new("perf")
            .args(["record", "-F", "1999", "-g", "-o"])
            .arg(out)
            .args(["-p", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
    (child, t)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn wait_durable(child: &mut Child, t: Instant, data: &Path, n: usize) -> WsRun {
    let mut rss_max = 0u64;
    loop {
        if let Some(k) = rss_kib(child.id()) {
            rss_max = rss_max.max(k);
        }
        if let Some(s) = wallscope::ingest::read_status(data)
            && s.rows_durable >= n as u64
        {
            let secs = t.elapsed().as_secs_f64();
            let rss_end = rss_kib(child.id()).unwrap_or(0);
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            child.wait().unwrap();
            let fin = wallscope::ingest::read_status(data).unwrap_or(s);
            return WsRun {
                secs,
                p99_ms: fin.ack_latency_p99_ms,
                rss_max_mib: rss_max as f64 / 1024.0,
                rss_end_mib: rss_end as f64 / 1024.0,
            };
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "wallscope exited early"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let tmp = tempfile::tempdir().unwrap();
    let mq = mosquitto(tmp.path());
    let port = mq.port;
    let cfg = tmp.path().join("ws.toml");
    std::fs::write(&cfg, "[batch]\nstatus_interval_ms = 100\n").unwrap();
    let msgs = payloads(n);
    let bytes: usize = msgs.iter().map(|m| m.1.len()).sum();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "N = {n} vitals envelopes ({:.0} bytes each), Mosquitto on loopback, QoS 1",
        bytes as f64 / n as f64
    );

    // ---- drain: everything queued in the session first ----
    let mut drain = Vec::new();
    rt.block_on(prepare_session(port, "d-sub"));
    rt.block_on(publish(port, "d-pub-1", &msgs));
    drain.push((
        "mosquitto_sub -q 1",
        wait_child(mosquitto_sub(port, "d-sub", n), Instant::now()),
        None,
        None,
    ));
    rt.block_on(prepare_session(port, "d-bare"));
    rt.block_on(publish(port, "d-pub-2", &msgs));
    drain.push((
        "bare rumqttc (counts only)",
        rt.block_on(bare_consumer(port, "d-bare", n, false)),
        None,
        None,
    ));
    rt.block_on(prepare_session(port, "d-ws"));
    rt.block_on(publish(port, "d-pub-3", &msgs));
    let data = tmp.path().join("drain-data");
    let (mut c, t) = wallscope_run(port, "d-ws", &data, n, &cfg);
    let r = wait_durable(&mut c, t, &data, n);
    drain.push((
        "wallscope run (durable acks)",
        r.secs,
        r.p99_ms,
        Some((r.rss_max_mib, r.rss_end_mib)),
    ));
    // The same with one poison message in every 100 (invalid JSON: dead-lettered and acked).
    let poisoned: Vec<(String, Vec<u8>)> = msgs
        .iter()
        .enumerate()
        .map(|(i, (t, p))| {
            if i % 100 == 99 {
                (
                    t.clone(),
                    br#"{"ts":1,"seq":1,"data":{"grid_v":24x}}"#.to_vec(),
                )
            } else {
                (t.clone(), p.clone())
            }
        })
        .collect();
    rt.block_on(prepare_session(port, "d-ws-poison"));
    rt.block_on(publish(port, "d-pub-4", &poisoned));
    let data = tmp.path().join("drain-poison-data");
    let (mut c, t) = wallscope_run(port, "d-ws-poison", &data, n, &cfg);
    let r = wait_durable(&mut c, t, &data, n);
    drain.push((
        "wallscope run, 1 % poison",
        r.secs,
        r.p99_ms,
        Some((r.rss_max_mib, r.rss_end_mib)),
    ));

    // ---- live: consumer running, publisher publishing ----
    let mut live = Vec::new();
    let pubsecs = rt.block_on(publish(port, "l-pub-0", &msgs));
    live.push(("publisher alone (no subscriber)", pubsecs, None, None));
    let sub = mosquitto_sub(port, "l-sub", n);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    rt.block_on(publish(port, "l-pub-1", &msgs));
    live.push(("mosquitto_sub -q 1", wait_child(sub, t), None, None));
    let bare = rt.spawn(bare_consumer(port, "l-bare", n, true));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    rt.block_on(publish(port, "l-pub-2", &msgs));
    rt.block_on(bare).unwrap();
    live.push((
        "bare rumqttc (counts only)",
        t.elapsed().as_secs_f64(),
        None,
        None,
    ));
    let data = tmp.path().join("live-data");
    let (mut c, _) = wallscope_run(port, "l-ws", &data, n, &cfg);
    while wallscope::ingest::read_status(&data).is_none_or(|s| s.connections == 0) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let pubthread = {
        let msgs = msgs.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(publish(port, "l-pub-3", &msgs))
        })
    };
    let r = wait_durable(&mut c, t, &data, n);
    pubthread.join().unwrap();
    live.push((
        "wallscope run (durable acks)",
        r.secs,
        r.p99_ms,
        Some((r.rss_max_mib, r.rss_end_mib)),
    ));

    for (title, rows) in [
        ("drain (queued first)", &drain),
        ("live (publisher running)", &live),
    ] {
        println!("\n### {title}\n");
        println!("| consumer | msg/s | × bare rumqttc | ack p99 | RSS max / end |");
        println!("|---|---:|---:|---:|---:|");
        let bare = rows
            .iter()
            .find(|r| r.0.starts_with("bare"))
            .map(|r| n as f64 / r.1)
            .unwrap_or(1.0);
        for (name, secs, p99, rss) in rows.iter() {
            let rate = n as f64 / secs;
            println!(
                "| {name} | {rate:.0} | {:.2} | {} | {} |",
                rate / bare,
                p99.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into()),
                rss.map(|(a, b)| format!("{a:.0} / {b:.0} MiB"))
                    .unwrap_or_else(|| "-".into())
            );
        }
    }
}
