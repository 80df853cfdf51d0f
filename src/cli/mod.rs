//! The command line: argument parsing, human output, exit codes.
//!
//! Every command takes the global `--data-dir` (before or after the subcommand). Output for
//! people goes to stdout, diagnostics to stderr; errors are one line that says what to fix.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::clock::{Clock, SystemClock};
use crate::config::parse_duration_ms;
use crate::model::Table;
use crate::pipeline::{self, ImportReport, Progress};
use crate::query::{self, OutputFormat, QueryConfig, QueryError};
use crate::sim::{self, FaultCode, SimConfig, Simulator};
use crate::source::InputFormat;
use crate::store::{Snapshot, StoreConfig};

mod alerts;
mod diagnose;
mod live;
mod replay;
mod serve;

#[derive(Parser, Debug)]
#[command(
    name = "wallscope",
    version,
    about = "Remote diagnostics for EV wall chargers: lossless telemetry ingest, SQL over Arrow/Parquet, fault rules with ordered fix steps",
    propagate_version = true
)]
pub struct Cli {
    /// Data directory (WAL, Parquet, manifest).
    #[arg(
        long,
        global = true,
        env = "WALLSCOPE_DATA_DIR",
        default_value = "./wallscope-data"
    )]
    pub data_dir: PathBuf,

    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Import vitals logs or capture files into the store.
    Import(ImportArgs),
    /// Run a read-only SQL query over the store.
    Sql(SqlArgs),
    /// Write a simulated fleet as a capture file, with a device registry and fault labels.
    Simulate(SimulateArgs),
    /// Subscribe to an MQTT broker and ingest charger telemetry (acks only after fsync).
    Run(live::RunArgs),
    /// Start an embedded broker, publish a simulated fleet with faults into it, ingest it
    /// through MQTT and summarise (nothing to install).
    Demo(live::DemoArgs),
    /// Show what the data directory holds.
    Status,
    /// Replay captures or logs (or a store) through the rules; print findings with
    /// evidence and ordered steps.
    Diagnose(diagnose::DiagnoseArgs),
    /// One screen on one charger: status, latest vitals against normal ranges, sessions,
    /// active findings with steps, lifetime counters, Wi-Fi.
    Health(diagnose::HealthArgs),
    /// Score the rules on a labelled capture: per-fault precision and recall.
    Eval(diagnose::EvalArgs),
    /// Check or list the diagnostic rules.
    #[command(subcommand)]
    Rules(diagnose::RulesCommand),
    /// Subscribe like `run` and write every message to a capture file (byte-exact, receive
    /// times; acked after fsync).
    Record(replay::RecordArgs),
    /// Publish captures or logs back into a broker on their original schedule, scaled.
    Replay(replay::ReplayArgs),
    /// Cut a case file (one charger, a time range, its findings) from the store.
    Export(replay::ExportArgs),
    /// List, show, acknowledge and silence alerts.
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
    /// Forecast new fault episodes per day, per fault and per owner, with a back-test.
    Forecast(alerts::ForecastArgs),
    /// Serve the specialist console: dashboard, HTTP API (/api/v1), /metrics, /healthz.
    Serve(serve::ServeArgs),
    /// Create, list or revoke API tokens (only their hashes are stored).
    #[command(subcommand)]
    Token(serve::TokenCommand),
}

impl Command {
    /// How long mimalloc keeps a freed page before handing it back to the kernel, in ms
    /// (`None`: its default, 10 ms; -1: never). Every page handed back is faulted in zeroed
    /// again on its next use, and in this VM that costs more than the work itself (on the
    /// 1,000-charger pack, 7–14 s of kernel time in a 22–27 s run).
    ///
    /// - Batch commands (they run to completion over data they hold in memory) keep
    ///   their pages: the process ends soon.
    /// - `run` and `demo` evaluate rules live: every evaluation climbs back to the same
    ///   peak, so pages are kept for a minute, and returned once evaluations stop.
    /// - `serve`, `record` and `replay` keep the default: their footprint shrinks after a
    ///   burst.
    pub fn purge_delay_ms(&self) -> Option<i64> {
        match self {
            Command::Import(_)
            | Command::Sql(_)
            | Command::Diagnose(_)
            | Command::Eval(_)
            | Command::Rules(_)
            | Command::Export(_) => Some(-1),
            Command::Run(_) | Command::Demo(_) => Some(LIVE_PURGE_DELAY_MS),
            _ => None,
        }
    }
}

