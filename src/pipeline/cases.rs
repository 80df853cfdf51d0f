//! Rule behaviour tested as data: `rules/tests/*.toml` cases, each an input (a simulator
//! recipe, a capture, or a vitals log) evaluated by the whole pack in its own scratch data
//! directory, compared with a golden file of the findings (`<case>.golden`) and with the
//! case's own `must` / `must_not` fault lists — so re-blessing goldens can never quietly
//! accept a missed fault or a false one.
//!
//! `wallscope rules test [--bless]` and the integration tests both run this.

use std::path::{Path, PathBuf};

use super::ScratchDir;
use std::sync::Arc;

use serde::Deserialize;

use crate::capture::format_rfc3339_ms;
use crate::clock::Clock;
use crate::query::QueryConfig;
use crate::rules::{self, Finding, Pack, Scope};
use crate::sim::{FaultCode, SimConfig, Simulator};
use crate::source::InputFormat;
use crate::store::StoreConfig;

#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("{path}: {problem}")]
    Bad { path: String, problem: String },
    #[error("{path}: {problem}")]
    Run { path: String, problem: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    description: String,
    #[serde(default)]
    sim: Option<SimCase>,
    /// A capture file (JSON Lines), relative to the case file.
    #[serde(default)]
    capture: Option<String>,
    /// A vitals log, relative to the case file, with the device it belongs to.
    #[serde(default)]
    vitals_log: Option<LogCase>,
    /// A registry, relative to the case file (a simulator case uses the simulator's).
    #[serde(default)]
    devices: Option<String>,
    /// Faults that must be found.
    #[serde(default)]
    must: Vec<String>,
    /// Faults that must not be found.
    #[serde(default)]
    must_not: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimCase {
    #[serde(default = "one")]
    devices: usize,
    #[serde(default)]
    faults: Vec<String>,
    duration: String,
    #[serde(default = "one_u64")]
    seed: u64,
    #[serde(default = "ten_s")]
    poll_interval: String,
    #[serde(default)]
    quirks: bool,
}

fn one() -> usize {
    1
}
fn one_u64() -> u64 {
    1
}
fn ten_s() -> String {
    "10s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogCase {
    file: String,
    device: String,
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseReport {
    pub case: String,
    /// One line per finding, as in the golden file.
    pub lines: Vec<String>,
    /// What went wrong (empty: passed).
    pub failures: Vec<String>,
}

/// The golden form of a finding: fault, severity, rule, device, span.
pub fn golden_line(f: &Finding) -> String {
    format!(
        "{} {} {} {} {} {}",
        f.fault,
        f.severity,
        f.rule,
        f.device_id,
        format_rfc3339_ms(f.first_ms),
        format_rfc3339_ms(f.last_ms)
    )
}

/// Every `*.toml` case in `dir`, sorted.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, CaseError> {
    let rd = std::fs::read_dir(dir).map_err(|e| CaseError::Bad {
        path: dir.display().to_string(),
        problem: format!("cannot read the case directory: {e}"),
    })?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    Ok(v)
}

/// Runs one case with `pack`; with `bless`, (re)writes its golden file instead of comparing.
pub fn run(
    path: &Path,
    pack: &Pack,
    bless: bool,
    clock: Arc<dyn Clock>,
    rt: &tokio::runtime::Handle,
) -> Result<CaseReport, CaseError> {
    let shown = path.display().to_string();
    let bad = |problem: String| CaseError::Bad {
        path: shown.clone(),
        problem,
    };
    let failed = |problem: String| CaseError::Run {
        path: shown.clone(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let case: CaseFile = toml::from_str(&text).map_err(|e| bad(e.message().to_string()))?;
    if case.description.trim().is_empty() {
        return Err(bad("description is empty: say what the case shows".into()));
    }
    let inputs = [
        case.sim.is_some(),
        case.capture.is_some(),
        case.vitals_log.is_some(),
    ];
    if inputs.iter().filter(|x| **x).count() != 1 {
        return Err(bad("give exactly one of sim, capture, vitals_log".into()));
    }
    for code in case.must.iter().chain(&case.must_not) {
        if rules::faults::fault(code).is_none() {
            return Err(bad(format!("unknown fault code {code:?} in must/must_not")));
        }
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let scratch = ScratchDir::new().map_err(|e| failed(e.to_string()))?;
    let mut registry = case.devices.as_ref().map(|d| base.join(d));
    let (files, format, device): (Vec<PathBuf>, InputFormat, Option<String>) = if let Some(sim) =
        &case.sim
    {
        let faults = sim
            .faults
            .iter()
            .map(|c| c.parse::<FaultCode>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let cfg = SimConfig {
            devices: sim.devices,
            duration_ms: crate::config::parse_duration_ms(&sim.duration).map_err(bad)?,
            seed: sim.seed,
            poll_interval_ms: crate::config::parse_duration_ms(&sim.poll_interval).map_err(bad)?,
            faults,
            quirks: sim.quirks,
            ..SimConfig::default()
        };
        let mut s = Simulator::new(cfg).map_err(|e| bad(e.to_string()))?;
        let capture = scratch.0.join("sim.jsonl");
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(&capture).map_err(|e| failed(e.to_string()))?,
        );
        use std::io::Write;
        s.run(&mut |rec| {
            w.write_all(rec.render().as_bytes())?;
            w.write_all(b"\n")
        })
        .map_err(|e| failed(e.to_string()))?;
        w.flush().map_err(|e| failed(e.to_string()))?;
        if registry.is_none() {
            let reg = scratch.0.join("devices.csv");
            let mut f = std::fs::File::create(&reg).map_err(|e| failed(e.to_string()))?;
            crate::sim::write_devices_csv(s.devices(), &mut f)
                .map_err(|e| failed(e.to_string()))?;
            registry = Some(reg);
        }
        (vec![capture], InputFormat::Capture, None)
    } else if let Some(c) = &case.capture {
        (vec![base.join(c)], InputFormat::Capture, None)
    } else {
        let l = case.vitals_log.as_ref().expect("checked above: one input");
        (
            vec![base.join(&l.file)],
            InputFormat::VitalsLog,
            Some(l.device.clone()),
        )
    };
    let store_dir = scratch.0.join("data");
    let (_, snapshot) = super::import_scratch(
        StoreConfig::scratch(&store_dir),
        &files,
        format,
        device.as_deref(),
        clock,
        &mut super::Quiet,
    )
    .map_err(|e| failed(e.to_string()))?;
    let devices = registry
        .map(|r| crate::registry::load(&r))
        .transpose()
        .map_err(|e| failed(e.to_string()))?;
    let eval = rt
        .block_on(rules::evaluate(
            &snapshot,
            devices,
            pack,
            &Scope::default(),
            &QueryConfig::default(),
        ))
        .map_err(|e| failed(e.to_string()))?;
    let mut findings = eval.findings;
    findings.sort_by_key(golden_line);
    let lines: Vec<String> = findings.iter().map(golden_line).collect();
    let mut failures = Vec::new();
    for code in &case.must {
        if !findings.iter().any(|f| &f.fault == code) {
            failures.push(format!("expected a {code} finding; found none"));
        }
    }
    for code in &case.must_not {
        for f in findings.iter().filter(|f| &f.fault == code) {
            failures.push(format!("must not find {code}; found: {}", golden_line(f)));
        }
    }
    let golden = path.with_extension("golden");
    let mut text = format!(
        "# {} — regenerate with: wallscope rules test --bless\n",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("case")
    );
    for l in &lines {
        text.push_str(l);
        text.push('\n');
    }
    if bless {
        std::fs::write(&golden, &text).map_err(|e| failed(e.to_string()))?;
    } else {
        match std::fs::read_to_string(&golden) {
            Ok(want) => {
                let want: Vec<&str> = want
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .collect();
                if want != lines.iter().map(|s| s.as_str()).collect::<Vec<_>>() {
                    failures.push(format!(
                        "findings differ from {}:\n  want:\n    {}\n  got:\n    {}",
                        golden.display(),
                        want.join("\n    "),
                        lines.join("\n    ")
                    ));
                }
            }
            Err(_) => failures.push(format!(
                "no golden file {} (run wallscope rules test --bless)",
                golden.display()
            )),
        }
    }
    Ok(CaseReport {
        case: shown,
        lines,
        failures,
    })
}
