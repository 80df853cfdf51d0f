//! Trend rules (`rules/trends/*.toml`): what no single finding shows — a fault that keeps
//! coming back, a cohort whose fault rate is significantly above the fleet's, a site whose
//! chargers see the grid misbehave together, a slow drift.
//!
//! Same shape as a fault rule (TOML + SQL, `[params]`, ordered `[[steps]]`), evaluated at
//! event-time ticks: every `every`, aligned to the epoch, as of `${now_ms}` (the tick) over
//! `${window_start_ms}`…`${now_ms}`. The SQL reads `findings`, `devices`, and the store's
//! tables; it must filter on those placeholders itself (the store is not cut at the tick, so
//! a rule that reads past `${now_ms}` would see the future during an import). Each result
//! row is one key whose condition holds at the tick:
//!
//! | column | meaning |
//! | --- | --- |
//! | `key` | required: what the alert is about (`site=S0042`, `firmware_version=25.2.1/F06`, a device id) |
//! | `first_ts` | optional: where the evidence starts; the condition's span runs from there (but from no earlier than the previous tick) to the tick |
//! | `state` | optional: `fire` (default) or `hold` — holds a firing alert, cannot start one |
//! | `device_id`, `fault`, `severity`, `summary` | optional |
//! | `site`, `installer`, `part_number`, `firmware_version`, `cohort` | optional labels (grouping, inhibition) |
//! | anything else | evidence, in column order |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, RecordBatch};
use datafusion::prelude::SessionContext;
use serde::Deserialize;

use super::Detail;
use super::lifecycle::{Condition, Policy};
use crate::rules::engine::{cell_json, ms_column, text_column};
use crate::rules::{Problem, Severity, Step};

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_trends.rs"));
}

