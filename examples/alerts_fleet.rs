//! The alert layer end to end on a simulated fleet: a firmware cohort with a raised fault
//! rate and a site with a supply problem, simulated, imported, diagnosed by the fault rules,
//! then the alerts (fault and trend rules) — and what fired against what was injected.
//! Also the forecast back-test on synthetic histories with a known trend.
//!
//! `cargo run --release --example alerts_fleet -- [devices] [days] [poll_s]`
//! (default 1000 chargers, 7 days, 30 s polls).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use wallscope::alerts::{self, Settings, forecast, lifecycle::State};
use wallscope::clock::SystemClock;
use wallscope::pipeline;
use wallscope::query::QueryConfig;
use wallscope::rules::{self, PackSource, Scope};
use wallscope::sim::{Cohort, FaultCode, SimConfig, Simulator};
use wallscope::source::InputFormat;
use wallscope::store::{Snapshot, StoreConfig};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let devices: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let days: i64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(7);
    let poll_s: i64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let mut sim = Simulator::new(SimConfig {
        devices,
        duration_ms: days * 86_400_000,
        poll_interval_ms: poll_s * 1000,
        start_ms: 1_772_409_600_000,
        seed: 11,
        fault_rate: 0.06,
        cohort: Some(Cohort {
            share: 0.05,
            fault: FaultCode::F06,
            rate: 0.5,
        }),
        site_fault: Some(FaultCode::F14),
        ..SimConfig::default()
    })?;
    let cap = dir.path().join("fleet.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&cap)?);
    let stats = sim.run(&mut |rec| {
        use std::io::Write;
        out.write_all(rec.render().as_bytes())?;
        out.write_all(b"\n")
    })?;
    drop(out);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let mut reg = std::fs::File::create(data.join("devices.csv"))?;
    wallscope::sim::write_devices_csv(sim.devices(), &mut reg)?;
    println!(
        "simulated {devices} chargers × {days} d at {poll_s} s polls: {} messages in {:.1} s",
        stats.messages,
        started.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let r = pipeline::import_files(
        StoreConfig::new(&data),
        &[cap],
        InputFormat::Capture,
        None,
        Arc::new(SystemClock),
        &mut pipeline::Quiet,
    )?;
    println!(
        "imported {} messages in {:.1} s",
        r.messages,
        t.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Runtime::new()?;
    let t = Instant::now();
    let snapshot = Snapshot::load(&data)?;
    let pack =
        rules::pack::load(&PackSource::builtin()).map_err(|p| anyhow::anyhow!("{}", p[0]))?;
    let eval = rt.block_on(rules::evaluate(
        &snapshot,
        None,
        &pack,
        &Scope::default(),
        &QueryConfig::default(),
    ))?;
    rules::finding::save(&data, &eval.findings)?;
    println!(
        "fault rules: {} findings in {:.1} s ({} shards)",
        eval.findings.len(),
        t.elapsed().as_secs_f64(),
        eval.shards
    );

    let t = Instant::now();
    let (o, state) = rt.block_on(alerts::evaluate_dir(&data, None, &Settings::default(), 0))?;
    println!(
        "alerts: {} transitions, {} notifications, {} trend ticks in {:.1} s",
        o.transitions,
        o.notifications.len(),
        o.ticks,
        t.elapsed().as_secs_f64()
    );
    let firing: BTreeSet<(String, String)> = state
        .rows
        .iter()
        .filter(|r| r.state == State::Firing && r.kind == "trend")
        .map(|r| (r.rule.clone(), r.key.clone()))
        .collect();
    for (rule, key) in &firing {
        if rule != "repeat_fault" {
            println!("  trend alert {rule:<24} {key}");
        }
    }
    let repeats = firing.iter().filter(|(r, _)| r == "repeat_fault").count();
    println!("  repeat_fault alerts: {repeats}");
    let site_devices: BTreeSet<&str> = sim
        .labels()
        .iter()
        .filter(|l| l.fault == FaultCode::F14)
        .map(|l| l.device_id.as_str())
        .collect();
    let injected_sites: BTreeSet<&str> = sim
        .devices()
        .iter()
        .filter(|d| site_devices.contains(d.device_id.as_str()))
        .map(|d| d.site.as_str())
        .collect();
    println!(
        "injected: cohort firmware 25.44.1 with F06; F14 on the chargers of sites {injected_sites:?}"
    );

    // The forecast back-test: 20 synthetic histories of 13 weeks with a known upward trend
    // and a weekly pattern, the last 14 days held out.
    let (mut m, mut n) = (0.0, 0.0);
    for seed in 1..=20u64 {
        let y = synthetic(91, seed * 7919);
        if let Some((model, naive)) = forecast::backtest(&y, 14) {
            m += model;
            n += naive;
        }
    }
    println!(
        "forecast back-test (20 series, 14 days held out): MAE {:.2} Holt-Winters vs {:.2} naive seasonal episodes/day",
        m / 20.0,
        n / 20.0
    );
    Ok(())
}

/// Daily counts with trend 8 + 0.15·day, a weekly pattern, Poisson noise.
fn synthetic(days: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let weekly = [1.3, 1.2, 1.1, 1.0, 0.9, 0.6, 0.5];
    (0..days)
        .map(|d| {
            let lambda = (8.0 + 0.15 * d as f64) * weekly[d % 7];
            let (l, mut k, mut p) = ((-lambda).exp(), 0.0, 1.0);
            loop {
                p *= uniform();
                if p <= l {
                    break k;
                }
                k += 1.0;
            }
        })
        .collect()
}
