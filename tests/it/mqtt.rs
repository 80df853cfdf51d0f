//! Live ingest against a real broker: Mosquitto started per test on a free loopback port
//! with its own config and data directory, or the embedded broker where Mosquitto is absent
//! (or `WALLSCOPE_TEST_BROKER=embedded`). The ingester is the real binary, killed with
//! SIGKILL where the test says so.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
use wallscope::ingest::BrokerUrl;
use wallscope::ingest::publish::Publisher;

use crate::harness::{bin, sql_one, sql_rows};

// ---------- brokers ----------

fn mosquitto_bin() -> Option<PathBuf> {
    if std::env::var("WALLSCOPE_TEST_BROKER").as_deref() == Ok("embedded") {
        return None;
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join("mosquitto"))
        .find(|p| p.is_file())
}

pub struct TestBroker {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    mosquitto: Option<PathBuf>,
}

impl TestBroker {
    /// Mosquitto when installed, else the embedded broker (in this process).
    pub fn start(dir: &Path) -> TestBroker {
        match mosquitto_bin() {
            Some(m) => Self::mosquitto(dir, &m, ""),
            None => {
                eprintln!("mosquitto not found: testing against the embedded broker");
                let b = wallscope::broker::start("127.0.0.1:0".parse().unwrap()).unwrap();
                TestBroker {
                    port: b.addr.port(),
                    dir: dir.to_path_buf(),
                    child: None,
                    mosquitto: None,
                }
            }
        }
    }

    /// Mosquitto only (None when it is not installed); `extra` is appended to its config.
    pub fn mosquitto_only(dir: &Path, extra: &str) -> Option<TestBroker> {
        mosquitto_bin().map(|m| Self::mosquitto(dir, &m, extra))
    }

