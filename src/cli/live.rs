//! `run` and `demo`: live ingest from a broker, with a status line, signals and a summary.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::sync::watch;

use crate::batch::FlushPolicy;
use crate::broker;
use crate::clock::Clock;
use crate::config::{FileConfig, read_secret_file};
use crate::decode::DecodeConfig;
use crate::ingest::publish::Publisher;
use crate::ingest::{BrokerUrl, IngestMetrics, MetricsSnapshot, MqttConfig, Secret};
use crate::model::Table;
use crate::pipeline::live::{self, LiveConfig, LiveReport};
use crate::query::{self, OutputFormat, QueryConfig};
use crate::sim::{self, FaultCode, Simulator};
use crate::store::{Snapshot, StoreConfig};

/// How to reach and subscribe to the broker (`run`, `record`).
#[derive(Args, Debug, Default, Clone)]
pub struct BrokerArgs {
    /// Broker to subscribe to: mqtt://host:port or mqtts://host:port.
    #[arg(long, env = "WALLSCOPE_BROKER")]
    pub broker: Option<String>,
    /// TOML settings file ([mqtt], [batch], [store]; units in the key names).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Topic filter to subscribe to (repeatable); default wc/+/+.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// MQTT client id; default derived from the host name and data directory, so a
    /// restart resumes the same broker session.
    #[arg(long)]
    pub client_id: Option<String>,
    #[arg(long)]
    pub username: Option<String>,
    /// File whose first line is the password (or set WALLSCOPE_MQTT_PASSWORD).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) for mqtts://; the system roots when absent.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS.
    #[arg(long)]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long)]
    pub client_key: Option<PathBuf>,
}

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    #[command(flatten)]
    pub mqtt: BrokerArgs,
    /// Start the embedded broker and ingest from it (for local bridges and trials).
    #[arg(long, conflicts_with = "broker")]
    pub embedded_broker: bool,
    /// Address the embedded broker listens on [default: 127.0.0.1:1883; port 0 picks a free one].
    #[arg(long, requires = "embedded_broker")]
    pub embedded_listen: Option<SocketAddr>,
    /// Longest a message waits before its batch is committed and acked (e.g. 50ms).
    #[arg(long)]
    pub flush_interval: Option<String>,
    /// Messages received but not yet durable before reading pauses.
    #[arg(long)]
    pub max_pending_messages: Option<usize>,
    /// Seconds between status lines (0: none).
    #[arg(long, default_value_t = 2)]
    pub status_interval_s: u64,
    /// Ingest only: no live rule evaluation.
    #[arg(long)]
    pub no_rules: bool,
    /// Shortest time between the starts of two live rule evaluations (e.g. 2s).
    #[arg(long)]
    pub rules_interval: Option<String>,
    /// Findings only: no alerts, no notifications ([alerts] in --config sets them up).
    #[arg(long)]
    pub no_alerts: bool,
    /// Also serve the console and API on ADDR (e.g. 127.0.0.1:8080); `[serve]` of --config
    /// sets its limits and TLS.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Device registry for the rules (CSV or Parquet); default: devices.csv in the data
    /// directory.
    #[arg(long, value_name = "FILE")]
    pub devices: Option<PathBuf>,
    #[command(flatten)]
    pub rules: super::diagnose::RuleArgs,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of simulated chargers.
    #[arg(long, default_value_t = 200)]
    pub devices: usize,
    /// Simulated time span, ending now (published as fast as the pipeline takes it).
    #[arg(long, default_value = "6h")]
    pub duration: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// After the summary, keep serving the console on a loopback port (printed, with a
    /// one-off operator token) until Ctrl-C.
    #[arg(long)]
    pub serve: bool,
}

