//! One rule file: its TOML shape, and the checks that need no data (fault code known, id
//! well-formed, window parses, every `${param}` defined, steps present and attributed).
//! Checks that need the SQL planner live in `pack`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::faults;

/// How bad a finding is (DOMAIN.md §8 "Severity and ordering").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Minor,
    Major,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Info,
        Severity::Minor,
        Severity::Major,
        Severity::Critical,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Minor => "minor",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }
    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the cause most likely lies (DOMAIN.md §8 classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Hardware,
    Firmware,
    Installation,
    Grid,
    Vehicle,
    Network,
    Environment,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Hardware => "hardware",
            Class::Firmware => "firmware",
            Class::Installation => "installation",
            Class::Grid => "grid",
            Class::Vehicle => "vehicle",
            Class::Network => "network",
            Class::Environment => "environment",
        }
    }
}

/// Who acts on a step (DOMAIN.md §8 actors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Actor {
    Remote,
    Customer,
    Installer,
    Rma,
    Utility,
    Oem,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Remote => "remote",
            Actor::Customer => "customer",
            Actor::Installer => "installer",
            Actor::Rma => "rma",
            Actor::Utility => "utility",
            Actor::Oem => "oem",
        }
    }
    /// How a step is labelled for people.
    pub fn label(self) -> &'static str {
        match self {
            Actor::Remote => "remote specialist",
            Actor::Customer => "customer",
            Actor::Installer => "electrician",
            Actor::Rma => "warranty return",
            Actor::Utility => "utility",
            Actor::Oem => "vehicle service",
        }
    }
}

/// One ordered troubleshooting step.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub who: Actor,
    pub text: String,
}

/// A rule file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    id: String,
    fault: String,
    title: String,
    severity: Severity,
    class: Class,
    owner: Actor,
    window: String,
    sql: String,
    #[serde(default)]
    description: String,
    /// Registry columns the rule cannot do without (e.g. `max_current_a`).
    #[serde(default)]
    needs: Vec<String>,
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
    steps: Vec<Step>,
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub fault: String,
    pub title: String,
    pub severity: Severity,
    pub class: Class,
    pub owner: Actor,
    /// How much history one evaluation needs.
    pub window_ms: i64,
    pub description: String,
    pub needs: Vec<String>,
    /// Parameter defaults as SQL literals.
    pub params: BTreeMap<String, String>,
    pub steps: Vec<Step>,
    /// The SQL as written (with `${param}` placeholders).
    pub sql: String,
    /// Where the rule came from (a path, or `builtin:<file>`).
    pub source: String,
}

/// Placeholders the engine fills in at each evaluation, besides a rule's own parameters.
pub const ENGINE_PARAMS: [&str; 2] = ["eval_start_ms", "eval_end_ms"];

/// Registry columns a rule may declare in `needs`.
pub const REGISTRY_FACTS: [&str; 7] = crate::registry::FACTS;
/// One problem with one rule file, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub source: String,
    pub what: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.what)?;
        if !self.fix.is_empty() {
            write!(f, "; {}", self.fix)?;
        }
        Ok(())
    }
}

fn problem(source: &str, what: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem {
        source: source.to_string(),
        what: what.into(),
        fix: fix.into(),
    }
}