/// How long `run` and `demo` keep freed pages: longer than the time between two live
/// evaluations, short enough that an idle process gives its peak back.
const LIVE_PURGE_DELAY_MS: i64 = 60_000;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Input format.
    #[arg(long, value_enum, default_value = "capture")]
    pub format: InputFormat,
    /// Device id for vitals logs (their lines carry none).
    #[arg(long)]
    pub device: Option<String>,
    /// Files to import.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SqlArgs {
    /// The query (SELECT, WITH, EXPLAIN, SHOW, DESCRIBE).
    pub query: String,
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Memory the query may use, in MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory_limit_mb: usize,
    /// Also compute the rule layer's shared views (samples, contactor_episodes, sessions,
    /// baselines) so the query can read them, as a rule would.
    #[arg(long)]
    pub views: bool,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Number of chargers.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Simulated time span (e.g. 24h, 30m, 7d).
    #[arg(long, default_value = "24h")]
    pub duration: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Capture file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Faults to inject (each into its own device), e.g. --fault F01 F07.
    #[arg(long, num_args = 1..)]
    pub fault: Vec<String>,
    /// Fraction of devices that get a random injectable fault (0–1).
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,
    /// Vitals poll period (2s–30s).
    #[arg(long, default_value = "10s")]
    pub poll_interval: String,
    /// Simulated start time (RFC 3339); default 2026-01-05T00:00:00Z.
    #[arg(long)]
    pub start: Option<String>,
    /// Turn off firmware quirks (nan, truncated JSON, timeouts).
    #[arg(long)]
    pub no_quirks: bool,
    /// Device registry to write (default: devices.csv beside --out).
    #[arg(long)]
    pub devices_out: Option<PathBuf>,
    /// Fault labels to write (default: labels.csv beside --out).
    #[arg(long)]
    pub labels_out: Option<PathBuf>,
}

/// Runs the parsed command; the error is printed by `main`.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match cli.command {
        Command::Import(a) => cmd_import(&cli.data_dir, a, clock),
        Command::Sql(a) => rt.block_on(cmd_sql(&cli.data_dir, a)),
        Command::Simulate(a) => cmd_simulate(a),
        Command::Run(a) => live::cmd_run(&cli.data_dir, a, clock, &rt),
        Command::Demo(a) => live::cmd_demo(&cli.data_dir, a, clock, &rt),
        Command::Status => cmd_status(&cli.data_dir),
        Command::Diagnose(a) => diagnose::cmd_diagnose(a, clock, &rt),
        Command::Eval(a) => diagnose::cmd_eval(a, clock, &rt),
        Command::Health(a) => diagnose::cmd_health(&cli.data_dir, a, &rt),
        Command::Rules(c) => diagnose::cmd_rules(c, clock, &rt),
        Command::Record(a) => replay::cmd_record(a, clock, &rt),
        Command::Replay(a) => replay::cmd_replay(a, &rt),
        Command::Export(a) => replay::cmd_export(&cli.data_dir, a, &rt),
        Command::Alerts(c) => alerts::cmd_alerts(&cli.data_dir, c, clock, &rt),
        Command::Forecast(a) => alerts::cmd_forecast(&cli.data_dir, a, &rt),
        Command::Serve(a) => serve::cmd_serve(&cli.data_dir, a, clock, &rt),
        Command::Token(c) => serve::cmd_token(&cli.data_dir, c, clock),
    }
}

/// An indicatif bar on stderr, hidden when stderr is not a terminal.
pub(crate) struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    pub(crate) fn new() -> Self {
        Bar(None)
    }
}

impl Progress for Bar {
    fn start(&mut self, total: u64) {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let pb = indicatif::ProgressBar::new(total);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} importing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        self.0 = Some(pb);
    }
    fn advance(&mut self, bytes: u64) {
        if let Some(pb) = &self.0 {
            pb.inc(bytes);
        }
    }
    fn finish(&mut self) {
        if let Some(pb) = self.0.take() {
            pb.finish_and_clear();
        }
    }
}