/// The broker settings: defaults, then the config file's `[mqtt]`, then flags. Returns the
/// config file too (its other sections are the caller's).
pub(super) fn mqtt_config(
    data_dir: &Path,
    a: &BrokerArgs,
    broker_url: Option<String>,
) -> anyhow::Result<(MqttConfig, FileConfig)> {
    let file = match &a.config {
        Some(p) => FileConfig::load(p).map_err(anyhow::Error::msg)?,
        None => FileConfig::default(),
    };
    let m = &file.mqtt;
    let url = broker_url
        .or_else(|| a.broker.clone())
        .or_else(|| m.broker.clone())
        .context("no broker: give --broker mqtt://host:port, set [mqtt] broker in --config, or use --embedded-broker")?;
    let (broker, url_user, url_pass) = BrokerUrl::parse(&url)?;
    let mut c = MqttConfig::new(broker, data_dir);
    if let Some(t) = &m.topics {
        c.topics = t.clone();
    }
    if !a.topics.is_empty() {
        c.topics = a.topics.clone();
    }
    if let Some(id) = a.client_id.clone().or_else(|| m.client_id.clone()) {
        c.client_id = id;
    }
    c.username = a
        .username
        .clone()
        .or_else(|| m.username.clone())
        .or(url_user);
    let pass_file = a.password_file.clone().or_else(|| m.password_file.clone());
    c.password = match pass_file {
        Some(p) => Some(Secret::new(
            read_secret_file(&p).map_err(anyhow::Error::msg)?,
        )),
        None => std::env::var("WALLSCOPE_MQTT_PASSWORD")
            .ok()
            .map(Secret::new)
            .or(url_pass),
    };
    c.ca_file = a.ca_file.clone().or_else(|| m.ca_file.clone());
    c.client_cert_file = a.client_cert.clone().or_else(|| m.client_cert_file.clone());
    c.client_key_file = a.client_key.clone().or_else(|| m.client_key_file.clone());
    if let Some(v) = m.keep_alive_s {
        c.keep_alive_s = v;
    }
    if let Some(v) = m.connect_timeout_s {
        c.connect_timeout_s = v;
    }
    if let Some(v) = m.max_packet_bytes {
        c.max_packet_bytes = v;
    }
    if let Some(v) = m.reconnect_min_ms {
        c.reconnect_min_ms = v;
    }
    if let Some(v) = m.reconnect_max_ms {
        c.reconnect_max_ms = v;
    }
    Ok((c, file))
}

/// Builds the live-ingest settings: defaults, then the config file, then flags.
fn live_config(
    data_dir: &Path,
    a: &RunArgs,
    broker_url: Option<String>,
) -> anyhow::Result<LiveConfig> {
    let (mut c, file) = mqtt_config(data_dir, &a.mqtt, broker_url)?;
    let m = &file.mqtt;
    if let Some(v) = a.max_pending_messages.or(m.max_pending_messages) {
        c.max_pending_messages = v;
    }
    if let Some(v) = m.max_pending_bytes {
        c.max_pending_bytes = v;
    }
    let mut flush = FlushPolicy {
        max_rows: 16_384,
        max_bytes: 16 << 20,
        max_age_ms: 50,
    };
    if let Some(v) = file.batch.flush_interval_ms {
        flush.max_age_ms = v;
    }
    if let Some(s) = &a.flush_interval {
        flush.max_age_ms = crate::config::parse_duration_ms(s)
            .map_err(|e| anyhow::anyhow!("--flush-interval: {e}"))?;
    }
    if let Some(v) = file.batch.max_rows {
        flush.max_rows = v.max(1);
    }
    if let Some(v) = file.batch.max_bytes {
        flush.max_bytes = v.max(1);
    }
    let mut store = StoreConfig::new(data_dir);
    if let Some(v) = file.store.wal_segment_bytes {
        store.wal_segment_bytes = v;
    }
    if let Some(v) = file.store.compact_after_rows {
        store.compact_after_rows = v;
    }
    if let Some(v) = file.store.compact_after_ms {
        store.compact_after_ms = v;
    }
    let rules = if a.no_rules {
        None
    } else {
        let interval_ms = match &a.rules_interval {
            Some(s) => crate::config::parse_duration_ms(s)
                .map_err(|e| anyhow::anyhow!("--rules-interval: {e}"))?
                .max(10) as u64,
            None => 2000,
        };
        let alerts = if a.no_alerts {
            None
        } else {
            let (settings, sinks) = crate::alerts::settings_from_file(
                &file.alerts,
                data_dir,
                Some(&c.broker),
                &c.client_id,
            )
            .map_err(|e| anyhow::anyhow!("config: {e}"))?;
            Some(crate::pipeline::live_rules::LiveAlerts {
                settings,
                sinks,
                drain_ms: 5000,
            })
        };
        Some(crate::pipeline::live_rules::LiveRules {
            alerts,
            pack: a.rules.load()?,
            devices: a
                .devices
                .as_deref()
                .map(crate::registry::load)
                .transpose()?,
            interval_ms,
            full_every_ms: 60_000,
        })
    };
    Ok(LiveConfig {
        store,
        mqtt: c,
        decode: DecodeConfig::default(),
        flush,
        status_interval_ms: file.batch.status_interval_ms.unwrap_or(2000),
        rules,
    })
}

