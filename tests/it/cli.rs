//! The CLI contract on real data: import, SQL, read-only refusals, bad input, locking.

use base64::Engine as _;

use crate::harness::*;

fn expected_closed_samples(files: &[&str]) -> usize {
    files
        .iter()
        .map(|f| {
            std::fs::read_to_string(real(f))
                .unwrap()
                .lines()
                .filter(|l| l.contains("\"contactor_closed\":true"))
                .count()
        })
        .sum()
}

#[test]
fn real_captures_import_and_answer_sql() {
    let d = tempfile::tempdir().unwrap();
    import_real(d.path());
    assert_eq!(sql_one(d.path(), "SELECT count(*) FROM vitals"), "469");
    let per = sql_rows(
        d.path(),
        "SELECT device_id, count(*), max(vehicle_current_a), sum(CASE WHEN contactor_closed THEN 1 ELSE 0 END) FROM vitals GROUP BY device_id ORDER BY device_id",
    );
    assert_eq!(per.len(), 2);
    let (home, tt) = (&per[0], &per[1]);
    assert_eq!((home[0].as_str(), home[1].as_str()), ("home", "354"));
    assert_eq!((tt[0].as_str(), tt[1].as_str()), ("tt", "115"));
    let tt_max: f64 = tt[2].parse().unwrap();
    assert!((38.0..=41.0).contains(&tt_max), "tt max current {tt_max}");
    let home_max: f64 = home[2].parse().unwrap();
    assert!(
        home_max < 1.0,
        "the failing car never draws current: {home_max}"
    );
    assert_eq!(home[3], expected_closed_samples(&HOME_LOGS).to_string());
    assert_eq!(
        tt[3],
        expected_closed_samples(&["logs5tt-d-2.txt"]).to_string()
    );
    // Mixed-case firmware names work unquoted; time filters work on event time.
    assert_eq!(
        sql_one(
            d.path(),
            "SELECT count(*) FROM vitals WHERE currentB_a > 30 AND device_id = 'tt'"
        ),
        sql_one(
            d.path(),
            "SELECT count(*) FROM vitals WHERE \"currentB_a\" > 30 AND device_id = 'tt'"
        )
    );
    assert_eq!(
        sql_one(
            d.path(),
            "SELECT count(*) FROM vitals WHERE ts >= TIMESTAMP '2025-12-21T04:39:18Z' AND ts < TIMESTAMP '2025-12-21T04:39:30Z'"
        ),
        "3"
    );
    // Importing the same files again stores nothing new.
    import_real(d.path());
    assert_eq!(sql_one(d.path(), "SELECT count(*) FROM vitals"), "469");
    assert_eq!(
        sql_one(
            d.path(),
            "SELECT count(*) FROM (SELECT DISTINCT device_id, ts FROM vitals)"
        ),
        "469"
    );
}