    fn mosquitto(dir: &Path, bin: &Path, extra: &str) -> TestBroker {
        let port = wallscope::broker::free_port("127.0.0.1").unwrap();
        let bdir = dir.join("mosquitto");
        std::fs::create_dir_all(&bdir).unwrap();
        let conf = format!(
            "per_listener_settings true\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             max_queued_messages 0\n\
             max_inflight_messages 0\n\
             persistence true\n\
             persistence_location {}/\n\
             sys_interval 1\n\
             user root\n\
             {extra}\n",
            bdir.display()
        );
        std::fs::write(bdir.join("mosquitto.conf"), conf).unwrap();
        let mut b = TestBroker {
            port,
            dir: bdir,
            child: None,
            mosquitto: Some(bin.to_path_buf()),
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let bin = self.mosquitto.clone().unwrap();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_port(self.port);
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Stops Mosquitto cleanly (it saves its persistence file) and starts it again.
    pub fn restart(&mut self, down_for: Duration) {
        if let Some(c) = self.child.as_mut() {
            signal(c.id(), "TERM");
            c.wait().unwrap();
        }
        std::thread::sleep(down_for);
        self.spawn();
    }

    /// Mosquitto's `$SYS/broker/publish/messages/dropped` (messages it discarded).
    pub fn dropped(&self) -> Option<u64> {
        self.mosquitto.as_ref()?;
        let o = Command::new("mosquitto_sub")
            .args(["-p", &self.port.to_string(), "-C", "1", "-W", "5"])
            .args(["-t", "$SYS/broker/publish/messages/dropped"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("broker did not listen on {port}");
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

// ---------- the ingester ----------

pub struct Ingester {
    child: Child,
    pub log: PathBuf,
}

impl Ingester {
    pub fn spawn(data: &Path, args: &[&str]) -> Ingester {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        Self::spawn_cmd(data, &all)
    }

    /// Any subcommand (`args[0]`) with `--data-dir data`, logging beside `data`.
    pub fn spawn_cmd(data: &Path, args: &[&str]) -> Ingester {
        let log = data.with_extension("log");
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(bin())
            .arg("-v")
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Ingester { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log shows `needle` (a fresh start logs its subscription).
    pub fn wait_log(&self, needle: &str, occurrences: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.log_text().matches(needle).count() < occurrences {
            assert!(
                Instant::now() < deadline,
                "ingester never logged {needle:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits; returns whether it exited 0.
    pub fn stop(mut self) -> bool {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("ingester did not stop within 120 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ingester {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------- traffic ----------

/// A vitals envelope for device `dev`, sequence `seq`; event times end now.
pub fn envelope(seq: u64, base_ms: i64) -> Vec<u8> {
    format!(
        concat!(
            "{{\"ts\":{},\"seq\":{},\"data\":{{\"contactor_closed\":false,\"vehicle_connected\":false,",
            "\"session_s\":0,\"grid_v\":{:.1},\"grid_hz\":59.9,\"vehicle_current_a\":0.0,",
            "\"pcba_temp_c\":21.9,\"handle_temp_c\":19.5,\"mcu_temp_c\":29.3,\"uptime_s\":{},",
            "\"evse_state\":1,\"current_alerts\":[],\"evse_not_ready_reasons\":[4,8]}}}}"
        ),
        base_ms + seq as i64 * 10,
        seq,
        240.0 + (seq % 50) as f64 / 10.0,
        1000 + seq
    )
    .into_bytes()
}

/// Publishes (topic, payload) pairs with QoS 1 from a thread; returns once the broker has
/// acknowledged them all.
pub fn publish_all(
    url: &str,
    client_id: &str,
    msgs: Vec<(String, Vec<u8>)>,
) -> std::thread::JoinHandle<u64> {
    let (broker, _, _) = BrokerUrl::parse(url).unwrap();
    let client_id = client_id.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut p = Publisher::start(&broker, &client_id, 500).unwrap();
            for (t, m) in msgs {
                p.publish(&t, m).await.unwrap();
            }
            p.finish(Duration::from_secs(300)).await.unwrap()
        })
    })
}

/// `devices` chargers × `per_device` envelopes, interleaved as a fleet publishes them.
pub fn fleet(devices: usize, per_device: u64) -> Vec<(String, Vec<u8>)> {
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let mut v = Vec::with_capacity(devices * per_device as usize);
    for s in 0..per_device {
        for d in 0..devices {
            v.push((format!("wc/k{d:03}/vitals"), envelope(s, base)));
        }
    }
    v
}

pub fn wait_rows(data: &Path, q: &str, want: u64, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    let mut n = 0;
    while Instant::now() < deadline {
        n = sql_one(data, q).parse().unwrap_or(0);
        if n >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    n
}

fn status_counter(data: &Path, name: &str) -> u64 {
    let text = std::fs::read_to_string(data.join("ingest-status.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v[name].as_u64().unwrap_or(0)
}

/// A tiny deterministic generator for kill moments (seed printed for reruns).
struct Rng(u64);
impl Rng {
    fn from_time() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("kill-moment seed {seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

// ---------- tests ----------

/// The headline: 200,000 QoS 1 messages from 200 chargers, the ingester SIGKILLed at 5
/// random moments and restarted each time. Nothing lost, nothing doubled.
#[test]
fn kill_nine_five_times_loses_nothing_and_doubles_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(tmp.path());
    let data = tmp.path().join("data");
    let url = broker.url();
    let args = ["--broker", url.as_str(), "--client-id", "kill-test"];
    let dropped_before = broker.dropped();
    let ing = Ingester::spawn(&data, &args);
    ing.wait_log("subscribed with QoS 1", 1);
    let msgs = fleet(200, 1000);
    let total = msgs.len() as u64;
    let publisher = publish_all(&url, "kill-test-publisher", msgs);
    let mut rng = Rng::from_time();
    let mut ing = Some(ing);
    for k in 0..5 {
        std::thread::sleep(Duration::from_millis(300 + rng.below(1500)));
        ing.take().unwrap().kill9();
        let stored = sql_one(&data, "SELECT count(*) FROM vitals");
        eprintln!("kill {}: {stored} rows durable at the kill", k + 1);
        ing = Some(Ingester::spawn(&data, &args));
    }
    assert_eq!(publisher.join().unwrap(), total);
    let n = wait_rows(
        &data,
        "SELECT count(*) FROM vitals",
        total,
        Duration::from_secs(300),
    );
    let ing = ing.take().unwrap();
    let log = ing.log_text();
    assert!(
        ing.stop(),
        "ingester did not exit cleanly on SIGTERM:\n{log}"
    );
    assert_eq!(n, total, "rows after 5 kills");
    assert_eq!(
        sql_one(&data, "SELECT count(*) FROM vitals"),
        total.to_string(),
        "no duplicates"
    );
    assert_eq!(
        sql_one(
            &data,
            "SELECT count(*) FROM (SELECT DISTINCT device_id, seq FROM vitals)"
        ),
        total.to_string()
    );
    assert_eq!(sql_one(&data, "SELECT count(*) FROM dead_letters"), "0");
    if let (Some(a), Some(b)) = (dropped_before, broker.dropped()) {
        assert_eq!(a, b, "mosquitto dropped messages");
    }
}

/// An ack may only leave after the fsync that covers its message. Observed from outside:
/// SIGKILL the ingester mid-stream, then drain its session with a plain client. Whatever
/// the broker no longer holds was acked, and every acked message must be in the store.
#[test]
fn no_message_is_acked_before_it_is_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(tmp.path());
    let url = broker.url();
    let mut rng = Rng::from_time();
    for round in 0..2 {
        let data = tmp.path().join(format!("data{round}"));
        let id = format!("fsync-test-{round}");
        let args = ["--broker", url.as_str(), "--client-id", id.as_str()];
        let ing = Ingester::spawn(&data, &args);
        ing.wait_log("subscribed with QoS 1", 1);
        let msgs = fleet(10, 5000);
        let total = msgs.len() as u64;
        let publisher = publish_all(&url, &format!("fsync-pub-{round}"), msgs);
        std::thread::sleep(Duration::from_millis(100 + rng.below(700)));
        ing.kill9();
        assert_eq!(publisher.join().unwrap(), total);
        // The store after the crash (reads recover what was fsynced).
        let stored: HashSet<(String, u64)> = sql_rows(&data, "SELECT device_id, seq FROM vitals")
            .into_iter()
            .map(|r| (r[0].clone(), r[1].parse().unwrap()))
            .collect();
        // What the broker still holds for the session = what was never acked.
        let held = drain_session(broker.port, &id);
        let mut acked_missing = 0;
        for (topic, payload) in fleet_keys(10, 5000) {
            if !held.contains(&(topic.clone(), payload)) && !stored.contains(&(topic, payload)) {
                acked_missing += 1;
            }
        }
        eprintln!(
            "round {round}: {} durable at the kill, {} still with the broker",
            stored.len(),
            held.len()
        );
        assert_eq!(acked_missing, 0, "messages acked but not durable");
    }
}

fn fleet_keys(devices: usize, per_device: u64) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for s in 0..per_device {
        for d in 0..devices {
            v.push((format!("k{d:03}"), s));
        }
    }
    v
}

/// Connects with the session's client id and reads what the broker still holds, acking it.
fn drain_session(port: u16, client_id: &str) -> HashSet<(String, u64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_clean_session(false)
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_keep_alive(Duration::from_secs(30));
        let (_client, mut el) = AsyncClient::new(o, 1024);
        let mut held = HashSet::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(3), el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let dev = p.topic.split('/').nth(1).unwrap().to_string();
                    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                    held.insert((dev, v["seq"].as_u64().unwrap()));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("drain client: {e}"),
                Err(_) => break, // idle: the session is empty
            }
        }
        held
    })
}

/// 100,000 messages with 1% invalid JSON, 1% wrong types and ten 1 MB payloads: every valid
/// row stored, dead letters exact by reason, nothing stalls.
#[test]
fn poison_mix_is_dead_lettered_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(tmp.path());
    let data = tmp.path().join("data");
    let url = broker.url();
    let ing = Ingester::spawn(&data, &["--broker", &url, "--client-id", "poison-test"]);
    ing.wait_log("subscribed with QoS 1", 1);
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let big: Vec<u64> = (0..10).map(|k| k * 9_973 + 11).collect();
    let mut msgs = Vec::new();
    let (mut bad_json, mut bad_type, mut oversized) = (0u64, 0u64, 0u64);
    for i in 0..100_000u64 {
        let topic = format!("wc/p{:02}/vitals", i % 50);
        let payload = if big.contains(&i) {
            oversized += 1;
            let mut p = b"{\"ts\":1,\"seq\":1,\"data\":{\"note\":\"".to_vec();
            p.resize(1 << 20, b'x');
            p.extend_from_slice(b"\"}}");
            p
        } else if i % 100 == 7 {
            bad_json += 1;
            format!(
                "{{\"ts\":{},\"seq\":{i},\"data\":{{\"grid_v\":24x}}}}",
                base + i as i64
            )
            .into_bytes()
        } else if i % 100 == 42 {
            bad_type += 1;
            format!(
                "{{\"ts\":{},\"seq\":{i},\"data\":{{\"grid_v\":\"high\"}}}}",
                base + i as i64
            )
            .into_bytes()
        } else {
            envelope(i, base)
        };
        msgs.push((topic, payload));
    }
    let valid = 100_000 - bad_json - bad_type - oversized;
    let total = msgs.len() as u64;
    assert_eq!(publish_all(&url, "poison-pub", msgs).join().unwrap(), total);
    let n = wait_rows(
        &data,
        "SELECT (SELECT count(*) FROM vitals) + (SELECT count(*) FROM dead_letters)",
        total,
        Duration::from_secs(300),
    );
    assert_eq!(n, total);
    assert!(ing.stop());
    assert_eq!(
        sql_one(&data, "SELECT count(*) FROM vitals"),
        valid.to_string()
    );
    let by: Vec<Vec<String>> = sql_rows(
        &data,
        "SELECT error_class, count(*) FROM dead_letters GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(
        by,
        vec![
            vec!["invalid_json".to_string(), bad_json.to_string()],
            vec!["oversized".to_string(), oversized.to_string()],
            vec!["wrong_type".to_string(), bad_type.to_string()],
        ]
    );
    assert_eq!(status_counter(&data, "dead_letters"), total - valid);
}

/// Mosquitto stopped and restarted mid-stream (persistent): no loss, ingest resumes.
#[test]
fn broker_restart_mid_stream_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut broker) = TestBroker::mosquitto_only(tmp.path(), "") else {
        eprintln!("skipped: needs Mosquitto (the embedded broker cannot be restarted)");
        return;
    };
    let data = tmp.path().join("data");
    let url = broker.url();
    let ing = Ingester::spawn(&data, &["--broker", &url, "--client-id", "restart-test"]);
    ing.wait_log("subscribed with QoS 1", 1);
    let msgs = fleet(50, 1000);
    let total = msgs.len() as u64;
    let publisher = publish_all(&url, "restart-pub", msgs);
    std::thread::sleep(Duration::from_millis(700));
    broker.restart(Duration::from_millis(1000));
    let restarted = Instant::now();
    assert_eq!(publisher.join().unwrap(), total);
    let n = wait_rows(
        &data,
        "SELECT count(*) FROM vitals",
        total,
        Duration::from_secs(300),
    );
    eprintln!(
        "all {total} durable {:.1} s after the broker came back",
        restarted.elapsed().as_secs_f64()
    );
    assert!(ing.stop());
    assert_eq!(n, total);
    assert_eq!(
        sql_one(
            &data,
            "SELECT count(*) FROM (SELECT DISTINCT device_id, seq FROM vitals)"
        ),
        total.to_string()
    );
    assert!(
        status_counter(&data, "reconnects") >= 1,
        "a reconnect was counted"
    );
}

/// `run --embedded-broker` serves local publishers and ingests what they send.
#[test]
fn run_with_embedded_broker() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ing = Ingester::spawn(
        &data,
        &["--embedded-broker", "--embedded-listen", "127.0.0.1:0"],
    );
    ing.wait_log("subscribed with QoS 1", 1);
    let log = ing.log_text();
    let url = log
        .split_whitespace()
        .find(|w| w.starts_with("mqtt://127.0.0.1:"))
        .unwrap()
        .to_string();
    let msgs = fleet(5, 200);
    assert_eq!(
        publish_all(&url, "embedded-pub", msgs).join().unwrap(),
        1000
    );
    assert_eq!(
        wait_rows(
            &data,
            "SELECT count(*) FROM vitals",
            1000,
            Duration::from_secs(60)
        ),
        1000
    );
    assert!(ing.stop());
}

/// Bad settings fail at once with one line; an empty client id is refused.
#[test]
fn run_refuses_bad_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cases: &[(&[&str], &str)] = &[
        (&["--broker", "http://x"], "unsupported scheme"),
        (
            &["--broker", "mqtt://127.0.0.1:1", "--client-id", ""],
            "empty client id",
        ),
        (
            &[
                "--broker",
                "mqtt://127.0.0.1:1",
                "--ca-file",
                "/nonexistent",
            ],
            "mqtts://",
        ),
        (&[], "no broker"),
    ];
    for (args, want) in cases {
        let o = Command::new(bin())
            .arg("--data-dir")
            .arg(&data)
            .arg("run")
            .args(*args)
            .env_remove("WALLSCOPE_BROKER")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[mqtt]\nbrokr = \"mqtt://h:1\"\n").unwrap();
    let o = Command::new(bin())
        .arg("--data-dir")
        .arg(&data)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("brokr"), "{err}");
}

// ---------- TLS ----------

struct Pki {
    ca_pem: String,
    other_ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mk_ca = || {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "wallscope test CA");
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    };
    let ca = mk_ca();
    let other = mk_ca();
    let skey = KeyPair::generate().unwrap();
    let sp =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let server = sp.signed_by(&skey, &ca).unwrap();
    let ckey = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(vec!["ingester".to_string()]).unwrap();
    cp.distinguished_name
        .push(rcgen::DnType::CommonName, "ingester");
    let client = cp.signed_by(&ckey, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        other_ca_pem: other.pem(),
        server_cert: server.pem(),
        server_key: skey.serialize_pem(),
        client_cert: client.pem(),
        client_key: ckey.serialize_pem(),
    }
}

/// Mosquitto with a TLS listener that wants a client certificate and a password: the right
/// settings ingest; a wrong CA and a wrong password each end with one clear error that
/// does not contain the password.
#[test]
fn tls_with_client_certificates_and_passwords() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let p = pki();
    for (name, text) in [
        ("ca.pem", &p.ca_pem),
        ("other-ca.pem", &p.other_ca_pem),
        ("server.pem", &p.server_cert),
        ("server.key", &p.server_key),
        ("client.pem", &p.client_cert),
        ("client.key", &p.client_key),
    ] {
        std::fs::write(d.join(name), text).unwrap();
    }
    let pwfile = d.join("passwd");
    std::fs::write(&pwfile, "").unwrap();
    let ok = Command::new("mosquitto_passwd")
        .args(["-b"])
        .arg(&pwfile)
        .args(["ingest", "right-horse-battery"])
        .status();
    if mosquitto_bin().is_none() || !ok.is_ok_and(|s| s.success()) {
        eprintln!("skipped: needs Mosquitto and mosquitto_passwd");
        return;
    }
    let tls_port = wallscope::broker::free_port("127.0.0.1").unwrap();
    let extra = format!(
        "listener {tls_port} 127.0.0.1\n\
         allow_anonymous false\n\
         password_file {pw}\n\
         cafile {d}/ca.pem\n\
         certfile {d}/server.pem\n\
         keyfile {d}/server.key\n\
         require_certificate true\n",
        pw = pwfile.display(),
        d = d.display()
    );
    let broker = TestBroker::mosquitto_only(d, &extra).unwrap();
    wait_port(tls_port);
    let tls_url = format!("mqtts://127.0.0.1:{tls_port}");
    let right_pw = d.join("pw-right");
    let wrong_pw = d.join("pw-wrong");
    std::fs::write(&right_pw, "right-horse-battery\n").unwrap();
    std::fs::write(&wrong_pw, "wrong-secret-value\n").unwrap();
    let path = |n: &str| d.join(n).display().to_string();
    let base = |ca: &str, pw: &Path| -> Vec<String> {
        vec![
            "--broker".into(),
            tls_url.clone(),
            "--ca-file".into(),
            path(ca),
            "--client-cert".into(),
            path("client.pem"),
            "--client-key".into(),
            path("client.key"),
            "--username".into(),
            "ingest".into(),
            "--password-file".into(),
            pw.display().to_string(),
        ]
    };