/// Turns SIGINT/SIGTERM into `stop`; a second signal exits at once.
pub(super) fn stop_on_signals(stop: watch::Sender<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        for round in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if round == 0 {
                eprintln!(
                    "stopping: committing and acknowledging what was received (signal again to quit at once)"
                );
                let _ = stop.send(true);
            } else {
                eprintln!(
                    "quitting without draining; unacknowledged messages stay with the broker"
                );
                std::process::exit(130);
            }
        }
    })
}

/// Prints a status line every `every`, overwritten in place on a terminal; into a log
/// (stderr not a terminal) as a new line every 15 × `every`.
fn status_line(
    metrics: Arc<IngestMetrics>,
    clock: Arc<dyn Clock>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if every.is_zero() {
            return;
        }
        let tty = std::io::stderr().is_terminal();
        // In a log (not a terminal) a line every 2 s is noise: one every 15 intervals.
        let every = if tty { every } else { every * 15 };
        let mut last = metrics.snapshot(clock.now_ms());
        let mut printed = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => break,
            }
            let now = metrics.snapshot(clock.now_ms());
            let line = format_status(&last, &now);
            if tty {
                eprint!("\r\x1b[2K{line}");
                printed = true;
            } else {
                eprintln!("{line}");
            }
            last = now;
        }
        if printed {
            eprintln!();
        }
    })
}

fn format_status(prev: &MetricsSnapshot, now: &MetricsSnapshot) -> String {
    let secs = ((now.at_ms - prev.at_ms) as f64 / 1000.0).max(1e-3);
    let rate = (now.received - prev.received) as f64 / secs;
    format!(
        "{:>9.0} msg/s · {} rows durable · {} acks pending{} · {} dead letters · {} reconnects · ack p99 {}",
        rate,
        now.rows_durable,
        now.acks_pending,
        if now.paused {
            " (paused: store behind)"
        } else {
            ""
        },
        now.dead_letters,
        now.reconnects,
        now.ack_latency_p99_ms
            .map(|v| format!("{v} ms"))
            .unwrap_or_else(|| "-".into())
    )
}

pub fn cmd_run(
    data_dir: &Path,
    a: RunArgs,
    clock: Arc<dyn Clock>,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    rt.block_on(async {
        let embedded = if a.embedded_broker {
            let b = broker::start(
                a.embedded_listen
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 1883))),
            )?;
            eprintln!("embedded broker listening on {}", b.url());
            Some(b)
        } else {
            None
        };
        let cfg = live_config(data_dir, &a, embedded.as_ref().map(|b| b.url()))?;
        eprintln!(
            "ingesting {} from {} as client {:?} into {} (acks after fsync, flush interval {} ms)",
            cfg.mqtt.topics.join(" "),
            cfg.mqtt.broker,
            cfg.mqtt.client_id,
            data_dir.display(),
            cfg.flush.max_age_ms
        );
        let http = match a.http {
            Some(addr) => {
                let file = match &a.mqtt.config {
                    Some(p) => FileConfig::load(p).map_err(anyhow::Error::msg)?,
                    None => FileConfig::default(),
                };
                // `run` keeps the findings itself: no evaluation at start.
                let sa = super::serve::ServeArgs {
                    devices: a.devices.clone(),
                    rules: a.rules.clone(),
                    no_evaluate: true,
                    ..Default::default()
                };
                let cfg =
                    super::serve::serve_config(data_dir, &sa, &file, Some(addr), clock.clone())?;
                let server = crate::api::start(cfg).await?;
                super::serve::print_banner(&server, None);
                Some(server)
            }
            None => None,
        };
        let metrics = Arc::new(IngestMetrics::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        stop_on_signals(stop_tx.clone());
        let status = status_line(
            metrics.clone(),
            clock.clone(),
            Duration::from_secs(a.status_interval_s),
            stop_rx.clone(),
        );
        let result = live::run(cfg, clock, metrics, stop_rx).await;
        let _ = stop_tx.send(true);
        let _ = status.await;
        if let Some(s) = http {
            s.stop().await?;
        }
        let r = result?;
        print_run_summary(&r);
        Ok(ExitCode::SUCCESS)
    })
}

