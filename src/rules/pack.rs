//! A rule pack: the built-in rules (compiled into the binary from `rules/*.toml`) plus any
//! directories an operator adds, and `check`, which plans every rule's SQL against the
//! real schemas without data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::spec::{self, ENGINE_PARAMS, Problem, Rule};
use super::views::VIEWS;
use crate::model::Table;

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_rules.rs"));
}

/// The rules one evaluation runs.
#[derive(Debug, Clone, Default)]
pub struct Pack {
    pub rules: Vec<Rule>,
}

impl Pack {
    /// The longest rule window: how far before the data in scope an evaluation reads back
    /// (0 for an empty pack).
    pub fn longest_window_ms(&self) -> i64 {
        self.rules.iter().map(|r| r.window_ms).max().unwrap_or(0)
    }
}

/// Output columns every rule must return.
pub const REQUIRED_COLUMNS: [&str; 3] = ["device_id", "first_ts", "last_ts"];
/// Output columns with a meaning of their own (not evidence).
pub const SPECIAL_COLUMNS: [&str; 2] = ["severity", "summary"];

/// Where rules come from.
#[derive(Debug, Clone, Default)]
pub struct PackSource {
    /// Include the rules compiled into the binary.
    pub builtin: bool,
    /// Directories of `*.toml` rule files (not recursive).
    pub dirs: Vec<PathBuf>,
}

impl PackSource {
    pub fn builtin() -> Self {
        PackSource {
            builtin: true,
            dirs: Vec::new(),
        }
    }
}

/// The file names and texts of the built-in rules.
pub fn builtin_files() -> &'static [(&'static str, &'static str)] {
    builtin::BUILTIN
}

/// Loads and statically checks every rule; all problems at once.
pub fn load(src: &PackSource) -> Result<Pack, Vec<Problem>> {
    let mut texts: Vec<(String, String)> = Vec::new();
    let mut problems = Vec::new();
    if src.builtin {
        for (name, text) in builtin_files() {
            texts.push((format!("builtin:rules/{name}"), (*text).to_string()));
        }
    }
    for dir in &src.dirs {
        match read_dir(dir) {
            Ok(files) => texts.extend(files),
            Err(p) => problems.push(p),
        }
    }
    let mut rules: Vec<Rule> = Vec::new();
    let mut ids: HashMap<String, String> = HashMap::new();
    for (source, text) in texts {
        match spec::parse(&source, &text) {
            Ok(rule) => {
                if let Some(first) = ids.get(&rule.id) {
                    problems.push(Problem {
                        source: source.clone(),
                        what: format!("duplicate rule id {:?} (also in {first})", rule.id),
                        fix: "give each rule its own id; to replace a built-in rule, run with --no-builtin-rules and a directory holding your version".into(),
                    });
                    continue;
                }
                ids.insert(rule.id.clone(), source);
                rules.push(rule);
            }
            Err(p) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        Ok(Pack { rules })
    } else {
        Err(problems)
    }
}

fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, Problem> {
    let problem = |what: String| Problem {
        source: dir.display().to_string(),
        what,
        fix: "pass a directory of *.toml rule files".into(),
    };
    let entries = std::fs::read_dir(dir).map_err(|e| problem(format!("cannot read: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p)
            .map_err(|e| problem(format!("{}: cannot read: {e}", p.display())))?;
        out.push((p.display().to_string(), text));
    }
    Ok(out)
}

/// A session with every table and view the rules may read, all empty: enough to plan.
async fn planning_session() -> Result<SessionContext, datafusion::error::DataFusionError> {
    let mut config = datafusion::prelude::SessionConfig::new();
    config.options_mut().sql_parser.enable_ident_normalization = false;
    let ctx = SessionContext::new_with_config(config);
    let empty = |schema: arrow::datatypes::SchemaRef| MemTable::try_new(schema, vec![vec![]]);
    for t in Table::ALL {
        ctx.register_table(t.name(), Arc::new(empty(t.schema())?))?;
        if Table::TELEMETRY.contains(&t) {
            ctx.register_table(format!("fleet_{}", t.name()), Arc::new(empty(t.schema())?))?;
        }
    }
    ctx.register_table(
        crate::model::DEVICES_TABLE,
        Arc::new(empty(crate::model::devices_schema())?),
    )?;
    ctx.register_table(
        crate::model::FINDINGS_TABLE,
        Arc::new(empty(crate::model::findings_schema())?),
    )?;
    for (name, sql) in VIEWS {
        let df = ctx.sql(sql).await?;
        ctx.register_table(name, df.into_view())?;
    }
    Ok(ctx)
}

/// Plans every rule's SQL against the real schemas and checks its output columns.
pub async fn check(pack: &Pack) -> Vec<Problem> {
    let ctx = match planning_session().await {
        Ok(c) => c,
        Err(e) => {
            return vec![Problem {
                source: "builtin views".into(),
                what: format!("the shared views do not plan: {e}"),
                fix: "this is a wallscope bug; please report it".into(),
            }];
        }
    };
    let mut problems = Vec::new();
    for rule in &pack.rules {
        if let Err(p) = check_rule(&ctx, rule).await {
            problems.push(p);
        }
    }
    problems
}

/// Plans one rule; the problem says what to change.
pub async fn check_rule(ctx: &SessionContext, rule: &Rule) -> Result<(), Problem> {
    let engine: Vec<(&str, String)> = ENGINE_PARAMS
        .iter()
        .map(|k| (*k, "0".to_string()))
        .collect();
    let sql = rule.render_sql(&engine);
    let problem = |what: String, fix: &str| Problem {
        source: rule.source.clone(),
        what,
        fix: fix.into(),
    };
    let plan = ctx.state().create_logical_plan(&sql).await.map_err(|e| {
        problem(
            format!("the SQL does not plan: {}", first_line(&e.to_string())),
            "check table and column names (wallscope sql 'DESCRIBE vitals'; views: rules/README.md)",
        )
    })?;
    datafusion::prelude::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|_| {
            problem(
                "the SQL is not a query".into(),
                "a rule is one SELECT (WITH … SELECT)",
            )
        })?;
    let schema = plan.schema();
    for col in REQUIRED_COLUMNS {
        let Ok(field) = schema.field_with_unqualified_name(col) else {
            return Err(problem(
                format!("the SQL does not return a `{col}` column"),
                "every rule returns device_id, first_ts and last_ts (plus evidence columns)",
            ));
        };
        let ok = match col {
            "device_id" => matches!(
                field.data_type(),
                DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Dictionary(..)
            ),
            _ => matches!(field.data_type(), DataType::Timestamp(..) | DataType::Int64),
        };
        if !ok {
            return Err(problem(
                format!("column `{col}` has type {}", field.data_type()),
                if col == "device_id" {
                    "device_id must be text"
                } else {
                    "first_ts/last_ts must be timestamps or epoch milliseconds (BIGINT)"
                },
            ));
        }
    }
    // The engine runs a rule with its repeated CTEs computed first (`stages`): run that form
    // too, over the empty tables, so a rule that plans whole but not in stages is caught here
    // rather than at its first evaluation.
    super::engine::run_staged(ctx, &sql).await.map_err(|e| {
        problem(
            format!(
                "the SQL plans, but not with its repeated CTEs computed first: {}",
                first_line(&e.to_string())
            ),
            "this is a wallscope bug (src/rules/stages.rs); please report it with the rule",
        )
    })?;
    Ok(())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
