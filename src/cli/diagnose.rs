//! `diagnose` and `rules`: the specialist's offline surfaces of the rule layer.
//!
//! `diagnose` replays files through decode → store → rules in a scratch data directory (or
//! reads an existing store) and prints the findings, most severe first, with evidence and
//! steps; `--json` prints the stable JSON Lines form. `rules check` validates rule files;
//! `rules list` prints the pack.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::capture::{format_rfc3339_ms, parse_rfc3339_ms};
use crate::clock::Clock;
use crate::pipeline;
use crate::query::QueryConfig;
use crate::rules::{self, Evaluation, Finding, Pack, PackSource, Scope, finding};
use crate::source::InputFormat;
use crate::store::{Snapshot, StoreConfig};

/// Which rules to run (shared by every command that evaluates).
#[derive(Args, Debug, Clone, Default)]
pub struct RuleArgs {
    /// A directory of extra rule files (*.toml); repeatable.
    #[arg(long = "rules", value_name = "DIR")]
    pub rules: Vec<PathBuf>,
    /// Leave out the built-in rule pack (run only --rules directories).
    #[arg(long)]
    pub no_builtin_rules: bool,
}

impl RuleArgs {
    pub fn load(&self) -> anyhow::Result<Pack> {
        let src = PackSource {
            builtin: !self.no_builtin_rules,
            dirs: self.rules.clone(),
        };
        rules::pack::load(&src).map_err(|problems| {
            let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            anyhow::anyhow!(
                "{} problem(s) in the rules: {} (wallscope rules check shows them all)",
                lines.len(),
                lines.join(" | ")
            )
        })
    }
}

#[derive(Args, Debug)]
pub struct DiagnoseArgs {
    /// Capture files (JSON Lines) or vitals logs (with --format vitals-log).
    pub files: Vec<PathBuf>,
    /// Diagnose an existing data directory instead of files (read-only).
    #[arg(long, value_name = "DIR", conflicts_with = "files")]
    pub store: Option<PathBuf>,
    /// Input format of the files.
    #[arg(long, value_enum, default_value = "capture")]
    pub format: InputFormat,
    /// Device id for vitals logs (their lines carry none).
    #[arg(long)]
    pub device: Option<String>,
    /// Device registry (CSV or Parquet: device_id,service_type,breaker_a,max_current_a,…).
    #[arg(long, value_name = "FILE")]
    pub devices: Option<PathBuf>,
    /// Only findings that end at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Evaluate as of this time (RFC 3339; default: the newest telemetry).
    #[arg(long)]
    pub until: Option<String>,
    /// One JSON object per finding per line (device_id, fault, rule, severity, first_ts,
    /// last_ts, evidence, steps, …).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub rules: RuleArgs,
}

#[derive(Subcommand, Debug)]
pub enum RulesCommand {
    /// Validate rule files: each problem with its file and the fix.
    Check {
        /// A directory of rule files to check (with the built-in pack, unless
        /// --no-builtin-rules).
        dir: Option<PathBuf>,
        #[arg(long)]
        no_builtin_rules: bool,
    },
    /// Run the rule test cases (rules/tests/*.toml) against their golden files.
    Test {
        /// The case directory.
        #[arg(default_value = "rules/tests")]
        dir: PathBuf,
        /// Rewrite the golden files from what the pack finds now (the must / must_not
        /// lists of each case are still enforced).
        #[arg(long)]
        bless: bool,
        /// Only cases whose file name contains this text.
        #[arg(long)]
        only: Option<String>,
        #[command(flatten)]
        rules: RuleArgs,
    },
    /// List the rules of the pack.
    List {
        #[command(flatten)]
        rules: RuleArgs,
    },
}

fn time_arg(name: &str, v: Option<&str>) -> anyhow::Result<Option<i64>> {
    v.map(|s| {
        parse_rfc3339_ms(s).ok_or_else(|| {
            anyhow::anyhow!("{name} {s:?} is not an RFC 3339 time (e.g. 2026-01-05T00:00:00Z)")
        })
    })
    .transpose()
}