/// Columns that become labels instead of evidence.
pub const LABEL_COLUMNS: [&str; 5] = [
    "site",
    "installer",
    "part_number",
    "firmware_version",
    "cohort",
];
/// Columns with a meaning of their own.
/// (`last_ts` is accepted and left out of the evidence: a row holds at the tick.)
const SPECIAL: [&str; 8] = [
    "key",
    "first_ts",
    "last_ts",
    "state",
    "device_id",
    "fault",
    "severity",
    "summary",
];
/// Placeholders the evaluator fills in.
pub const TICK_PARAMS: [&str; 3] = ["now_ms", "window_start_ms", "every_ms"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrendFile {
    id: String,
    title: String,
    severity: Severity,
    owner: crate::rules::Actor,
    every: String,
    window: String,
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    clear_for: Option<String>,
    #[serde(default)]
    keep_firing_for: Option<String>,
    #[serde(default)]
    description: String,
    sql: String,
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
    steps: Vec<Step>,
}

/// A validated trend rule.
#[derive(Debug, Clone)]
pub struct TrendRule {
    pub id: String,
    pub title: String,
    pub severity: Severity,
    pub owner: String,
    pub every_ms: i64,
    pub window_ms: i64,
    pub policy: Policy,
    pub description: String,
    pub params: BTreeMap<String, String>,
    pub steps: Vec<Step>,
    pub sql: String,
    pub source: String,
}

fn problem(source: &str, what: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem {
        source: source.to_string(),
        what: what.into(),
        fix: fix.into(),
    }
}

/// Parses and checks one trend rule file; every problem at once.
pub fn parse(source: &str, text: &str) -> Result<TrendRule, Vec<Problem>> {
    let f: TrendFile = toml::from_str(text).map_err(|e| {
        vec![problem(
            source,
            format!("not a valid trend rule: {}", e.message()),
            "see rules/trends/README.md for the fields a trend rule has",
        )]
    })?;
    let mut problems = Vec::new();
    let mut dur = |name: &str, v: Option<&str>, default: i64, positive: bool| -> i64 {
        match v.map(crate::config::parse_duration_ms) {
            None => default,
            Some(Ok(ms)) if !positive || ms > 0 => ms,
            Some(Ok(_)) => {
                problems.push(problem(
                    source,
                    format!("{name} is zero"),
                    "give a duration such as \"1h\"",
                ));
                default
            }
            Some(Err(e)) => {
                problems.push(problem(source, format!("{name}: {e}"), ""));
                default
            }
        }
    };
    let every_ms = dur("every", Some(&f.every), 3_600_000, true);
    let window_ms = dur("window", Some(&f.window), 86_400_000, true);
    // By default an incident ends after two ticks without its condition.
    let policy = Policy {
        for_ms: dur("for", f.for_.as_deref(), 0, false),
        clear_ms: dur("clear_for", f.clear_for.as_deref(), 2 * every_ms, false),
        keep_firing_ms: dur("keep_firing_for", f.keep_firing_for.as_deref(), 0, false),
    };
    if f.steps.is_empty() {
        problems.push(problem(
            source,
            "no steps",
            "add [[steps]] with who and text, most likely fix first",
        ));
    }
    let id_ok = !f.id.is_empty()
        && f.id.starts_with(|c: char| c.is_ascii_lowercase())
        && f.id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !id_ok {
        problems.push(problem(
            source,
            format!("id {:?} is not snake_case", f.id),
            "use lowercase letters, digits and '_'",
        ));
    }
    let mut params = BTreeMap::new();
    for (k, v) in &f.params {
        let lit = crate::rules::spec::literal(v);
        match lit {
            Some(l) if !TICK_PARAMS.contains(&k.as_str()) => {
                params.insert(k.clone(), l);
            }
            Some(_) => problems.push(problem(
                source,
                format!("parameter {k:?} is reserved"),
                "pick another name",
            )),
            None => problems.push(problem(
                source,
                format!("parameter {k:?} is not a number, string or boolean"),
                "",
            )),
        }
    }
    for name in crate::rules::spec::placeholders(&f.sql) {
        if !params.contains_key(&name) && !TICK_PARAMS.contains(&name.as_str()) {
            problems.push(problem(
                source,
                format!("the SQL uses ${{{name}}}, which is not defined"),
                format!("add `{name} = …` under [params]"),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(TrendRule {
        id: f.id,
        title: f.title,
        severity: f.severity,
        owner: f.owner.as_str().into(),
        every_ms,
        window_ms,
        policy,
        description: f.description,
        params,
        steps: f.steps,
        sql: f.sql,
        source: source.to_string(),
    })
}

/// The built-in trend rules plus those in `dirs` (`*.toml`, not recursive).
pub fn load(builtin: bool, dirs: &[PathBuf]) -> Result<Vec<TrendRule>, Vec<Problem>> {
    let mut texts: Vec<(String, String)> = Vec::new();
    let mut problems = Vec::new();
    if builtin {
        for (name, text) in builtin::BUILTIN {
            texts.push((format!("builtin:trends/{name}"), text.to_string()));
        }
    }
    for d in dirs {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(d) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect(),
            Err(e) => {
                problems.push(problem(
                    &d.display().to_string(),
                    format!("cannot read the directory: {e}"),
                    "",
                ));
                continue;
            }
        };
        files.sort();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(t) => texts.push((f.display().to_string(), t)),
                Err(e) => problems.push(problem(
                    &f.display().to_string(),
                    format!("cannot read: {e}"),
                    "",
                )),
            }
        }
    }
    let mut rules: Vec<TrendRule> = Vec::new();
    for (src, text) in texts {
        match parse(&src, &text) {
            Ok(r) => {
                if rules.iter().any(|o| o.id == r.id) {
                    problems.push(problem(
                        &src,
                        format!("duplicate trend rule id {:?}", r.id),
                        "rename one of them",
                    ));
                } else {
                    rules.push(r);
                }
            }
            Err(p) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(problems)
    }
}

impl TrendRule {
    pub fn render_sql(&self, now_ms: i64) -> String {
        let mut sql = self.sql.clone();
        for (k, v) in &self.params {
            sql = sql.replace(&format!("${{{k}}}"), v);
        }
        for (k, v) in [
            ("now_ms", now_ms),
            ("window_start_ms", now_ms - self.window_ms),
            ("every_ms", self.every_ms),
        ] {
            sql = sql.replace(&format!("${{{k}}}"), &v.to_string());
        }
        sql
    }

    /// The ticks after `after_ms` up to `until_ms` (inclusive), aligned to `every`.
    pub fn ticks(&self, after_ms: i64, until_ms: i64) -> impl Iterator<Item = i64> + use<> {
        let e = self.every_ms.max(1);
        let first = after_ms.div_euclid(e) * e + e;
        (0..)
            .map(move |k| first + k * e)
            .take_while(move |t| *t <= until_ms)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("trend rule {rule} ({source_file}) failed: {problem}")]
pub struct TrendError {
    pub rule: String,
    pub source_file: String,
    pub problem: String,
}

/// A condition of one key, as one tick of a trend rule found it.
#[derive(Debug, Clone, PartialEq)]
pub struct TickRow {
    pub key: String,
    pub condition: Condition<Detail>,
}

/// Runs `rule` as of `now_ms` in `ctx` (a read-only session with `findings` and `devices`).
pub async fn evaluate_tick(
    ctx: &SessionContext,
    rule: &TrendRule,
    now_ms: i64,
) -> Result<Vec<TickRow>, TrendError> {
    let err = |p: String| TrendError {
        rule: rule.id.clone(),
        source_file: rule.source.clone(),
        problem: p,
    };
    let batches = crate::query::run_readonly(ctx, &rule.render_sql(now_ms))
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    for b in &batches {
        out.extend(extract(rule, b, now_ms).map_err(err)?);
    }
    Ok(out)
}

fn extract(rule: &TrendRule, b: &RecordBatch, now_ms: i64) -> Result<Vec<TickRow>, String> {
    let schema = b.schema();
    let idx = |n: &str| schema.index_of(n).ok();
    let ki = idx("key").ok_or("the result has no `key` column")?;
    let e = |x: datafusion::error::DataFusionError| x.to_string();
    let text = |n: &str| {
        idx(n)
            .map(|i| text_column(b.column(i)))
            .transpose()
            .map_err(e)
    };
    let keys = text_column(b.column(ki)).map_err(e)?;
    let (state, device, fault, severity, summary) = (
        text("state")?,
        text("device_id")?,
        text("fault")?,
        text("severity")?,
        text("summary")?,
    );
    let first = idx("first_ts")
        .map(|i| ms_column(b.column(i)))
        .transpose()
        .map_err(e)?;

    let labels: Vec<(&str, arrow::array::StringArray)> = LABEL_COLUMNS
        .iter()
        .filter_map(|n| idx(n).map(|i| text_column(b.column(i)).map(|c| (*n, c))))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    let evidence: Vec<usize> = (0..schema.fields().len())
        .filter(|i| {
            let n = schema.field(*i).name().as_str();
            !SPECIAL.contains(&n) && !LABEL_COLUMNS.contains(&n)
        })
        .collect();
    let val = |c: &Option<arrow::array::StringArray>, r: usize| {
        c.as_ref()
            .filter(|c| c.is_valid(r))
            .map(|c| c.value(r).to_string())
    };
    let steps = serde_json::to_string(&rule.steps).unwrap_or_else(|_| "[]".into());
    let mut out = Vec::with_capacity(b.num_rows());
    for r in 0..b.num_rows() {
        if keys.is_null(r) {
            continue;
        }
        let hold = match val(&state, r).as_deref() {
            None | Some("fire") => false,
            Some("hold") => true,
            Some(other) => return Err(format!("state {other:?} is neither 'fire' nor 'hold'")),
        };
        let sev = match val(&severity, r) {
            Some(s) => Severity::parse(&s).ok_or_else(|| {
                format!("severity {s:?} is not one of info, minor, major, critical")
            })?,
            None => rule.severity,
        };
        let ms = |c: &Option<arrow::array::Int64Array>, d: i64| {
            c.as_ref()
                .filter(|c| c.is_valid(r))
                .map_or(d, |c| c.value(r))
        };
        // A row means the condition holds at the tick: the span ends at the tick, and
        // starts at the evidence but no earlier than the tick before (a rule over weeks
        // would otherwise back-date its alert by weeks, and `for` would mean nothing).
        let first_ms = ms(&first, now_ms - rule.every_ms).clamp(now_ms - rule.every_ms, now_ms);
        let last_ms = now_ms;
        let mut ev = String::from("{");
        for (n, &i) in evidence.iter().enumerate() {
            if n > 0 {
                ev.push(',');
            }
            ev.push_str(&serde_json::Value::String(schema.field(i).name().clone()).to_string());
            ev.push(':');
            ev.push_str(&cell_json(b.column(i), r).to_string());
        }
        ev.push('}');
        out.push(TickRow {
            key: keys.value(r).to_string(),
            condition: Condition {
                first_ms,
                last_ms,
                hold,
                detail: Detail {
                    device_id: val(&device, r),
                    fault: val(&fault, r),
                    severity: sev.as_str().into(),
                    owner: rule.owner.clone(),
                    title: rule.title.clone(),
                    summary: val(&summary, r).unwrap_or_else(|| rule.title.clone()),
                    labels: labels
                        .iter()
                        .filter(|(_, c)| c.is_valid(r))
                        .map(|(n, c)| (n.to_string(), c.value(r).to_string()))
                        .collect(),
                    evidence: ev,
                    steps: steps.clone(),
                },
            },
        });
    }
    Ok(out)
}

/// Plans every rule's SQL against the real schemas with no data (what `rules check` does
/// for trend rules).
pub async fn check(rules: &[TrendRule], dir: &Path) -> Vec<Problem> {
    let mut out = Vec::new();
    let snapshot = match crate::store::Snapshot::load(dir) {
        Ok(s) => s,
        Err(e) => return vec![problem(&dir.display().to_string(), e.to_string(), "")],
    };
    let ctx = match crate::query::session(&snapshot, &crate::query::QueryConfig::default()) {
        Ok(c) => c,
        Err(e) => return vec![problem("session", e.to_string(), "")],
    };
    for r in rules {
        let sql = r.render_sql(86_400_000 * 365);
        match ctx.state().create_logical_plan(&sql).await {
            Ok(plan) => {
                let names: Vec<&str> = plan
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                if !names.contains(&"key") {
                    out.push(problem(
                        &r.source,
                        "the SQL returns no `key` column",
                        "return what the alert is about AS key",
                    ));
                }
            }
            Err(e) => out.push(problem(
                &r.source,
                format!("the SQL does not plan: {e}"),
                "",
            )),
        }
    }
    out
}
