//! Shared helpers: temp dirs, running the CLI, reading query results.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_wallscope")
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn real(name: &str) -> PathBuf {
    fixtures().join("real").join(name)
}

pub const HOME_LOGS: [&str; 3] = [
    "logs.txt",
    "logs3-d-2.txt",
    "logs8-d-2.after-factory-reset.txt",
];

/// Runs the CLI with `--data-dir dir` and the given args.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run wallscope")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a query with --format csv and returns the rows (header dropped).
pub fn sql_rows(dir: &Path, q: &str) -> Vec<Vec<String>> {
    let o = run(dir, &["sql", q, "--format", "csv"]);
    assert!(o.status.success(), "sql {q} failed: {}", stderr(&o));
    stdout(&o)
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

pub fn sql_one(dir: &Path, q: &str) -> String {
    sql_rows(dir, q)
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .unwrap_or_default()
}

pub fn import_real(dir: &Path) {
    let mut args = vec!["import", "--format", "vitals-log", "--device", "home"];
    let home: Vec<String> = HOME_LOGS
        .iter()
        .map(|f| real(f).display().to_string())
        .collect();
    args.extend(home.iter().map(String::as_str));
    let o = run(dir, &args);
    assert!(o.status.success(), "import home: {}", stderr(&o));
    let tt = real("logs5tt-d-2.txt").display().to_string();
    let o = run(
        dir,
        &["import", "--format", "vitals-log", "--device", "tt", &tt],
    );
    assert!(o.status.success(), "import tt: {}", stderr(&o));
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    wallscope::broker::free_port("127.0.0.1").unwrap()
}