pub fn cmd_diagnose(
    a: DiagnoseArgs,
    clock: Arc<dyn Clock>,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    let pack = a.rules.load()?;
    let since_ms = time_arg("--since", a.since.as_deref())?;
    let until_ms = time_arg("--until", a.until.as_deref())?;
    let devices = a
        .devices
        .as_deref()
        .map(crate::registry::load)
        .transpose()?;
    let started = std::time::Instant::now();
    let _scratch;
    // Progress for people: importing has its bar; evaluation is one step.
    let snapshot = match (&a.store, a.files.is_empty()) {
        (Some(dir), _) => super::open_snapshot(dir)?,
        (None, true) => bail!("give capture or log files to diagnose, or --store DIR"),
        (None, false) => {
            super::check_import_args(a.format, a.device.as_deref(), &a.files)?;
            let scratch = pipeline::ScratchDir::new()
                .context("cannot create a scratch directory in the temp dir")?;
            let (report, snapshot) = pipeline::import_scratch(
                StoreConfig::scratch(&scratch.0),
                &a.files,
                a.format,
                a.device.as_deref(),
                clock,
                &mut super::Bar::new(),
            )?;
            tracing::info!(
                step = "import",
                ms = report.elapsed_ms as u64,
                messages = report.messages,
                "diagnose timing"
            );
            if report.bad_lines > 0 || report.dead() > 0 {
                eprintln!(
                    "note: {} malformed line(s) and {} dead letter(s) in the input were skipped",
                    report.bad_lines,
                    report.dead()
                );
            }
            _scratch = scratch;
            snapshot
        }
    };
    let scope = Scope {
        since_ms,
        until_ms,
        devices: None,
    };
    let eval_started = std::time::Instant::now();
    let eval = rt
        .block_on(rules::evaluate(
            &snapshot,
            devices,
            &pack,
            &scope,
            &QueryConfig::default(),
        ))
        .context("diagnose")?;
    for (what, took) in &eval.timings {
        tracing::info!(step = %what, ms = took.as_millis() as u64, "diagnose timing");
    }
    tracing::info!(
        step = "evaluation",
        ms = eval_started.elapsed().as_millis() as u64,
        shards = eval.shards,
        "diagnose timing"
    );
    let mut findings = eval.findings.clone();
    finding::sort_for_people(&mut findings);
    let mut out = std::io::stdout().lock();
    if a.json {
        for f in &findings {
            writeln!(out, "{}", f.to_json_line())?;
        }
        for n in &eval.notes {
            eprintln!("note: {n}");
        }
    } else {
        print_findings(&mut out, &findings)?;
        for n in &eval.notes {
            writeln!(out, "note: {n}")?;
        }
        print_footer(&mut out, &eval, &findings, started.elapsed().as_secs_f64())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Findings for people: a header line, the span, the summary, evidence, numbered steps.
pub fn print_findings(out: &mut dyn Write, findings: &[Finding]) -> std::io::Result<()> {
    for f in findings {
        writeln!(
            out,
            "{} {:<8} {} · {}  [{}]",
            f.fault,
            f.severity.as_str().to_uppercase(),
            f.device_id,
            f.title,
            f.rule
        )?;
        writeln!(
            out,
            "  {} → {}  (class {}, first acts: {})",
            format_rfc3339_ms(f.first_ms),
            format_rfc3339_ms(f.last_ms),
            f.class,
            f.owner
        )?;
        if f.summary != f.title {
            writeln!(out, "  {}", f.summary)?;
        }
        if !f.evidence.is_empty() {
            let ev: Vec<String> = f
                .evidence
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    v => format!("{k}={v}"),
                })
                .collect();
            writeln!(out, "  evidence: {}", ev.join("  "))?;
        }
        for (i, s) in f.steps.iter().enumerate() {
            writeln!(out, "  {}. [{}] {}", i + 1, s.who.label(), s.text)?;
        }
        writeln!(out)?;
    }
    Ok(())
}

fn print_footer(
    out: &mut dyn Write,
    eval: &Evaluation,
    findings: &[Finding],
    secs: f64,
) -> std::io::Result<()> {
    if eval.devices == 0 {
        return writeln!(out, "no vitals in scope: nothing to diagnose");
    }
    let span = format!(
        "{} → {}",
        format_rfc3339_ms(eval.eval_start_ms),
        format_rfc3339_ms(eval.eval_end_ms)
    );
    if findings.is_empty() {
        return writeln!(
            out,
            "no findings: {} device(s), {} samples, {span} ({secs:.2} s)",
            eval.devices, eval.samples
        );
    }
    let mut devices: Vec<&str> = findings.iter().map(|f| f.device_id.as_str()).collect();
    devices.sort_unstable();
    devices.dedup();
    let mut by_sev = String::new();
    for s in rules::Severity::ALL.iter().rev() {
        let n = findings.iter().filter(|f| f.severity == *s).count();
        if n > 0 {
            by_sev.push_str(&format!(" {n} {s}"));
        }
    }
    writeln!(
        out,
        "{} finding(s) ({}) on {} of {} device(s); {} samples, {span} ({secs:.2} s)",
        findings.len(),
        by_sev.trim(),
        devices.len(),
        eval.devices,
        eval.samples
    )
}