    // Right CA, certificate and password: messages flow over TLS.
    let data = d.join("data");
    let args = base("ca.pem", &right_pw);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let ing = Ingester::spawn(&data, &argv);
    ing.wait_log("subscribed with QoS 1", 1);
    let plain = broker.url();
    assert_eq!(
        publish_all(&plain, "tls-pub", fleet(3, 100))
            .join()
            .unwrap(),
        300
    );
    assert_eq!(
        wait_rows(
            &data,
            "SELECT count(*) FROM vitals",
            300,
            Duration::from_secs(60)
        ),
        300
    );
    assert!(ing.stop());

    // Wrong CA, wrong password: each one clear error, quickly, and no secret in it.
    for (ca, pw, want) in [
        ("other-ca.pem", &right_pw, "not trusted"),
        ("ca.pem", &wrong_pw, "bad user name or password"),
    ] {
        let args = base(ca, pw);
        let o = Command::new(bin())
            .arg("--data-dir")
            .arg(d.join(format!("data-{want}")))
            .arg("run")
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{want}: exited 0");
        assert!(err.contains(want), "{want}: {err}");
        assert!(!err.contains("wrong-secret-value") && !err.contains("right-horse-battery"));
        assert!(
            err.lines().filter(|l| l.starts_with("error:")).count() == 1,
            "{want}: {err}"
        );
    }
}

