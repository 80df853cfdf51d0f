//! The rule layer: rule test cases as data (golden files), the real captures through
//! `diagnose`, `rules check` problems, `health`, and the stored `findings` table.

use std::path::Path;
use std::sync::Arc;

use wallscope::clock::SystemClock;
use wallscope::pipeline::cases;
use wallscope::rules::{PackSource, pack};

use crate::harness::*;

/// Every case under rules/tests: goldens match, and each case's must / must_not hold.
#[test]
fn rule_cases_match_their_goldens() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/tests");
    let pack = pack::load(&PackSource::builtin()).expect("built-in rules load");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let list = cases::list(&dir).unwrap();
    assert!(list.len() >= 4, "too few rule cases: {list:?}");
    let mut failures = Vec::new();
    for c in &list {
        let r = cases::run(c, &pack, false, Arc::new(SystemClock), rt.handle()).unwrap();
        for f in r.failures {
            failures.push(format!("{}: {f}", r.case));
        }
    }
    assert!(
        failures.is_empty(),
        "rule cases failed (regenerate goldens with `wallscope rules test --bless` only if the change is intended):\n{}",
        failures.join("\n")
    );
}

#[test]
fn builtin_pack_plans_and_covers_the_catalogue() {
    let pack = pack::load(&PackSource::builtin()).expect("built-in rules load");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let problems = rt.block_on(pack::check(&pack));
    assert!(problems.is_empty(), "{problems:?}");
    let mut faults: Vec<&str> = pack.rules.iter().map(|r| r.fault.as_str()).collect();
    faults.sort_unstable();
    faults.dedup();
    for need in ["F00", "F01"] {
        assert!(faults.contains(&need), "no rule for {need}: {faults:?}");
    }
    for r in &pack.rules {
        assert!(!r.steps.is_empty(), "{} has no steps", r.id);
    }
}