pub fn cmd_rules(
    cmd: RulesCommand,
    clock: Arc<dyn Clock>,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    match cmd {
        RulesCommand::Check {
            dir,
            no_builtin_rules,
        } => {
            let src = PackSource {
                builtin: !no_builtin_rules,
                dirs: dir.iter().cloned().collect(),
            };
            // Trend rules: the built-in ones, and DIR/trends when it exists.
            let trend_dirs: Vec<PathBuf> = dir
                .iter()
                .map(|d| d.join("trends"))
                .filter(|d| d.is_dir())
                .collect();
            let (trends, mut problems) =
                match crate::alerts::trend::load(!no_builtin_rules, &trend_dirs) {
                    Ok(t) => {
                        let empty = std::env::temp_dir().join("wallscope-rules-check-no-data");
                        let p = rt.block_on(crate::alerts::trend::check(&t, &empty));
                        (t.len(), p)
                    }
                    Err(p) => (0, p),
                };
            match rules::pack::load(&src) {
                Ok(pack) => {
                    problems.extend(rt.block_on(rules::pack::check(&pack)));
                    if problems.is_empty() {
                        let from = dir
                            .as_deref()
                            .map(|d| format!(" (with {})", d.display()))
                            .unwrap_or_default();
                        println!(
                            "{} rule(s) and {trends} trend rule(s) ok{from}",
                            pack.rules.len()
                        );
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                Err(p) => problems.extend(p),
            };
            for p in &problems {
                eprintln!("{p}");
            }
            bail!("{} problem(s) in the rules", problems.len())
        }
        RulesCommand::Test {
            dir,
            bless,
            only,
            rules,
        } => {
            let pack = rules.load()?;
            let cases = pipeline::cases::list(&dir)?;
            let mut failed = 0;
            let mut ran = 0;
            for c in cases.iter().filter(|c| {
                only.as_deref().is_none_or(|o| {
                    c.file_name()
                        .is_some_and(|n| n.to_string_lossy().contains(o))
                })
            }) {
                ran += 1;
                let r = pipeline::cases::run(c, &pack, bless, clock.clone(), rt.handle())?;
                if r.failures.is_empty() {
                    println!("ok    {} ({} finding(s))", r.case, r.lines.len());
                } else {
                    failed += 1;
                    println!("FAIL  {}", r.case);
                    for f in &r.failures {
                        println!("      {f}");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {ran} rule test case(s) failed");
            }
            println!(
                "{ran} case(s) passed{}",
                if bless { " (goldens rewritten)" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
        RulesCommand::List { rules } => {
            let pack = rules.load()?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<5} {:<9} {:<34} {:<7} title",
                "fault", "severity", "rule", "window"
            )?;
            let mut sorted: Vec<_> = pack.rules.iter().collect();
            sorted.sort_by(|a, b| (&a.fault, &a.id).cmp(&(&b.fault, &b.id)));
            for r in sorted {
                writeln!(
                    out,
                    "{:<5} {:<9} {:<34} {:<7} {}",
                    r.fault,
                    r.severity.as_str(),
                    r.id,
                    human_ms(r.window_ms),
                    r.title
                )?;
            }
            let trends = crate::alerts::trend::load(true, &[]).map_err(|p| {
                anyhow::anyhow!(
                    "built-in trend rules: {}",
                    p.first().map(|p| p.to_string()).unwrap_or_default()
                )
            })?;
            writeln!(
                out,
                "\ntrend rules (alerts over findings, the registry and the store):"
            )?;
            writeln!(
                out,
                "{:<9} {:<26} {:<6} {:<7} title",
                "severity", "rule", "every", "window"
            )?;
            for t in &trends {
                writeln!(
                    out,
                    "{:<9} {:<26} {:<6} {:<7} {}",
                    t.severity.as_str(),
                    t.id,
                    human_ms(t.every_ms),
                    human_ms(t.window_ms),
                    t.title
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn human_ms(ms: i64) -> String {
    for (unit, n) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= n && ms % n == 0 {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

/// Evaluates the built-in pack over a whole data directory, stores the findings in its
/// `findings` table (merged with what is there), and prints a short summary: what `demo`
/// shows after its ingest.
pub fn evaluate_store_and_print(
    data_dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    let pack = rules::pack::load(&PackSource::builtin()).map_err(|p| {
        anyhow::anyhow!(
            "built-in rules: {}",
            p.first().map(|p| p.to_string()).unwrap_or_default()
        )
    })?;
    let snapshot = Snapshot::load(data_dir)?;
    let started = std::time::Instant::now();
    let eval = rt.block_on(rules::evaluate(
        &snapshot,
        None,
        &pack,
        &Scope::default(),
        &QueryConfig::default(),
    ))?;
    let mut stored = rules::finding::load(data_dir)?;
    rules::finding::merge(&mut stored, eval.findings.clone());
    rules::finding::save(data_dir, &stored)?;
    let mut findings = eval.findings;
    finding::sort_for_people(&mut findings);
    let mut devices: Vec<&str> = findings.iter().map(|f| f.device_id.as_str()).collect();
    devices.sort_unstable();
    devices.dedup();
    println!(
        "rules: {} rule(s) over {} samples of {} device(s) in {:.1} s → {} finding(s) on {} device(s)",
        pack.rules.len(),
        eval.samples,
        eval.devices,
        started.elapsed().as_secs_f64(),
        findings.len(),
        devices.len()
    );
    for f in findings.iter().take(12) {
        println!(
            "  {} {:<8} {:<10} {}",
            f.fault,
            f.severity.as_str(),
            f.device_id,
            f.summary
        );
    }
    if findings.len() > 12 {
        println!("  … and {} more", findings.len() - 12);
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The charger's device id.
    pub device: String,
    /// Device registry (CSV or Parquet); default: devices.csv in the data directory.
    #[arg(long, value_name = "FILE")]
    pub devices: Option<PathBuf>,
    #[command(flatten)]
    pub rules: RuleArgs,
}

pub fn cmd_health(
    data_dir: &std::path::Path,
    a: HealthArgs,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    use crate::rules::health;
    let pack = a.rules.load()?;
    let devices = a
        .devices
        .as_deref()
        .map(crate::registry::load)
        .transpose()?;
    let snapshot = super::open_snapshot(data_dir)?;
    let r = rt.block_on(health::report(
        &snapshot,
        devices,
        &pack,
        &a.device,
        &QueryConfig::default(),
    ))?;
    let mut out = std::io::stdout().lock();
    let ago_min = (r.as_of_ms - r.last_seen_ms) as f64 / 60_000.0;
    writeln!(
        out,
        "{} · {} · as of {} (last seen {}, {:.0} min before)",
        r.device_id,
        r.status.as_str().to_uppercase(),
        format_rfc3339_ms(r.as_of_ms),
        format_rfc3339_ms(r.last_seen_ms),
        ago_min
    )?;
    let id: Vec<String> = r.identity.iter().map(|(k, v)| format!("{k} {v}")).collect();
    writeln!(out, "{}", id.join(" · "))?;
    if !r.vitals.is_empty() {
        writeln!(out, "\nlatest vitals:")?;
        for c in &r.vitals {
            writeln!(
                out,
                "  {:<18} {:>14}   normal {:<36} {}",
                c.name,
                c.value,
                c.normal,
                if c.ok { "ok" } else { "OUT OF RANGE" }
            )?;
        }
    }
    let stats = |s: &health::SessionStats| {
        let ended: Vec<String> = s.ended.iter().map(|(e, n)| format!("{e} {n}")).collect();
        format!(
            "{} session(s), {:.1} kWh, max {:.1} A{}",
            s.count,
            s.energy_kwh,
            s.max_current_a,
            if ended.is_empty() {
                String::new()
            } else {
                format!(" ({})", ended.join(", "))
            }
        )
    };
    writeln!(
        out,
        "\nsessions: last 24 h: {} · last 7 d: {}",
        stats(&r.sessions_24h),
        stats(&r.sessions_7d)
    )?;
    for l in &r.recent_sessions {
        writeln!(
            out,
            "  {}  {:>6.1} min  {:>7.0} Wh  max {:>5.1} A  {} closure(s)  {}",
            format_rfc3339_ms(l.start_ms),
            l.minutes,
            l.energy_wh,
            l.max_current_a,
            l.closures,
            l.ended
        )?;
    }
    if r.active.is_empty() {
        writeln!(out, "\nno active findings (last 24 h)")?;
    } else {
        writeln!(out, "\nactive findings (last 24 h):")?;
        print_findings(&mut out, &r.active)?;
    }
    if !r.earlier.is_empty() {
        let e: Vec<String> = r
            .earlier
            .iter()
            .map(|f| {
                format!(
                    "{} {} (ended {})",
                    f.fault,
                    f.severity,
                    format_rfc3339_ms(f.last_ms)
                )
            })
            .collect();
        writeln!(out, "earlier in the last 7 days: {}", e.join("; "))?;
    }
    for n in &r.notes {
        writeln!(out, "note: {n}")?;
    }
    if !r.lifetime.is_empty() {
        let l: Vec<String> = r.lifetime.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(out, "\nlifetime: {}", l.join(" · "))?;
    }
    if !r.wifi.is_empty() {
        let w: Vec<String> = r.wifi.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(out, "wifi: {}", w.join(" · "))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A capture (JSON Lines), e.g. from `wallscope simulate`.
    pub capture: PathBuf,
    /// Ground truth: CSV `device_id,fault,onset,end` (the simulator's labels.csv).
    pub labels: PathBuf,
    /// Device registry; default: devices.csv beside the capture when it exists.
    #[arg(long, value_name = "FILE")]
    pub devices: Option<PathBuf>,
    #[command(flatten)]
    pub rules: RuleArgs,
}

/// `eval`: diagnose a labelled capture and score the findings per fault (precision, recall,
/// findings on devices without any label).
pub fn cmd_eval(
    a: EvalArgs,
    clock: Arc<dyn Clock>,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    use crate::pipeline::score;
    let pack = a.rules.load()?;
    let text = std::fs::read_to_string(&a.labels)
        .with_context(|| format!("cannot read labels {}", a.labels.display()))?;
    let labels = score::parse_labels(&text, &a.labels.display().to_string())?;
    let registry = a.devices.clone().or_else(|| {
        let p = a.capture.with_file_name("devices.csv");
        p.is_file().then_some(p)
    });
    let devices = registry.as_deref().map(crate::registry::load).transpose()?;
    super::check_import_args(InputFormat::Capture, None, std::slice::from_ref(&a.capture))?;
    let scratch =
        pipeline::ScratchDir::new().context("cannot create a scratch directory in the temp dir")?;
    let started = std::time::Instant::now();
    let (_, snapshot) = pipeline::import_scratch(
        StoreConfig::scratch(&scratch.0),
        std::slice::from_ref(&a.capture),
        InputFormat::Capture,
        None,
        clock,
        &mut super::Bar::new(),
    )?;
    let eval = rt.block_on(rules::evaluate(
        &snapshot,
        devices,
        &pack,
        &Scope::default(),
        &QueryConfig::default(),
    ))?;
    let sc = score::score(&labels, &eval.findings);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} devices, {} labels, {} findings ≥ minor, evaluated in {:.1} s",
        eval.devices,
        labels.len(),
        sc.found,
        started.elapsed().as_secs_f64()
    )?;
    writeln!(
        out,
        "{:<6} {:>6} {:>6} {:>6} {:>6} {:>10} {:>8}",
        "fault", "labels", "tp", "fp", "fn", "precision", "recall"
    )?;
    let ratio = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    for (f, c) in &sc.faults {
        writeln!(
            out,
            "{f:<6} {:>6} {:>6} {:>6} {:>6} {:>10} {:>8}",
            c.tp + c.fn_,
            c.tp,
            c.fp,
            c.fn_,
            ratio(c.precision()),
            ratio(c.recall())
        )?;
    }
    if sc.implied > 0 {
        writeln!(
            out,
            "findings implied by a labelled fault on the same device (F13→F22, F01/F09/F12→F26): {}",
            sc.implied
        )?;
    }
    if !sc.unlabelled.is_empty() {
        let u: Vec<String> = sc
            .unlabelled
            .iter()
            .map(|(f, n)| format!("{f} ×{n}"))
            .collect();
        writeln!(
            out,
            "findings of faults the labels do not cover: {}",
            u.join(", ")
        )?;
    }
    writeln!(
        out,
        "findings on devices without any label: {}{}",
        sc.healthy_hits.len(),
        if sc.healthy_hits.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                sc.healthy_hits
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    )?;
    writeln!(
        out,
        "lowest precision or recall: {:.3} (target 0.95)",
        sc.worst()
    )?;
    Ok(ExitCode::SUCCESS)
}