/// Checks import-style arguments before any work starts.
pub(crate) fn check_import_args(
    format: InputFormat,
    device: Option<&str>,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    if format == InputFormat::Capture && device.is_some() {
        bail!(
            "--device only applies to --format vitals-log (capture lines name their device in the topic)"
        );
    }
    if format == InputFormat::VitalsLog {
        let d = device.ok_or(crate::source::SourceError::NeedDevice)?;
        crate::model::parse_topic(&format!("wc/{d}/vitals"))
            .map_err(|_| crate::source::SourceError::BadDevice(d.into()))?;
    }
    for f in files {
        if !f.is_file() {
            bail!("{}: no such file", f.display());
        }
    }
    Ok(())
}

fn cmd_import(data_dir: &Path, a: ImportArgs, clock: Arc<dyn Clock>) -> anyhow::Result<ExitCode> {
    check_import_args(a.format, a.device.as_deref(), &a.files)?;
    let r = pipeline::import_files(
        StoreConfig::new(data_dir),
        &a.files,
        a.format,
        a.device.as_deref(),
        clock,
        &mut Bar::new(),
    )?;
    print_import(&r);
    // Exit 1 when something in the input was not usable, so scripts notice.
    Ok(if r.bad_lines > 0 || r.dead() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) fn print_import(r: &ImportReport) {
    let mut out = std::io::stdout().lock();
    let secs = r.elapsed_ms as f64 / 1000.0;
    let _ = writeln!(
        out,
        "imported {} messages from {} file(s) in {:.2} s ({:.0} msg/s)",
        r.messages,
        r.files,
        secs,
        r.messages as f64 / secs.max(1e-3)
    );
    let rows: Vec<String> = Table::TELEMETRY
        .iter()
        .map(|t| format!("{} {}", t.name(), r.rows(*t)))
        .collect();
    let _ = writeln!(out, "  rows: {}", rows.join(", "));
    if r.duplicates > 0 {
        let _ = writeln!(
            out,
            "  duplicates skipped (already stored): {}",
            r.duplicates
        );
    }
    if r.dead() > 0 {
        let by: Vec<String> = r
            .dead_by_class()
            .iter()
            .map(|(c, n)| format!("{} {n}", c.as_str()))
            .collect();
        let _ = writeln!(out, "  dead letters: {} ({})", r.dead(), by.join(", "));
    }
    if r.decode.repaired_truncations > 0 {
        let _ = writeln!(
            out,
            "  repaired payloads (missing final brace): {}",
            r.decode.repaired_truncations
        );
    }
    if r.decode.unknown_fields > 0 {
        let _ = writeln!(
            out,
            "  rows with unknown fields (kept in `extra`): {}",
            r.decode.unknown_fields
        );
    }
    if r.open.recovery.torn_tails > 0 {
        let _ = writeln!(
            out,
            "  recovered a torn WAL tail ({} bytes dropped)",
            r.open.recovery.torn_bytes
        );
    }
    if r.bad_lines > 0 {
        let _ = writeln!(out, "  skipped {} malformed line(s):", r.bad_lines);
        for b in &r.bad_line_samples {
            let _ = writeln!(out, "    {}:{}: {}", b.path.display(), b.line, b.why);
        }
    }
}

async fn cmd_sql(data_dir: &Path, a: SqlArgs) -> anyhow::Result<ExitCode> {
    let snapshot = open_snapshot(data_dir)?;
    let cfg = QueryConfig {
        memory_limit_bytes: a.memory_limit_mb.max(16) << 20,
        ..QueryConfig::default()
    };
    let ctx = query::session(&snapshot, &cfg)?;
    if a.views {
        crate::rules::engine::register_views(&ctx)
            .await
            .context("cannot compute the rule views")?;
    }
    match query::run_readonly(&ctx, &a.query).await {
        Ok(batches) => {
            let text = query::render(&batches, a.format)?;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            if a.format == OutputFormat::Table && !text.ends_with('\n') {
                out.write_all(b"\n")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ QueryError::Refused(_)) => bail!("{e}"),
        Err(e) => bail!("query failed: {e}"),
    }
}

pub(crate) fn open_snapshot(data_dir: &Path) -> anyhow::Result<Snapshot> {
    if !data_dir.exists() {
        bail!(
            "data directory {} does not exist: import data first (wallscope import …) or pass --data-dir",
            data_dir.display()
        );
    }
    Ok(Snapshot::load(data_dir)?)
}

fn parse_faults(codes: &[String]) -> anyhow::Result<Vec<FaultCode>> {
    codes
        .iter()
        .flat_map(|c| c.split(','))
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.trim()
                .to_uppercase()
                .parse::<FaultCode>()
                .map_err(|_| anyhow::anyhow!("unknown fault code {c:?} for --fault (e.g. F01)"))
        })
        .collect()
}