fn print_run_summary(r: &LiveReport) {
    let m = &r.metrics;
    let secs = m
        .started_ms
        .map(|s| (m.at_ms - s) as f64 / 1000.0)
        .unwrap_or(0.0)
        .max(1e-3);
    println!(
        "received {} messages in {:.1} s ({:.0} msg/s): {} durable, {} acked, {} dead letters, {} duplicates skipped",
        m.received,
        secs,
        m.received as f64 / secs,
        m.rows_durable,
        m.acked,
        m.dead_letters,
        r.duplicates
    );
    println!(
        "connections {}, reconnects {}, new sessions {}, redelivered {}; ack latency p50 {} p99 {}",
        m.connections,
        m.reconnects,
        m.sessions_lost,
        m.redelivered,
        m.ack_latency_p50_ms
            .map(|v| format!("{v} ms"))
            .unwrap_or_else(|| "-".into()),
        m.ack_latency_p99_ms
            .map(|v| format!("{v} ms"))
            .unwrap_or_else(|| "-".into()),
    );
    if m.rule_evaluations > 0 {
        println!(
            "live rules: {} evaluations ({:.0} ms mean), {} new finding(s), lag after durable last {} ms / max {} ms, findings complete up to {}{}",
            m.rule_evaluations,
            m.rule_eval_ms as f64 / m.rule_evaluations as f64,
            m.findings_new,
            m.rule_lag_ms_last,
            m.rule_lag_ms_max,
            crate::capture::format_rfc3339_ms(m.rule_watermark_ms),
            if m.rule_errors > 0 {
                format!(", {} errors (see the log)", m.rule_errors)
            } else {
                String::new()
            }
        );
    }
    if r.open.recovery.torn_tails > 0 {
        println!(
            "recovered a torn WAL tail at start ({} bytes dropped; those messages were never acked and came again)",
            r.open.recovery.torn_bytes
        );
    }
}

/// Appends the last live ingest's counters to `status`.
pub fn print_ingest_status(data_dir: &Path) {
    let Some(m) = crate::ingest::read_status(data_dir) else {
        return;
    };
    let age_s = (chrono::Utc::now().timestamp_millis() - m.at_ms) as f64 / 1000.0;
    println!();
    println!("live ingest (counters written {age_s:.0} s ago):");
    for (name, v) in m.rows() {
        if v.is_nan() {
            println!("  {name:<20} -");
        } else {
            println!("  {name:<20} {v}");
        }
    }
}

/// How far the demo's publisher may run ahead of what is durable.
const DEMO_WINDOW_MSGS: u64 = 20_000;

