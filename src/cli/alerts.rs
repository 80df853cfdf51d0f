//! `wallscope alerts list|show|ack|silence|evaluate` and `wallscope forecast`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::alerts::actions::{self, Action};
use crate::alerts::lifecycle::State;
use crate::alerts::table::AlertRow;
use crate::alerts::{self, forecast};
use crate::capture::format_rfc3339_ms;
use crate::clock::Clock;
use crate::config::parse_duration_ms;
use crate::store::Snapshot;

#[derive(Subcommand, Debug)]
pub enum AlertsCommand {
    /// Active alerts (pending and firing), most severe first; --all adds the ended ones.
    List(ListArgs),
    /// One alert: every transition, its evidence, the ordered steps, acks and silences.
    Show(ShowArgs),
    /// Acknowledge an alert (recorded with who and when; survives restarts).
    Ack(AckArgs),
    /// Mute notifications for a device and/or a rule for a while (alerts are still recorded).
    Silence(SilenceArgs),
    /// Evaluate the alerts over the stored findings now (what `run` does after each rule
    /// evaluation): for a store filled by `import` and `diagnose --store`.
    Evaluate(EvaluateArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Include resolved and cancelled alerts.
    #[arg(long)]
    pub all: bool,
    /// Only this device (or trend key).
    #[arg(long)]
    pub device: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// At most this many alerts.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The alert id (`A…`, from `alerts list`).
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AckArgs {
    pub id: String,
    /// Who acknowledges (default: $USER).
    #[arg(long)]
    pub by: Option<String>,
    #[arg(long, default_value = "")]
    pub note: String,
}

#[derive(Args, Debug)]
pub struct SilenceArgs {
    /// Device id (or trend key such as site=S0042).
    #[arg(long)]
    pub device: Option<String>,
    /// Rule id or fault code (e.g. handle_overtemp or F06).
    #[arg(long)]
    pub rule: Option<String>,
    /// How long (e.g. 2h, 30m, 7d).
    #[arg(long = "for", value_name = "DURATION")]
    pub for_: String,
    /// Why (shown with every muted alert).
    #[arg(long)]
    pub reason: String,
    #[arg(long)]
    pub by: Option<String>,
}

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// TOML settings file: its [alerts] section (policies, trends, inhibition).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Device registry (CSV or Parquet); default: devices.csv in the data directory.
    #[arg(long, value_name = "FILE")]
    pub devices: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ForecastArgs {
    /// How far ahead (whole days, e.g. 14d).
    #[arg(long, default_value = "14d")]
    pub horizon: String,
    /// One line per group and day instead of one per group.
    #[arg(long)]
    pub daily: bool,
    /// Only groups with at least this many episodes in the history.
    #[arg(long, default_value_t = 1.0)]
    pub min_episodes: f64,
}

fn whoami(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "operator".into())
}

fn load_rows(data_dir: &Path) -> anyhow::Result<Vec<AlertRow>> {
    Ok(alerts::table::load(data_dir)?)
}

/// Per alert: its rows in order.
fn by_alert(rows: &[AlertRow]) -> BTreeMap<&str, Vec<&AlertRow>> {
    let mut m: BTreeMap<&str, Vec<&AlertRow>> = BTreeMap::new();
    for r in rows {
        m.entry(&r.alert_id).or_default().push(r);
    }
    for v in m.values_mut() {
        v.sort_by_key(|r| (r.at_ms, r.state));
    }
    m
}

pub fn cmd_alerts(
    data_dir: &Path,
    c: AlertsCommand,
    clock: Arc<dyn Clock>,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    match c {
        AlertsCommand::List(a) => list(data_dir, a),
        AlertsCommand::Show(a) => show(data_dir, a, clock),
        AlertsCommand::Ack(a) => {
            let rows = load_rows(data_dir)?;
            let by = whoami(a.by);
            match actions::ack(data_dir, &rows, &a.id, &by, &a.note, clock.now_ms()) {
                Err(actions::ActionError::UnknownAlert(id)) => bail!(
                    "no alert {id:?} in {}; `wallscope alerts list --all` shows the ids",
                    data_dir.display()
                ),
                other => other?,
            };
            println!("acknowledged {} (by {by})", a.id);
            Ok(ExitCode::SUCCESS)
        }
        AlertsCommand::Silence(a) => {
            let for_ms = parse_duration_ms(&a.for_).map_err(|e| anyhow::anyhow!("--for: {e}"))?;
            let by = whoami(a.by);
            let req = actions::SilenceRequest {
                device: a.device.clone(),
                rule: a.rule.clone(),
                for_ms,
                by: by.clone(),
                reason: a.reason.clone(),
            };
            let Action::Silence { id, until_ms, .. } =
                actions::silence(data_dir, req, clock.now_ms())?
            else {
                unreachable!("silence() stores a silence")
            };
            println!(
                "silence {id}: {}{} muted until {} (by {by}: {})",
                a.device
                    .as_deref()
                    .map(|d| format!("device {d}"))
                    .unwrap_or_default(),
                a.rule
                    .as_deref()
                    .map(|r| format!("{}rule {r}", if a.device.is_some() { ", " } else { "" }))
                    .unwrap_or_default(),
                format_rfc3339_ms(until_ms),
                a.reason
            );
            Ok(ExitCode::SUCCESS)
        }
        AlertsCommand::Evaluate(a) => {
            // `run` evaluates the alerts itself and is the table's one writer: refuse while it
            // holds the directory, and hold it (shared) so it cannot start meanwhile.
            let _lock = match crate::store::hold_shared(data_dir) {
                Err(crate::store::StoreError::Locked { .. }) => bail!(
                    "a running wallscope holds {} and evaluates the alerts itself; stop it first",
                    data_dir.display()
                ),
                other => other?,
            };
            let file = match &a.config {
                Some(p) => crate::config::FileConfig::load(p).map_err(anyhow::Error::msg)?,
                None => crate::config::FileConfig::default(),
            };
            let (settings, _) =
                alerts::settings_from_file(&file.alerts, data_dir, None, "wallscope")
                    .map_err(|e| anyhow::anyhow!("config: {e}"))?;
            let registry = a
                .devices
                .as_deref()
                .map(crate::registry::load)
                .transpose()?;
            let o = evaluate_batch(data_dir, registry, &settings, clock.now_ms(), rt)?;
            print_outcome(&o, data_dir);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `alerts::evaluate_dir` on the runtime.
pub fn evaluate_batch(
    data_dir: &Path,
    registry: Option<arrow::array::RecordBatch>,
    settings: &alerts::Settings,
    now_wall_ms: i64,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<(alerts::Outcome, alerts::AlertState)> {
    Ok(rt.block_on(alerts::evaluate_dir(
        data_dir,
        registry,
        settings,
        now_wall_ms,
    ))?)
}

pub fn print_outcome(o: &(alerts::Outcome, alerts::AlertState), data_dir: &Path) {
    let (o, state) = o;
    let latest = alerts::latest_states(&state.rows);
    let firing = latest.values().filter(|s| **s == State::Firing).count();
    let pending = latest.values().filter(|s| **s == State::Pending).count();
    println!(
        "alerts: {} new transition(s), {} notification(s) queued, {} trend tick(s); {firing} firing, {pending} pending, {} alert(s) in all",
        o.transitions,
        o.notifications.len(),
        o.ticks,
        latest.len()
    );
    println!("  wallscope --data-dir {} alerts list", data_dir.display());
}

fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 0,
        "major" => 1,
        "minor" => 2,
        _ => 3,
    }
}

fn list(data_dir: &Path, a: ListArgs) -> anyhow::Result<ExitCode> {
    let rows = load_rows(data_dir)?;
    let acts = actions::load(data_dir)?;
    let groups = by_alert(&rows);
    let mut shown: Vec<(&str, &Vec<&AlertRow>)> = groups
        .iter()
        .filter(|(_, v)| {
            let last = v[v.len() - 1];
            (a.all || matches!(last.state, State::Pending | State::Firing))
                && a.device
                    .as_ref()
                    .is_none_or(|d| last.device_id.as_ref() == Some(d) || &last.key == d)
        })
        .map(|(k, v)| (*k, v))
        .collect();
    shown.sort_by_key(|(_, v)| {
        let last = v[v.len() - 1];
        (
            !matches!(last.state, State::Firing),
            severity_rank(&last.severity),
            std::cmp::Reverse(last.at_ms),
        )
    });
    let total = shown.len();
    if a.json {
        for (_, v) in shown.iter().take(a.limit) {
            let last = v[v.len() - 1];
            let mut j = last.to_json();
            j["acked"] = serde_json::Value::Bool(acts.acks_of(&last.alert_id).next().is_some());
            println!("{j}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if total == 0 {
        let ended = groups.len();
        if ended > 0 {
            println!("no active alerts ({ended} ended; --all shows them)");
        } else {
            println!(
                "no alerts in {} (they come from findings: `run`, `demo`, or `diagnose --store` then `alerts evaluate`)",
                data_dir.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<13} {:<9} {:<20} {:<8} {:<5} {:<24} {:<28} SUMMARY",
        "ALERT", "STATE", "SINCE", "SEVERITY", "ACK", "RULE", "KEY"
    );
    for (id, v) in shown.iter().take(a.limit) {
        let last = v[v.len() - 1];
        let acked = if acts.acks_of(id).next().is_some() {
            "yes"
        } else {
            "-"
        };
        let muted = match (&last.inhibited_by, &last.silenced_by) {
            (Some(i), _) => format!(" [inhibited by {i}]"),
            (_, Some(s)) => format!(" [silenced by {s}]"),
            _ => String::new(),
        };
        let mut summary = last.summary.clone();
        if summary.chars().count() > 90 {
            summary = summary.chars().take(89).collect::<String>() + "…";
        }
        println!(
            "{:<13} {:<9} {:<20} {:<8} {:<5} {:<24} {:<28} {}{}",
            id,
            last.state.as_str(),
            &format_rfc3339_ms(last.at_ms)[..19],
            last.severity,
            acked,
            last.rule,
            last.key,
            summary,
            muted
        );
    }
    if total > a.limit {
        println!("… and {} more (--limit)", total - a.limit);
    }
    Ok(ExitCode::SUCCESS)
}

fn show(data_dir: &Path, a: ShowArgs, clock: Arc<dyn Clock>) -> anyhow::Result<ExitCode> {
    let rows = load_rows(data_dir)?;
    let acts = actions::load(data_dir)?;
    let mine: Vec<&AlertRow> = {
        let mut v: Vec<&AlertRow> = rows.iter().filter(|r| r.alert_id == a.id).collect();
        v.sort_by_key(|r| (r.at_ms, r.state));
        v
    };
    let Some(last) = mine.last() else {
        bail!(
            "no alert {:?} in {}; `wallscope alerts list --all` shows the ids",
            a.id,
            data_dir.display()
        );
    };
    if a.json {
        let mut j = last.to_json();
        j["transitions"] = mine
            .iter()
            .map(|r| {
                serde_json::json!({
                    "state": r.state.as_str(),
                    "at": format_rfc3339_ms(r.at_ms),
                    "notification_id": r.notification_id,
                    "inhibited_by": r.inhibited_by,
                    "silenced_by": r.silenced_by,
                })
            })
            .collect();
        j["acks"] = acts
            .acks_of(&a.id)
            .map(|x| serde_json::to_value(x).unwrap_or_default())
            .collect();
        println!("{j}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} — {} [{}]", a.id, last.title, last.severity);
    println!("  rule {} ({}) · key {}", last.rule, last.kind, last.key);
    if let Some(f) = &last.fault {
        println!("  fault {f} · owner {}", last.owner);
    }
    if !last.labels.is_empty() {
        let l: Vec<String> = last
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("  labels {}", l.join(" "));
    }
    println!("  {}", last.summary);
    println!("transitions (event time):");
    for r in &mine {
        let how = match (&r.notification_id, &r.inhibited_by, &r.silenced_by) {
            (Some(n), _, _) => format!("notified in {n}"),
            (_, Some(i), _) => format!("inhibited by {i}"),
            (_, _, Some(s)) => format!("silenced by {s}"),
            _ if r.wants_notification() => "waiting for its group".into(),
            _ => "recorded".into(),
        };
        println!(
            "  {:<9} {}  {how}",
            r.state.as_str(),
            format_rfc3339_ms(r.at_ms)
        );
    }
    if let Ok(serde_json::Value::Object(ev)) =
        serde_json::from_str::<serde_json::Value>(&last.evidence)
        && !ev.is_empty()
    {
        println!("evidence:");
        for (k, v) in ev {
            println!("  {k}: {v}");
        }
    }
    if let Ok(steps) = serde_json::from_str::<Vec<crate::rules::Step>>(&last.steps)
        && !steps.is_empty()
    {
        println!("steps:");
        for (i, s) in steps.iter().enumerate() {
            println!("  {}. [{}] {}", i + 1, s.who.label(), s.text);
        }
    }
    for x in acts.acks_of(&a.id) {
        if let Action::Ack {
            by, at_ms, note, ..
        } = x
        {
            println!(
                "acknowledged by {by} at {}{}",
                format_rfc3339_ms(*at_ms),
                if note.is_empty() {
                    String::new()
                } else {
                    format!(": {note}")
                }
            );
        }
    }
    let now = clock.now_ms();
    if let Some(s) = acts.silence_for(last, now) {
        println!("silenced now by {s}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_forecast(
    data_dir: &Path,
    a: ForecastArgs,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    let horizon_ms =
        parse_duration_ms(&a.horizon).map_err(|e| anyhow::anyhow!("--horizon: {e}"))?;
    let days = (horizon_ms / 86_400_000) as usize;
    if days == 0 || days > 366 {
        bail!("--horizon must be between 1d and 366d (the forecast is per day)");
    }
    let findings = crate::rules::finding::load(data_dir)
        .with_context(|| format!("cannot read the findings of {}", data_dir.display()))?;
    let snapshot = Snapshot::load(data_dir)?;
    let progress = rt.block_on(alerts::device_progress(&snapshot))?;
    let until = progress
        .values()
        .copied()
        .max()
        .or_else(|| findings.iter().map(|f| f.last_ms).max());
    let Some(until) = until else {
        println!(
            "no findings in {}: nothing to forecast yet (run `demo`, `run`, or `diagnose --store` first)",
            data_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let series = forecast::forecast(&findings, until, days);
    let (start, _) = forecast::daily_counts(&findings, until);
    let history_days = series.first().map_or(0, |s| s.days);
    if history_days == 0 {
        let first = findings.iter().map(|f| f.first_ms).min().unwrap_or(until);
        println!(
            "support-load forecast: {} finding(s) over {:.1} h, not one complete day yet; a forecast needs at least one whole day of history (a seasonal one two weeks)",
            findings.len(),
            (until - first) as f64 / 3_600_000.0
        );
        return Ok(ExitCode::SUCCESS);
    }
    let from = start + history_days as i64 * 86_400_000;
    println!(
        "support-load forecast: new episodes per day, next {days} day(s) from {} (history: {history_days} complete day(s) of findings; 80 % intervals)",
        &format_rfc3339_ms(from)[..10]
    );
    if history_days < 2 * forecast::SEASON {
        println!(
            "  note: less than two weeks of history, so no weekly season is fitted: the forecast is the mean rate"
        );
    }
    let shown: Vec<&forecast::Series> = series
        .iter()
        .filter(|s| s.history_total >= a.min_episodes)
        .collect();
    if a.daily {
        println!(
            "{:<18} {:<10} {:>8} {:>8} {:>8}",
            "GROUP", "DAY", "MEAN", "LOW", "HIGH"
        );
        for s in &shown {
            for (k, p) in s.points.iter().enumerate() {
                let day = &format_rfc3339_ms(from + k as i64 * 86_400_000)[..10];
                println!(
                    "{:<18} {:<10} {:>8.1} {:>8.1} {:>8.1}",
                    s.group, day, p.mean, p.lo, p.hi
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<18} {:<13} {:>9} {:>16} {:>11}  BACK-TEST MAE model / naive seasonal",
        "GROUP", "MODEL", "HISTORY", "PER DAY (80 %)", "TOTAL"
    );
    for s in shown {
        let n = s.points.len() as f64;
        let mean = s.points.iter().map(|p| p.mean).sum::<f64>() / n;
        let lo = s.points.iter().map(|p| p.lo).sum::<f64>() / n;
        let hi = s.points.iter().map(|p| p.hi).sum::<f64>() / n;
        let bt = match s.backtest {
            Some((m, nv)) => format!(
                "{m:.2} / {nv:.2}{}",
                if m < nv { "" } else { " (naive better)" }
            ),
            None => "- (history too short)".into(),
        };
        println!(
            "{:<18} {:<13} {:>9} {:>16} {:>11.0}  {}",
            s.group,
            s.model,
            format!("{:.0} ep.", s.history_total),
            format!("{mean:.1} ({lo:.1}–{hi:.1})"),
            mean * n,
            bt
        );
    }
    Ok(ExitCode::SUCCESS)
}
