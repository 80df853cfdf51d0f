//! `record`, `replay` and `export`: capture live traffic, publish a capture back on its
//! schedule, and cut a case file from the store.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use tokio::sync::watch;

use super::live::{BrokerArgs, mqtt_config, stop_on_signals};
use crate::clock::Clock;
use crate::config::parse_duration_ms;
use crate::ingest::{BrokerUrl, IngestMetrics};
use crate::pipeline::export::{ExportSpec, export};
use crate::pipeline::record::{RecordConfig, record};
use crate::pipeline::replay::{ReplayConfig, ReplayStats, Rewrite, Speed, replay};
use crate::source::InputFormat;

#[derive(Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    pub mqtt: BrokerArgs,
    /// Capture file to write (appended to if it exists); `.zst` compresses.
    #[arg(long)]
    pub out: PathBuf,
    /// Rotate when the file reaches this size (e.g. 512MiB, 1GiB).
    #[arg(long, value_name = "SIZE")]
    pub rotate_size: Option<String>,
    /// Rotate when the file's first message is this old (e.g. 1h, 1d).
    #[arg(long, value_name = "DURATION")]
    pub rotate_every: Option<String>,
    /// Longest a message waits before it is written, fsynced and acked (e.g. 100ms).
    #[arg(long, default_value = "100ms")]
    pub flush_interval: String,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Captures (`.jsonl`, `.jsonl.zst`, `.parquet`) or vitals logs, replayed in order.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Broker to publish to: mqtt://host:port.
    #[arg(long)]
    pub to: String,
    /// 1 (original timing), 10, 100, any factor, or max.
    #[arg(long, default_value = "1")]
    pub speed: String,
    #[arg(long, value_enum, default_value = "capture")]
    pub format: InputFormat,
    /// Device id for vitals logs.
    #[arg(long)]
    pub device: Option<String>,
    /// Replay again and again (each pass moved on by the input's span); stop with Ctrl-C.
    #[arg(long = "loop")]
    pub loop_forever: bool,
    /// Map device ids: FROM=TO, FROM an id or *, TO with {id} and one {a..b} range
    /// (e.g. wc0001=load{1..1000} clones one charger into a thousand). Repeatable.
    #[arg(long, value_name = "FROM=TO")]
    pub rewrite_device: Vec<String>,
    /// Move time: `now` (the capture starts now) or a signed duration (e.g. +30d, -2h).
    #[arg(long, allow_hyphen_values = true)]
    pub shift_time: Option<String>,
    /// Unacknowledged messages in flight.
    #[arg(long, default_value_t = 1000)]
    pub inflight: u16,
    /// When the broker connection drops, keep reconnecting this long (unacknowledged
    /// messages are sent again: at least once); 0s fails at once.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub reconnect_for: String,
    /// MQTT client id of the publisher.
    #[arg(long, default_value = "wallscope-replay")]
    pub client_id: String,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The charger.
    #[arg(long)]
    pub device: String,
    /// From (RFC 3339, inclusive).
    #[arg(long)]
    pub since: Option<String>,
    /// To (RFC 3339, exclusive).
    #[arg(long)]
    pub until: Option<String>,
    /// Case file: .jsonl, .jsonl.zst or .parquet (findings go beside it).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub rules: super::diagnose::RuleArgs,
}

/// `512MiB`, `1GiB`, `200MB`, `1000` (bytes).
fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("size {s:?}: expected a number and a unit, e.g. 512MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        u => bail!("size {s:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, KB, MB, GB)"),
    };
    n.checked_mul(mult)
        .filter(|b| *b > 0)
        .with_context(|| format!("size {s:?} must be above zero and fit in 64 bits"))
}