#[test]
fn sql_output_formats() {
    let d = tempfile::tempdir().unwrap();
    let tt = real("logs5tt-d-2.txt").display().to_string();
    assert!(
        run(
            d.path(),
            &["import", "--format", "vitals-log", "--device", "tt", &tt]
        )
        .status
        .success()
    );
    let o = run(
        d.path(),
        &[
            "sql",
            "SELECT device_id, max(grid_v) AS v FROM vitals GROUP BY device_id",
            "--format",
            "json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["device_id"], "tt");
    let o = run(d.path(), &["sql", "SELECT count(*) AS n FROM vitals"]);
    let t = stdout(&o);
    assert!(t.contains("| n ") && t.contains("| 115 |"), "{t}");
    // --data-dir after the subcommand works too.
    let o = std::process::Command::new(bin())
        .args([
            "sql",
            "SELECT count(*) FROM vitals",
            "--format",
            "csv",
            "--data-dir",
        ])
        .arg(d.path())
        .output()
        .unwrap();
    assert_eq!(stdout(&o).lines().nth(1), Some("115"));
}

#[test]
fn forbidden_sql_is_refused_and_touches_nothing() {
    let d = tempfile::tempdir().unwrap();
    let tt = real("logs5tt-d-2.txt").display().to_string();
    assert!(
        run(
            d.path(),
            &["import", "--format", "vitals-log", "--device", "tt", &tt]
        )
        .status
        .success()
    );
    let pwn = d.path().join("pwn.csv");
    let p = pwn.display();
    let statements = [
        format!("COPY (SELECT 1) TO '{p}'"),
        format!("COPY vitals TO '{p}' STORED AS CSV"),
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'".to_string(),
        format!(
            "CREATE EXTERNAL TABLE y STORED AS PARQUET LOCATION '{}'",
            d.path().join("data").display()
        ),
        "SELECT * FROM '/etc/passwd'".to_string(),
        "SELECT * FROM 'file:///etc/passwd'".to_string(),
        "INSERT INTO vitals SELECT * FROM vitals".to_string(),
        "DELETE FROM vitals".to_string(),
        "UPDATE vitals SET grid_v = 0".to_string(),
        "SET datafusion.runtime.memory_limit = '100G'".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
        "DROP TABLE vitals".to_string(),
        "CREATE TABLE t AS SELECT 1".to_string(),
        "CREATE VIEW v AS SELECT * FROM vitals".to_string(),
        "CREATE OR REPLACE TABLE vitals AS SELECT 1".to_string(),
        "SELECT 1; DROP TABLE vitals".to_string(),
        "WITH a AS (SELECT 1) SELECT * FROM '/etc/passwd'".to_string(),
        "SELECT * FROM (SELECT * FROM '/etc/hosts')".to_string(),
        "BEGIN TRANSACTION".to_string(),
        "CREATE FUNCTION f() RETURNS INT RETURN 1".to_string(),
    ];
    for s in &statements {
        let o = run(d.path(), &["sql", s]);
        assert!(!o.status.success(), "accepted: {s}");
        let e = stderr(&o);
        assert!(
            e.starts_with("error: "),
            "one clear error line for {s}: {e}"
        );
        assert!(!e.contains("panicked"), "{e}");
    }
    assert!(!pwn.exists(), "a COPY wrote a file");
    assert_eq!(sql_one(d.path(), "SELECT count(*) FROM vitals"), "115");
    let o = run(d.path(), &["sql", "DROP TABLE vitals"]);
    assert!(stderr(&o).contains("read-only"), "{}", stderr(&o));
}

fn capture_line(ts: &str, topic: &str, payload: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(v) => serde_json::json!({"ts": ts, "topic": topic, "payload": v}).to_string(),
        Err(_) => serde_json::json!({
            "ts": ts, "topic": topic,
            "payload_b64": base64::engine::general_purpose::STANDARD.encode(payload)
        })
        .to_string(),
    }
}

#[test]
fn bad_input_goes_to_dead_letters() {
    let d = tempfile::tempdir().unwrap();
    let ok = r#"{"contactor_closed":false,"vehicle_connected":false,"session_s":0,"grid_v":246.3,"grid_hz":59.83,"vehicle_current_a":0.0,"uptime_s":UPTIME,"evse_state":1,"current_alerts":[],"evse_not_ready_reasons":[4,8]}"#;
    let mut lines = Vec::new();
    for i in 0..10 {
        let p = ok.replace("UPTIME", &(105_032 + i * 2).to_string());
        lines.push(capture_line(
            &format!("2026-01-01T00:00:{i:02}Z"),
            "wc/good1/vitals",
            p.as_bytes(),
        ));
    }
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("wc/bad1/vitals", br#"{"grid_v": 240.1, "grid_hz""#.to_vec()),
        ("wc/bad1/vitals", b"not json at all".to_vec()),
        ("wc/bad1/vitals", b"\xff\xfe\x00garbage".to_vec()),
        ("wc/bad1/vitals", br#"{"grid_v": "two hundred"}"#.to_vec()),
        (
            "wc/bad1/vitals",
            [b"[".repeat(5000), b"]".repeat(5000)].concat(),
        ),
        (
            "wc/bad1/lifetime",
            br#"{"contactor_cycles": 10, "avg_startup_temp": nan, "energy_wh": 5}"#.to_vec(),
        ),
        ("no-such-topic-shape", br#"{"grid_v":1}"#.to_vec()),
        (
            "wc/bad1/vitals",
            format!(r#"{{"grid_v":1,"padding":"{}"}}"#, "x".repeat(1 << 20)).into_bytes(),
        ),
    ];
    for (i, (t, p)) in bad.iter().enumerate() {
        lines.push(capture_line(&format!("2026-01-01T00:01:{i:02}Z"), t, p));
    }
    lines.push("this line is not a capture line".into());
    let cap = d.path().join("cap.jsonl");
    std::fs::write(&cap, lines.join("\n") + "\n").unwrap();
    let data = d.path().join("data");
    let o = run(&data, &["import", cap.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "bad input exits 1: {}",
        stderr(&o)
    );
    let out = stdout(&o);
    assert!(out.contains("dead letters: 7"), "{out}");
    assert!(out.contains(":19: not a capture line"), "{out}");
    assert!(!stderr(&o).contains("panicked"));
    assert_eq!(sql_one(&data, "SELECT count(*) FROM vitals"), "10");
    assert_eq!(
        sql_one(
            &data,
            "SELECT count(*) FROM lifetime WHERE avg_startup_temp IS NULL AND contactor_cycles = 10"
        ),
        "1"
    );
    let classes = sql_rows(
        &data,
        "SELECT error_class, count(*) FROM dead_letters GROUP BY 1 ORDER BY 1",
    );
    let got: Vec<(String, String)> = classes
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let want = [
        ("bad_topic", "1"),
        ("invalid_json", "1"),
        ("invalid_utf8", "1"),
        ("not_an_object", "2"),
        ("oversized", "1"),
        ("wrong_type", "1"),
    ];
    assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
}

#[test]
fn second_writer_gets_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let (store, _) = wallscope::store::Store::open(
        wallscope::store::StoreConfig::new(d.path()),
        std::sync::Arc::new(wallscope::clock::SystemClock),
    )
    .unwrap();
    let tt = real("logs5tt-d-2.txt").display().to_string();
    let o = run(
        d.path(),
        &["import", "--format", "vitals-log", "--device", "tt", &tt],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("in use by another wallscope process")
            && e.contains(&std::process::id().to_string()),
        "{e}"
    );
    // Readers are not blocked by the writer's lock.
    assert!(
        run(d.path(), &["sql", "SELECT count(*) FROM vitals"])
            .status
            .success()
    );
    drop(store);
}

#[test]
fn user_errors_are_one_line_without_panics() {
    let d = tempfile::tempdir().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["import", "--format", "vitals-log", "/no/such/file.txt"],
        vec![
            "import",
            "--format",
            "vitals-log",
            "--device",
            "tt",
            "/no/such/file.txt",
        ],
        vec![
            "import",
            "--format",
            "vitals-log",
            "--device",
            "bad id",
            "Cargo.toml",
        ],
        vec!["sql", "SELECT nope FROM vitals"],
        vec!["sql", "SELEC 1"],
    ];
    for args in cases {
        let o = run(&d.path().join("data"), &args);
        assert!(!o.status.success(), "{args:?}");
        let e = stderr(&o);
        assert!(
            !e.contains("panicked") && e.trim().lines().count() == 1,
            "{args:?}: {e}"
        );
    }
    let o = std::process::Command::new(bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(stdout(&o).starts_with("wallscope "));
}