/// Parses and checks one rule file. Returns every problem found, not just the first.
pub fn parse(source: &str, text: &str) -> Result<Rule, Vec<Problem>> {
    let file: RuleFile = toml::from_str(text).map_err(|e| {
        let msg = e.message().to_string();
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        vec![problem(
            source,
            format!("not a valid rule file{at}: {msg}"),
            "see rules/README.md for the fields a rule has",
        )]
    })?;
    let mut problems = Vec::new();
    let id_ok = !file.id.is_empty()
        && file.id.len() <= 64
        && file.id.starts_with(|c: char| c.is_ascii_lowercase())
        && file
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !id_ok {
        problems.push(problem(
            source,
            format!("id {:?} is not snake_case", file.id),
            "use lowercase letters, digits and '_', starting with a letter (e.g. contactor_no_current)",
        ));
    }
    if faults::fault(&file.fault).is_none() {
        problems.push(problem(
            source,
            format!("unknown fault code {:?}", file.fault),
            format!(
                "use one of the catalogue codes {}–{} (DOMAIN.md §8)",
                faults::FAULTS[0].code,
                faults::FAULTS[faults::FAULTS.len() - 1].code
            ),
        ));
    }
    if file.title.trim().is_empty() {
        problems.push(problem(
            source,
            "title is empty",
            "say what is wrong in one line",
        ));
    }
    let window_ms = match crate::config::parse_duration_ms(&file.window) {
        Ok(ms) if ms > 0 => ms,
        Ok(_) => {
            problems.push(problem(
                source,
                "window is zero",
                "give how much history the rule needs, e.g. \"30m\"",
            ));
            0
        }
        Err(e) => {
            problems.push(problem(source, format!("window: {e}"), ""));
            0
        }
    };
    if file.steps.is_empty() {
        problems.push(problem(
            source,
            "no steps",
            "add [[steps]] with who = \"remote\"|\"customer\"|\"installer\"|\"rma\"|\"utility\"|\"oem\" and text, most likely fix first",
        ));
    }
    for (i, s) in file.steps.iter().enumerate() {
        if s.text.trim().is_empty() {
            problems.push(problem(source, format!("step {} has no text", i + 1), ""));
        }
    }
    for n in &file.needs {
        if !REGISTRY_FACTS.contains(&n.as_str()) {
            problems.push(problem(
                source,
                format!("needs {n:?}, which the device registry does not have"),
                format!("use one of {}", REGISTRY_FACTS.join(", ")),
            ));
        }
    }
    let mut params = BTreeMap::new();
    for (k, v) in &file.params {
        if ENGINE_PARAMS.contains(&k.as_str()) {
            problems.push(problem(
                source,
                format!("parameter {k:?} is reserved"),
                "the engine sets it at each evaluation; pick another name",
            ));
            continue;
        }
        match literal(v) {
            Some(l) => {
                params.insert(k.clone(), l);
            }
            None => problems.push(problem(
                source,
                format!("parameter {k:?} has a value that is not a number, string or boolean"),
                "write e.g. min_span_s = 18",
            )),
        }
    }
    for name in placeholders(&file.sql) {
        if !params.contains_key(&name) && !ENGINE_PARAMS.contains(&name.as_str()) {
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
    Ok(Rule {
        id: file.id,
        fault: file.fault,
        title: file.title,
        severity: file.severity,
        class: file.class,
        owner: file.owner,
        window_ms,
        description: file.description,
        needs: file.needs,
        params,
        steps: file.steps,
        sql: file.sql,
        source: source.to_string(),
    })
}

/// A `[params]` value as an SQL literal (numbers, quoted strings, booleans).
pub(crate) fn literal(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) if f.is_finite() => Some(format!("{f:?}")),
        toml::Value::Boolean(b) => Some(if *b { "TRUE" } else { "FALSE" }.into()),
        toml::Value::String(s) => Some(format!("'{}'", s.replace('\'', "''"))),
        _ => None,
    }
}

/// The `${name}` placeholders of `sql`, in order of appearance.
pub fn placeholders(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = sql;
    while let Some(at) = rest.find("${") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find('}') else { break };
        out.push(rest[..end].trim().to_string());
        rest = &rest[end + 1..];
    }
    out
}

impl Rule {
    /// The SQL with every placeholder replaced: the rule's parameters, then the engine's.
    pub fn render_sql(&self, engine: &[(&str, String)]) -> String {
        let mut sql = self.sql.clone();
        for (k, v) in &self.params {
            sql = sql.replace(&format!("${{{k}}}"), v);
        }
        for (k, v) in engine {
            sql = sql.replace(&format!("${{{k}}}"), v);
        }
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "x_rule"
fault = "F01"
title = "T"
severity = "major"
class = "vehicle"
owner = "remote"
window = "30m"
sql = "SELECT device_id, ${min_s} AS m FROM samples WHERE t_ms < ${eval_end_ms}"
[params]
min_s = 18
[[steps]]
who = "customer"
text = "Check the car."
"#;

    #[test]
    fn parses_and_renders() {
        let r = parse("a.toml", GOOD).unwrap();
        assert_eq!(r.window_ms, 1_800_000);
        assert_eq!(
            r.render_sql(&[("eval_end_ms", "5".into())]),
            "SELECT device_id, 18 AS m FROM samples WHERE t_ms < 5"
        );
    }

    #[test]
    fn reports_every_problem_with_a_fix() {
        let bad = GOOD
            .replace("\"F01\"", "\"F99\"")
            .replace("x_rule", "X-Rule")
            .replace("min_s = 18", "other = 1");
        let p = parse("b.toml", &bad).unwrap_err();
        let text: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(p.len(), 3, "{text:?}");
        assert!(text[0].contains("not snake_case"));
        assert!(text[1].contains("unknown fault code \"F99\""));
        assert!(text[2].contains("${min_s}") && text[2].contains("under [params]"));
        let typo = GOOD.replace("severity = \"major\"", "severty = \"major\"");
        let p = parse("c.toml", &typo).unwrap_err();
        assert!(p[0].what.contains("unknown field `severty`"), "{:?}", p[0]);
    }
}