pub fn cmd_record(
    a: RecordArgs,
    clock: Arc<dyn Clock>,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    let dir = a
        .out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (mut mqtt, _) = mqtt_config(&dir, &a.mqtt, None)?;
    if a.mqtt.client_id.is_none() {
        // Not `run`'s session: a recorder beside a running ingest must not steal its queue.
        mqtt.client_id = format!("{}-record", mqtt.client_id);
    }
    let cfg = RecordConfig {
        mqtt,
        out: a.out.clone(),
        rotate_bytes: a.rotate_size.as_deref().map(parse_size).transpose()?,
        rotate_ms: a
            .rotate_every
            .as_deref()
            .map(parse_duration_ms)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--rotate-every: {e}"))?,
        flush_interval_ms: parse_duration_ms(&a.flush_interval)
            .map_err(|e| anyhow::anyhow!("--flush-interval: {e}"))?
            .max(1) as u64,
    };
    let broker = cfg.mqtt.broker.redacted();
    eprintln!(
        "recording {} from {broker} into {} (Ctrl-C to stop)",
        cfg.mqtt.topics.join(", "),
        a.out.display()
    );
    let report = rt.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        stop_on_signals(stop_tx);
        record(cfg, clock, Arc::new(IngestMetrics::default()), stop_rx).await
    })?;
    println!(
        "recorded {} messages ({:.1} MiB) into {}{}",
        report.messages,
        report.bytes as f64 / (1 << 20) as f64,
        a.out.display(),
        if report.rotated.is_empty() {
            String::new()
        } else {
            format!(" and {} rotated file(s)", report.rotated.len())
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_replay(a: ReplayArgs, rt: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    super::check_import_args(a.format, a.device.as_deref(), &a.files)?;
    let (broker, _, _) = BrokerUrl::parse(&a.to)?;
    let speed = Speed::parse(&a.speed)?;
    let rewrites = a
        .rewrite_device
        .iter()
        .map(|r| Rewrite::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    let shift_ms = match a.shift_time.as_deref() {
        None => 0,
        Some("now") => {
            let first = first_time(&a.files, a.format, a.device.as_deref())?;
            chrono::Utc::now().timestamp_millis() - first
        }
        Some(s) => {
            let (sign, d) = match s.strip_prefix('-') {
                Some(rest) => (-1, rest),
                None => (1, s.strip_prefix('+').unwrap_or(s)),
            };
            sign * parse_duration_ms(d).map_err(|e| {
                anyhow::anyhow!("--shift-time {s:?}: {e} (or `now`, e.g. +30d, -2h)")
            })?
        }
    };
    let cfg = ReplayConfig {
        broker,
        client_id: a.client_id.clone(),
        files: a.files.clone(),
        format: a.format,
        device: a.device.clone(),
        speed,
        loop_passes: a.loop_forever.then_some(u64::MAX),
        rewrites,
        shift_ms,
        inflight: a.inflight.max(1),
        reconnect_for_ms: parse_duration_ms(&a.reconnect_for)
            .map_err(|e| {
                anyhow::anyhow!(
                    "--reconnect-for {:?}: {e} (e.g. 60s, 5m, 0s)",
                    a.reconnect_for
                )
            })?
            .max(0) as u64,
    };
    let total = crate::source::total_bytes(&a.files);
    let bar = std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new(total);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} replaying [{bar:30}] {bytes}/{total_bytes} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb
    });
    let looping = a.loop_forever;
    let mut last = (0u64, std::time::Instant::now());
    let mut on_progress = |s: &ReplayStats| {
        let Some(pb) = &bar else { return };
        // A loop reads the input again and again: show where in it the current pass is.
        pb.set_position(if looping {
            s.bytes_read % total.max(1)
        } else {
            s.bytes_read.min(total)
        });
        let dt = last.1.elapsed().as_secs_f64().max(1e-3);
        let rate = (s.published - last.0) as f64 / dt;
        last = (s.published, std::time::Instant::now());
        let lag = match s.lag.quantile_ms(0.99) {
            Some(p) => format!(", behind schedule p99 {p} ms"),
            None => String::new(),
        };
        let reconnects = match s.reconnects {
            0 => String::new(),
            n => format!(", reconnected {n}×"),
        };
        pb.set_message(format!(
            "{} msgs, {rate:.0} msg/s{lag}{reconnects}",
            s.published
        ));
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = replay(&cfg, &mut on_progress) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }
    let Some(stats) = result else {
        eprintln!("replay stopped");
        return Ok(ExitCode::from(130));
    };
    let stats = stats?;
    let secs = stats.elapsed_ms.max(1) as f64 / 1000.0;
    println!(
        "replayed {} messages ({} acknowledged) in {secs:.1} s, {:.0} msg/s",
        stats.published,
        stats.acked,
        stats.published as f64 / secs
    );
    if let (Some(p50), Some(p99)) = (stats.lag.quantile_ms(0.5), stats.lag.quantile_ms(0.99)) {
        println!(
            "behind schedule: p50 {p50} ms, p99 {p99} ms, max {} ms",
            stats.lag.max_ms()
        );
    }
    if stats.reconnects > 0 {
        println!(
            "the broker connection dropped {} time(s); unacknowledged messages were sent again (at least once)",
            stats.reconnects
        );
    }
    if stats.bad_lines > 0 {
        eprintln!("note: {} malformed line(s) skipped", stats.bad_lines);
        for b in &stats.bad_line_samples {
            eprintln!("  {}:{}: {}", b.path.display(), b.line, b.why);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The first message's time of the input (for `--shift-time now`).
fn first_time(files: &[PathBuf], format: InputFormat, device: Option<&str>) -> anyhow::Result<i64> {
    let mut first = None;
    for f in files {
        crate::source::read_file(
            f,
            format,
            device,
            &mut |m| {
                first = Some(first.map_or(m.received_at_ms, |x: i64| x.min(m.received_at_ms)));
            },
            &mut |_| {},
            &mut |_| {},
        )?;
    }
    first.context("the input has no messages to replay")
}

pub fn cmd_export(
    data_dir: &Path,
    a: ExportArgs,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    let time = |name: &str, v: &Option<String>| -> anyhow::Result<Option<i64>> {
        v.as_deref()
            .map(|s| {
                crate::capture::parse_rfc3339_ms(s).with_context(|| {
                    format!("{name} {s:?} is not an RFC 3339 time (e.g. 2026-01-05T00:00:00Z)")
                })
            })
            .transpose()
    };
    crate::model::parse_topic(&format!("wc/{}/vitals", a.device))
        .map_err(|_| crate::source::SourceError::BadDevice(a.device.clone()))?;
    let spec = ExportSpec {
        device: a.device.clone(),
        since_ms: time("--since", &a.since)?,
        until_ms: time("--until", &a.until)?,
        out: a.out.clone(),
    };
    let pack = a.rules.load()?;
    let snapshot = super::open_snapshot(data_dir)?;
    let r = rt.block_on(export(
        &snapshot,
        &pack,
        &spec,
        &crate::query::QueryConfig::default(),
    ))?;
    if r.records == 0 {
        bail!(
            "no telemetry for {} in that range in {} (wallscope sql \"SELECT device_id, MIN(ts), MAX(ts) FROM vitals GROUP BY device_id\" lists what is there)",
            a.device,
            data_dir.display()
        );
    }
    let rows: Vec<String> = r
        .rows
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(t, n)| format!("{n} {}", t.name()))
        .collect();
    println!(
        "wrote {} ({} records: {}; {} → {}) and {} finding(s) to {}",
        a.out.display(),
        r.records,
        rows.join(", "),
        r.first_ms
            .map(crate::capture::format_rfc3339_ms)
            .unwrap_or_default(),
        r.last_ms
            .map(crate::capture::format_rfc3339_ms)
            .unwrap_or_default(),
        r.findings,
        r.findings_file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("0").is_err() && parse_size("1 parsec").is_err());
    }
}