pub(crate) fn sim_config(
    devices: usize,
    duration: &str,
    seed: u64,
    poll: &str,
    start: Option<&str>,
) -> anyhow::Result<SimConfig> {
    let duration_ms =
        parse_duration_ms(duration).map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    let poll_interval_ms =
        parse_duration_ms(poll).map_err(|e| anyhow::anyhow!("--poll-interval: {e}"))?;
    let start_ms = match start {
        Some(s) => crate::capture::parse_rfc3339_ms(s).ok_or_else(|| {
            anyhow::anyhow!("--start {s:?} is not an RFC 3339 time (e.g. 2026-01-05T00:00:00Z)")
        })?,
        None => 1_767_571_200_000, // 2026-01-05T00:00:00Z, a Monday
    };
    Ok(SimConfig {
        devices,
        start_ms,
        duration_ms,
        seed,
        poll_interval_ms,
        ..SimConfig::default()
    })
}

fn cmd_simulate(a: SimulateArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = sim_config(
        a.devices,
        &a.duration,
        a.seed,
        &a.poll_interval,
        a.start.as_deref(),
    )?;
    cfg.faults = parse_faults(&a.fault)?;
    cfg.fault_rate = a.fault_rate;
    cfg.quirks = !a.no_quirks;
    let mut sim = Simulator::new(cfg)?;
    let dir = a
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let devices_out = a.devices_out.unwrap_or_else(|| dir.join("devices.csv"));
    let labels_out = a.labels_out.unwrap_or_else(|| dir.join("labels.csv"));
    let file = std::fs::File::create(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let started = std::time::Instant::now();
    let stats = sim.run(&mut |rec| {
        w.write_all(rec.render().as_bytes())?;
        w.write_all(b"\n")
    })?;
    w.flush()
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    let mut d = std::fs::File::create(&devices_out)
        .with_context(|| format!("cannot create {}", devices_out.display()))?;
    sim::write_devices_csv(sim.devices(), &mut d)?;
    let mut l = std::fs::File::create(&labels_out)
        .with_context(|| format!("cannot create {}", labels_out.display()))?;
    sim::write_labels_csv(sim.labels(), &mut l)?;
    println!(
        "wrote {} messages ({} vitals) for {} devices to {} in {:.1} s",
        stats.messages,
        stats.per_kind[0],
        sim.devices().len(),
        a.out.display(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "registry: {} · fault labels: {} ({} injected)",
        devices_out.display(),
        labels_out.display(),
        sim.labels().len()
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_status(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let s = open_snapshot(data_dir)?;
    println!("data directory {}", s.dir.display());
    println!(
        "{:<14} {:>12} {:>8} {:>12} {:>10}",
        "table", "rows", "files", "parquet MiB", "tail rows"
    );
    for t in Table::ALL {
        let files: Vec<_> = s.files_of(t).collect();
        let bytes: u64 = files.iter().map(|f| f.bytes).sum();
        let tail: usize = s.tail_of(t).map(|b| b.num_rows()).sum();
        println!(
            "{:<14} {:>12} {:>8} {:>12.2} {:>10}",
            t.name(),
            s.rows(t),
            files.len(),
            bytes as f64 / (1 << 20) as f64,
            tail
        );
    }
    live::print_ingest_status(data_dir);
    Ok(ExitCode::SUCCESS)
}