/// Backpressure: with tokens held back (a store that does not finish), the source stops
/// reading at `max_pending_messages`; once tokens return, the rest flows and is acked.
#[test]
fn pending_window_bounds_memory_and_resumes() {
    use std::sync::Arc;
    use wallscope::clock::SystemClock;
    use wallscope::ingest::{IngestMetrics, MqttConfig, MqttSource};

    let tmp = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(tmp.path());
    let url = broker.url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (b, _, _) = BrokerUrl::parse(&url).unwrap();
        let mut cfg = MqttConfig::new(b, tmp.path());
        cfg.client_id = "window-test".into();
        cfg.max_pending_messages = 50;
        let metrics = Arc::new(IngestMetrics::default());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (mut source, acks) =
            MqttSource::start(cfg, metrics.clone(), Arc::new(SystemClock), stop_rx).unwrap();
        while metrics.subscriptions.get() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let publisher = tokio::task::spawn_blocking({
            let url = url.clone();
            move || {
                publish_all(&url, "window-pub", fleet(4, 250))
                    .join()
                    .unwrap()
            }
        });
        let mut held = Vec::new();
        while held.len() < 50 {
            held.push(source.deliveries.recv().await.unwrap().ack);
        }
        // Nothing more arrives while the window is full.
        let more = tokio::time::timeout(Duration::from_millis(700), source.deliveries.recv()).await;
        assert!(more.is_err(), "a delivery beyond the window");
        assert!(metrics.snapshot(0).paused);
        assert_eq!(metrics.snapshot(0).acks_pending, 50);
        // Return them: the rest flows, everything is acked.
        acks.ack(held);
        let mut seen = HashSet::new();
        while seen.len() < 950 {
            let d = source.deliveries.recv().await.unwrap();
            assert!(metrics.snapshot(0).acks_pending <= 50, "window exceeded");
            assert!(
                seen.insert((d.message.topic, d.message.payload)),
                "delivered twice"
            );
            acks.ack(vec![d.ack]);
        }
        assert_eq!(publisher.await.unwrap(), 1000);
        stop_tx.send(true).unwrap();
        MqttSource::join(source.task).await.unwrap();
        assert_eq!(metrics.acked.get(), 1000);
        assert!(metrics.snapshot(0).pauses >= 1);
    });
    // Give the broker a moment to read our last acks and DISCONNECT: a takeover by the next
    // client with this id could otherwise be processed first, and it would resend them.
    std::thread::sleep(Duration::from_millis(500));
    let left = drain_session(broker.port, "window-test");
    assert!(
        left.is_empty(),
        "{} messages still held by the broker",
        left.len()
    );
}