pub fn cmd_demo(
    data_dir: &Path,
    a: DemoArgs,
    clock: Arc<dyn Clock>,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    let wall = clock.clone();
    let duration_ms = crate::config::parse_duration_ms(&a.duration)
        .map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    // End the simulated span now, so event times pass the ingest's time-window check.
    let now = clock.now_ms();
    let start_ms = (now - duration_ms) / 60_000 * 60_000;
    let start = crate::capture::format_rfc3339_ms(start_ms);
    let mut cfg = super::sim_config(a.devices, &a.duration, a.seed, "10s", Some(&start))?;
    cfg.faults = vec![
        FaultCode::F01,
        FaultCode::F03,
        FaultCode::F07,
        FaultCode::F14,
    ];
    cfg.fault_rate = 0.05;
    let mut sim = Simulator::new(cfg)?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let started = Instant::now();
    let b = broker::start(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    println!(
        "embedded MQTT broker on {} · simulating {} chargers over the last {} (seed {}, {} injected faults)",
        b.url(),
        a.devices,
        a.duration,
        a.seed,
        sim.labels().len()
    );
    let mut reg = std::fs::File::create(data_dir.join("devices.csv"))?;
    sim::write_devices_csv(sim.devices(), &mut reg)?;
    let mut lab = std::fs::File::create(data_dir.join("demo-labels.csv"))?;
    sim::write_labels_csv(sim.labels(), &mut lab)?;

    let run_args = RunArgs {
        mqtt: BrokerArgs {
            client_id: Some(format!(
                "{}-demo",
                crate::ingest::default_client_id(data_dir)
            )),
            ..BrokerArgs::default()
        },
        // rumqttd forwards at most 100 unacked messages per subscriber: commit often.
        flush_interval: Some("1ms".into()),
        // The whole simulated fleet is new data at every step; evaluate less often than a
        // steady-state `run` so the rules do not starve the burst of ingest.
        rules_interval: Some("10s".into()),
        ..RunArgs::default()
    };
    let live_cfg = live_config(data_dir, &run_args, Some(b.url()))?;
    let broker_url = live_cfg.mqtt.broker.clone();
    let report = rt.block_on(async move {
        let metrics = Arc::new(IngestMetrics::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let signals = stop_on_signals(stop_tx.clone());
        let ingest = tokio::spawn(live::run(
            live_cfg,
            clock.clone(),
            metrics.clone(),
            stop_rx.clone(),
        ));
        // Publish only once the subscription stands: the broker keeps nothing for a
        // subscriber it does not know yet.
        let deadline = Instant::now() + Duration::from_secs(10);
        while metrics.subscriptions.get() == 0 {
            if ingest.is_finished() || Instant::now() > deadline {
                let _ = stop_tx.send(true);
                return match ingest.await {
                    Ok(Err(e)) => Err(anyhow::Error::from(e)),
                    _ => Err(anyhow::anyhow!(
                        "the ingester did not subscribe to the embedded broker within 10 s"
                    )),
                };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let bar = progress_bar();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(8192);
        let producer = tokio::task::spawn_blocking(move || {
            sim.run(&mut |rec| {
                tx.blocking_send((rec.topic, rec.payload))
                    .map_err(|_| std::io::Error::other("publisher stopped"))
            })
            .map(|stats| stats.messages)
        });
        let mut publisher = Publisher::start(&broker_url, "wallscope-demo-publisher", 1000)?;
        let mut last_tick = Instant::now();
        while let Some((topic, payload)) = rx.recv().await {
            if *stop_rx.borrow() {
                break;
            }
            // Pace the publisher to the ingest: rumqttd keeps unread messages in bounded
            // memory segments and forwards at most 100 unacked messages per subscriber, so
            // running far ahead would only fill (and eventually evict) its log.
            while publisher.published() > metrics.rows_durable.get() + DEMO_WINDOW_MSGS {
                if ingest.is_finished() || *stop_rx.borrow() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            publisher.publish(&topic, payload).await?;
            if last_tick.elapsed() > Duration::from_millis(100) {
                last_tick = Instant::now();
                bar.update(publisher.published(), metrics.rows_durable.get());
            }
        }
        drop(rx);
        let simulated = producer
            .await
            .map_err(|e| anyhow::anyhow!("simulator: {e}"))??;
        let published = publisher.published();
        publisher.finish(Duration::from_secs(60)).await?;
        // Wait until everything published is durable (and acked), then drain and stop.
        let deadline = Instant::now() + Duration::from_secs(120);
        while metrics.rows_durable.get() < published && !*stop_rx.borrow() {
            if ingest.is_finished() || Instant::now() > deadline {
                break;
            }
            bar.update(published, metrics.rows_durable.get());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bar.finish();
        let _ = stop_tx.send(true);
        let report = ingest
            .await
            .map_err(|e| anyhow::anyhow!("ingest task: {e}"))??;
        // The ingest is over: Ctrl-C from here on belongs to `--serve`.
        signals.abort();
        if report.metrics.rows_durable < published {
            bail!(
                "only {} of {} published messages were ingested",
                report.metrics.rows_durable,
                published
            );
        }
        Ok::<_, anyhow::Error>((report, simulated))
    })?;
    let (report, simulated) = report;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {} messages through MQTT and stored them durably in {:.1} s ({:.0} msg/s end to end)",
        simulated,
        secs,
        simulated as f64 / secs.max(1e-3)
    );
    print_run_summary(&report);
    print_tables(data_dir, rt)?;
    super::diagnose::evaluate_store_and_print(data_dir, rt)?;
    let alerted = super::alerts::evaluate_batch(
        data_dir,
        None,
        &crate::alerts::Settings::default(),
        wall.now_ms(),
        rt,
    )?;
    super::alerts::print_outcome(&alerted, data_dir);
    let dir = data_dir.display();
    println!("explore the data:");
    println!(
        "  wallscope --data-dir {dir} sql \"SELECT fault, severity, count(*) FROM findings GROUP BY 1, 2 ORDER BY 1\""
    );
    println!("  wallscope diagnose --store {dir}");
    println!(
        "  wallscope --data-dir {dir} sql \"SELECT device_id, max(handle_temp_c) FROM vitals GROUP BY device_id ORDER BY 2 DESC LIMIT 5\""
    );
    println!(
        "  wallscope --data-dir {dir} sql \"SELECT error_class, count(*) FROM dead_letters GROUP BY 1\""
    );
    println!("  wallscope --data-dir {dir} alerts list");
    println!("  wallscope --data-dir {dir} forecast --horizon 14d");
    println!("  wallscope --data-dir {dir} status");
    println!(
        "ground truth for the injected faults: {}",
        data_dir.join("demo-labels.csv").display()
    );
    if !a.serve {
        println!("open the console (dashboard, API, metrics):");
        println!("  wallscope --data-dir {dir} token create --name me --role operator");
        println!("  wallscope --data-dir {dir} serve --listen 127.0.0.1:8080");
        println!("  (or run the demo with --serve)");
        return Ok(ExitCode::SUCCESS);
    }
    // A one-off operator token, in memory only: it dies with this process.
    let token = crate::api::auth::generate()?;
    let mut cfg = super::serve::serve_config(
        data_dir,
        &super::serve::ServeArgs::default(),
        &FileConfig::default(),
        Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        wall,
    )?;
    cfg.extra_tokens
        .add_ephemeral("demo", crate::api::Role::Operator, &token);
    rt.block_on(async move {
        let server = crate::api::start(cfg).await?;
        super::serve::print_banner(&server, Some(&token));
        println!("serving until Ctrl-C");
        super::serve::until_signal().await;
        server.stop().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn print_tables(data_dir: &Path, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let snapshot = Snapshot::load(data_dir)?;
    let rows: Vec<String> = Table::ALL
        .iter()
        .map(|t| format!("{} {}", t.name(), snapshot.rows(*t)))
        .collect();
    println!("stored rows: {}", rows.join(", "));
    let q = "SELECT count(DISTINCT device_id) AS devices, count(*) AS vitals_rows, \
             round(max(vehicle_current_a), 1) AS max_current_a, \
             sum(CASE WHEN contactor_closed THEN 1 ELSE 0 END) AS contactor_closed_samples FROM vitals";
    let batches = rt.block_on(query::query_snapshot(&snapshot, &QueryConfig::default(), q))?;
    println!("{}", query::render(&batches, OutputFormat::Table)?);
    Ok(())
}

/// Published vs durable, on a terminal.
struct DemoBar(Option<indicatif::ProgressBar>);

fn progress_bar() -> DemoBar {
    if !std::io::stderr().is_terminal() {
        return DemoBar(None);
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    DemoBar(Some(pb))
}

impl DemoBar {
    fn update(&self, published: u64, durable: u64) {
        if let Some(pb) = &self.0 {
            pb.set_message(format!(
                "published {published} · durable and acked {durable}"
            ));
        }
    }
    fn finish(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}