fn diagnose_json(dir: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let o = run(dir, args);
    assert!(o.status.success(), "diagnose failed: {}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn diagnose_finds_f01_on_the_failing_unit_and_nothing_on_the_healthy_one() {
    let d = tempfile::tempdir().unwrap();
    let home: Vec<String> = HOME_LOGS
        .iter()
        .map(|f| real(f).display().to_string())
        .collect();
    let mut args = vec![
        "diagnose",
        "--format",
        "vitals-log",
        "--device",
        "home",
        "--json",
    ];
    args.extend(home.iter().map(String::as_str));
    let found = diagnose_json(d.path(), &args);
    let f01: Vec<_> = found.iter().filter(|f| f["fault"] == "F01").collect();
    assert_eq!(f01.len(), 1, "{found:?}");
    let f = f01[0];
    for key in [
        "device_id",
        "fault",
        "rule",
        "severity",
        "first_ts",
        "last_ts",
        "evidence",
        "steps",
    ] {
        assert!(!f[key].is_null(), "F01 finding lacks {key}: {f}");
    }
    assert_eq!(f["device_id"], "home");
    // Five dead attempts across the captured sessions, none drawing current.
    assert_eq!(f["evidence"]["dead_attempts"], 5, "{f}");
    assert_eq!(f["evidence"]["max_current_a"], 0.0, "{f}");
    // The steps start with the vehicle-side checks.
    let steps = f["steps"].as_array().unwrap();
    assert_eq!(steps[0]["who"], "customer");
    assert!(
        steps[0]["text"].as_str().unwrap().contains("vehicle"),
        "{}",
        steps[0]
    );
    // Nothing is written into the working directory's default data dir.
    assert!(!d.path().join("wallscope-data").exists());

    let tt = real("logs5tt-d-2.txt").display().to_string();
    let found = diagnose_json(
        d.path(),
        &[
            "diagnose",
            "--format",
            "vitals-log",
            "--device",
            "tt",
            "--json",
            &tt,
        ],
    );
    let serious: Vec<_> = found.iter().filter(|f| f["severity"] != "info").collect();
    assert!(serious.is_empty(), "healthy unit got {serious:?}");
}

#[test]
fn rules_check_names_each_file_and_the_fix() {
    let d = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/f01_contactor_no_current.toml"),
    )
    .unwrap()
    .replace("id = \"contactor_no_current\"", "id = \"my_rule\"");
    let rules = d.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("a_column.toml"),
        good.replace("e.max_current_a < ", "e.max_curent_a < ")
            .replace("my_rule", "a_rule"),
    )
    .unwrap();
    std::fs::write(
        rules.join("b_output.toml"),
        good.replace("SELECT c.device_id,", "SELECT c.device_id AS dev,")
            .replace("my_rule", "b_rule"),
    )
    .unwrap();
    std::fs::write(
        rules.join("c_fault.toml"),
        good.replace("fault = \"F01\"", "fault = \"F77\"")
            .replace("my_rule", "c_rule"),
    )
    .unwrap();
    std::fs::write(
        rules.join("d_dup.toml"),
        good.replace("my_rule", "contactor_no_current"),
    )
    .unwrap();
    let o = run(d.path(), &["rules", "check", rules.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    // Load problems first (fault code, duplicate id), reported together.
    assert!(
        err.contains("c_fault.toml: unknown fault code \"F77\""),
        "{err}"
    );
    assert!(
        err.contains("d_dup.toml: duplicate rule id \"contactor_no_current\""),
        "{err}"
    );
    std::fs::remove_file(rules.join("c_fault.toml")).unwrap();
    std::fs::remove_file(rules.join("d_dup.toml")).unwrap();
    let o = run(d.path(), &["rules", "check", rules.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("a_column.toml: the SQL does not plan") && err.contains("max_curent_a"),
        "{err}"
    );
    assert!(
        err.contains("b_output.toml: the SQL does not return a `device_id` column"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // The built-in pack on its own is clean.
    let o = run(d.path(), &["rules", "check"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn health_reports_status_findings_and_sessions() {
    let d = tempfile::tempdir().unwrap();
    import_real(d.path());
    let o = run(d.path(), &["health", "home"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("home · FAULTED"), "{out}");
    assert!(
        out.contains("latest vitals:") && out.contains("grid_v"),
        "{out}"
    );
    assert!(out.contains("F01 MAJOR"), "{out}");
    assert!(out.contains("unplugged_no_energy"), "{out}");
    let o = run(d.path(), &["health", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no telemetry for device \"nope\"") && stderr(&o).contains("home"),
        "{}",
        stderr(&o)
    );
}

/// The same capture evaluated live (chunk by chunk as it becomes durable, only the devices
/// each chunk touched, merged into the stored findings) and in history mode (once, over
/// everything) yields identical findings.
#[test]
fn live_evaluation_equals_history() {
    use std::io::Write as _;
    use wallscope::batch::{Batcher, FlushPolicy};
    use wallscope::decode::{DecodeConfig, Decoder};
    use wallscope::pipeline::live_rules::{Dirty, LiveRules, evaluate_incremental};
    use wallscope::pipeline::{Quiet, import_files};
    use wallscope::query::QueryConfig;
    use wallscope::rules::{Scope, evaluate};
    use wallscope::sim::{SimConfig, Simulator};
    use wallscope::source::{InputFormat, read_file};
    use wallscope::store::{Snapshot, StoreConfig};

    let d = tempfile::tempdir().unwrap();
    use wallscope::sim::FaultCode::*;
    let mut sim = Simulator::new(SimConfig {
        devices: 14,
        duration_ms: 6 * 3_600_000,
        seed: 9,
        faults: vec![F00, F01, F03, F04, F07, F09, F14, F22],
        fault_rate: 0.7,
        ..SimConfig::default()
    })
    .unwrap();
    let mut lines = Vec::new();
    sim.run(&mut |rec| {
        lines.push(rec.render());
        Ok(())
    })
    .unwrap();
    let mut reg = Vec::new();
    wallscope::sim::write_devices_csv(sim.devices(), &mut reg).unwrap();
    let devices =
        wallscope::registry::parse_csv(std::str::from_utf8(&reg).unwrap(), "sim").unwrap();
    let pack = pack::load(&PackSource::builtin()).unwrap();
    let live = LiveRules {
        pack: pack.clone(),
        devices: Some(devices.clone()),
        interval_ms: 0,
        full_every_ms: u64::MAX,
        alerts: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let clock: Arc<dyn wallscope::clock::Clock> = Arc::new(SystemClock);
    let data = d.path().join("data");
    let mut stored = Vec::new();
    let chunks = 10;
    let per = lines.len().div_ceil(chunks);
    for (i, chunk) in lines.chunks(per).enumerate() {
        let path = d.path().join(format!("chunk{i}.jsonl"));
        let mut f = std::fs::File::create(&path).unwrap();
        for l in chunk {
            writeln!(f, "{l}").unwrap();
        }
        drop(f);
        // What the live writer would hand the evaluator for this batch.
        let mut decoder = Decoder::new(DecodeConfig::default());
        let mut batcher = Batcher::new(FlushPolicy::default(), clock.clone());
        read_file(
            &path,
            InputFormat::Capture,
            None,
            &mut |m| {
                decoder.decode(&m, &mut batcher.builders);
            },
            &mut |_| {},
            &mut |_| {},
        )
        .unwrap();
        let dirty = Dirty::of(&batcher.flush());
        import_files(
            StoreConfig::new(&data),
            &[path],
            InputFormat::Capture,
            None,
            clock.clone(),
            &mut Quiet,
        )
        .unwrap();
        let snapshot = Snapshot::load(&data).unwrap();
        rt.block_on(evaluate_incremental(
            &snapshot,
            &live,
            Some(&dirty),
            false,
            &mut stored,
        ))
        .unwrap();
    }
    let snapshot = Snapshot::load(&data).unwrap();
    let history = rt
        .block_on(evaluate(
            &snapshot,
            Some(devices),
            &pack,
            &Scope::default(),
            &QueryConfig::default(),
        ))
        .unwrap();
    let key = |f: &wallscope::rules::Finding| cases::golden_line(f);
    let mut h: Vec<String> = history.findings.iter().map(key).collect();
    let mut l: Vec<String> = stored.iter().map(key).collect();
    h.sort();
    l.sort();
    assert!(h.len() >= 2, "the fleet should show several faults: {h:?}");
    assert_eq!(l, h, "live findings differ from history");
}

/// Accuracy over the simulator's labels: 500 chargers for 24 h with 150 injected faults of
/// every injectable kind, through decode → store → the whole pack, scored per fault. The
/// same figures as `wallscope eval` on the same fleet (README, "Rule layer").
#[test]
fn pack_finds_the_simulated_faults_and_nothing_on_healthy_chargers() {
    use wallscope::model::Message;
    use wallscope::pipeline::{ScratchDir, import_messages_scratch, score};
    use wallscope::query::QueryConfig;
    use wallscope::rules::{Scope, evaluate};
    use wallscope::sim::{SimConfig, Simulator};
    use wallscope::store::StoreConfig;

    let mut sim = Simulator::new(SimConfig {
        devices: 500,
        duration_ms: 24 * 3_600_000,
        seed: 21,
        fault_rate: 0.3,
        ..SimConfig::default()
    })
    .unwrap();
    // Labels are planned before any message exists.
    let mut reg = Vec::new();
    wallscope::sim::write_devices_csv(sim.devices(), &mut reg).unwrap();
    let devices =
        wallscope::registry::parse_csv(std::str::from_utf8(&reg).unwrap(), "sim").unwrap();
    let mut csv = Vec::new();
    wallscope::sim::write_labels_csv(sim.labels(), &mut csv).unwrap();
    let labels = score::parse_labels(std::str::from_utf8(&csv).unwrap(), "sim").unwrap();
    assert!(
        labels.len() >= 140,
        "too few injected faults: {}",
        labels.len()
    );

    // The fleet streams from a simulator thread into the import (5 M messages: not kept).
    let (tx, rx) = std::sync::mpsc::sync_channel::<Message>(8192);
    let simulator = std::thread::spawn(move || {
        sim.run(&mut |r| {
            tx.send(Message {
                topic: r.topic,
                payload: r.payload,
                received_at_ms: r.ts_ms,
                recorded: true,
            })
            .map_err(std::io::Error::other)
        })
        .unwrap();
    });
    let scratch = ScratchDir::new().unwrap();
    let (_, snapshot) =
        import_messages_scratch(StoreConfig::scratch(&scratch.0), Arc::new(SystemClock), rx)
            .unwrap();
    simulator.join().unwrap();
    let pack = pack::load(&PackSource::builtin()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let eval = rt
        .block_on(evaluate(
            &snapshot,
            Some(devices),
            &pack,
            &Scope::default(),
            &QueryConfig::default(),
        ))
        .unwrap();
    assert_eq!(eval.devices, 500);
    let s = score::score(&labels, &eval.findings);
    let kinds: Vec<&String> = s.faults.keys().collect();
    assert!(kinds.len() >= 15, "too few fault kinds injected: {kinds:?}");
    for (fault, c) in &s.faults {
        let (p, r) = (c.precision().unwrap_or(0.0), c.recall().unwrap_or(0.0));
        assert!(
            p >= 0.95 && r >= 0.95,
            "{fault}: precision {p:.3}, recall {r:.3} ({c:?})"
        );
    }
    assert!(
        s.healthy_hits.is_empty(),
        "findings on healthy chargers: {:?}",
        s.healthy_hits
    );
}

/// The `samples` view is computed by a sort and one pass in Rust (the window operators pay
/// per device); its SQL stays the definition. Both agree row for row on the real captures
/// and on a simulated fleet with firmware quirks (burst duplicates, `nan`, reboots) and
/// faults (no-current closures, welded contactor, GFCI trips, a reboot loop).
#[test]
fn samples_pass_equals_its_sql() {
    use arrow::array::{Array, AsArray};
    use arrow::compute::{cast, concat_batches};
    use arrow::datatypes::DataType;
    use datafusion::prelude::col;
    use wallscope::query::{self, QueryConfig};
    use wallscope::rules::views;
    use wallscope::store::Snapshot;

    let d = tempfile::tempdir().unwrap();
    import_real(d.path());
    let cap = d.path().join("fleet.jsonl");
    let cap_s = cap.display().to_string();
    let o = run(
        d.path(),
        &[
            "simulate",
            "--devices",
            "12",
            "--duration",
            "8h",
            "--seed",
            "5",
            "--poll-interval",
            "2s",
            "--fault",
            "F01",
            "F03",
            "F09",
            "F22",
            "--out",
            &cap_s,
        ],
    );
    assert!(o.status.success(), "simulate: {}", stderr(&o));
    // Exit 1: the firmware quirks include truncated payloads, dead-lettered as such.
    let o = run(d.path(), &["import", &cap_s]);
    assert!(
        o.status.code() == Some(1) && stdout(&o).contains("dead letters"),
        "import: {}{}",
        stdout(&o),
        stderr(&o)
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let snapshot = Snapshot::load(d.path()).unwrap();
    let ctx = query::session(&snapshot, &QueryConfig::default()).unwrap();
    let (by_sql, by_pass) = rt.block_on(async {
        let df = ctx.sql(views::samples_sql()).await.unwrap();
        let schema = df.schema().inner().clone();
        let sorted = df
            .sort(vec![
                col("device_id").sort(true, false),
                col("ts").sort(true, false),
            ])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let by_sql = concat_batches(&schema, &sorted).unwrap();
        let pass = views::samples(&ctx).await.unwrap();
        let by_pass = concat_batches(&pass[0].schema(), &pass).unwrap();
        (by_sql, by_pass)
    });
    assert!(
        by_sql.num_rows() > 50_000,
        "too few samples: {}",
        by_sql.num_rows()
    );
    assert_eq!(by_pass.num_rows(), by_sql.num_rows(), "row counts differ");
    // Sessions, closures and reboots are all present, so the running numbers are exercised.
    let max = |b: &arrow::array::RecordBatch, c: &str| {
        arrow::compute::max(
            b.column_by_name(c)
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>(),
        )
    };
    assert!(max(&by_sql, "plug_no") >= Some(3) && max(&by_sql, "close_no") >= Some(3));
    assert!(
        by_sql
            .column_by_name("rebooted")
            .unwrap()
            .as_boolean()
            .true_count()
            > 0
    );
    let sql_fields = by_sql.schema().fields().clone();
    let pass_fields = by_pass.schema().fields().clone();
    let names =
        |f: &arrow::datatypes::Fields| f.iter().map(|f| f.name().clone()).collect::<Vec<_>>();
    assert_eq!(names(&pass_fields), names(&sql_fields), "columns differ");
    for (i, f) in sql_fields.iter().enumerate() {
        let (a, b) = (by_sql.column(i), by_pass.column(i));
        assert_eq!(b.data_type(), a.data_type(), "type of {}", f.name());
        // Dictionary-encoded ids may hold different dictionaries: compare the values.
        let plain = |x: &arrow::array::ArrayRef| match x.data_type() {
            DataType::Dictionary(_, v) => cast(x, v).unwrap(),
            _ => x.clone(),
        };
        let (a, b) = (plain(a), plain(b));
        if a.as_ref() != b.as_ref() {
            let at = (0..a.len())
                .find(|&r| a.slice(r, 1).as_ref() != b.slice(r, 1).as_ref())
                .unwrap();
            panic!(
                "column {} differs first at row {at}: sql {:?} vs pass {:?}",
                f.name(),
                a.slice(at, 1),
                b.slice(at, 1)
            );
        }
    }
}

/// `live_rules::run` with the built-in pack alone (no registry, no interval, no sweep
/// before the feed closes, no alerts) over the store behind `handle`, fed by `rx`.
fn bare_evaluator(
    handle: wallscope::store::service::StoreHandle,
    data: &Path,
    rx: tokio::sync::mpsc::UnboundedReceiver<wallscope::pipeline::live_rules::Dirty>,
    metrics: &Arc<wallscope::ingest::IngestMetrics>,
    clock: Arc<dyn wallscope::clock::Clock>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let rules = wallscope::pipeline::live_rules::LiveRules {
        pack: pack::load(&PackSource::builtin()).unwrap(),
        devices: None,
        interval_ms: 0,
        full_every_ms: u64::MAX,
        alerts: None,
    };
    wallscope::pipeline::live_rules::run(
        rules,
        handle,
        data.to_path_buf(),
        rx,
        metrics.clone(),
        clock,
    )
}

/// What the acker hands the evaluator for a durable batch of `device` reaching `newest_ms`.
fn notice(
    device: &str,
    newest_ms: i64,
    min_ts_ms: Option<i64>,
) -> wallscope::pipeline::live_rules::Dirty {
    let mut d = wallscope::pipeline::live_rules::Dirty::default();
    d.devices.insert(device.to_string());
    d.newest.insert(device.to_string(), newest_ms);
    d.min_ts_ms = min_ts_ms;
    d.durable_at = Some(std::time::Instant::now());
    d
}

/// Under steady load the evaluator takes every notice already queued into its next
/// evaluation: fifty durable batches waiting when it starts are covered by one evaluation,
/// not one evaluation each (which would let the queue, and the lag, grow without end).
#[test]
fn live_evaluator_coalesces_every_queued_notice() {
    use wallscope::ingest::IngestMetrics;
    use wallscope::pipeline::live_rules::Dirty;
    use wallscope::pipeline::{Quiet, import_files};
    use wallscope::source::InputFormat;
    use wallscope::store::service::StoreService;
    use wallscope::store::{Store, StoreConfig};

    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let clock: Arc<dyn wallscope::clock::Clock> = Arc::new(SystemClock);
    import_files(
        StoreConfig::new(&data),
        &[real("logs5tt-d-2.txt")],
        InputFormat::VitalsLog,
        Some("tt"),
        clock.clone(),
        &mut Quiet,
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let metrics = Arc::new(IngestMetrics::default());
    rt.block_on(async {
        let (store, _) = Store::open(StoreConfig::new(&data), clock.clone()).unwrap();
        let service = StoreService::start(store, 4);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Dirty>();
        for i in 0..50 {
            tx.send(notice("tt", i, None)).unwrap();
        }
        drop(tx);
        bare_evaluator(service.handle(), &data, rx, &metrics, clock).await;
        service.close().unwrap();
    });
    assert_eq!(metrics.rule_evaluations.get(), 1);
    assert_eq!(metrics.rule_errors.get(), 0);
}

/// A device's first evaluation in a run judges its stored past (as far back as the longest
/// rule window before its new data), not only what reaches the new data. The store holds
/// `home`'s real logs (an F01 episode that ended two hours before its newest sample), as
/// if imported before `run` started; the first durable batch brings only its newest sample,
/// so an evaluation that reported only episodes reaching the new data would leave the F01
/// for the stop sweep. It must be found by that first evaluation.
#[test]
fn live_evaluator_judges_an_unevaluated_past_on_first_contact() {
    use wallscope::ingest::IngestMetrics;
    use wallscope::pipeline::live_rules::Dirty;
    use wallscope::pipeline::{Quiet, import_files};
    use wallscope::source::InputFormat;
    use wallscope::store::service::StoreService;
    use wallscope::store::{Snapshot, Store, StoreConfig};

    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let clock: Arc<dyn wallscope::clock::Clock> = Arc::new(SystemClock);
    let logs: Vec<_> = HOME_LOGS.iter().map(|f| real(f)).collect();
    import_files(
        StoreConfig::new(&data),
        &logs,
        InputFormat::VitalsLog,
        Some("home"),
        clock.clone(),
        &mut Quiet,
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let newest = rt
        .block_on(wallscope::alerts::device_progress(
            &Snapshot::load(&data).unwrap(),
        ))
        .unwrap()["home"];
    let metrics = Arc::new(IngestMetrics::default());
    let stored = rt.block_on(async {
        let (store, _) = Store::open(StoreConfig::new(&data), clock.clone()).unwrap();
        let service = StoreService::start(store, 4);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Dirty>();
        tx.send(notice("home", newest, Some(newest))).unwrap();
        let evaluator = tokio::spawn(bare_evaluator(service.handle(), &data, rx, &metrics, clock));
        // The feed stays open: no stop sweep until the first evaluation has been judged.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while metrics.rule_evaluations.get() == 0 {
            assert!(std::time::Instant::now() < deadline, "no evaluation ran");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // `findings_new` is counted just after `rule_evaluations`; only a failing run waits
        // out this bound.
        let counted = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while metrics.findings_new.get() == 0 && std::time::Instant::now() < counted {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let first = (metrics.rule_evaluations.get(), metrics.findings_new.get());
        drop(tx);
        evaluator.await.unwrap();
        service.close().unwrap();
        assert_eq!(first.0, 1, "one evaluation before the feed closed");
        assert!(
            first.1 >= 1,
            "the first evaluation found nothing in home's stored past"
        );
        wallscope::rules::finding::load(&data).unwrap()
    });
    assert_eq!(metrics.rule_errors.get(), 0);
    assert!(
        stored
            .iter()
            .any(|f| f.fault == "F01" && f.device_id == "home"),
        "F01 for home: {stored:?}"
    );
}
