//! Read-only SQL over the store.
//!
//! Owns the DataFusion session every SQL surface uses (CLI `sql`, the HTTP API, the rule
//! engine): the store's tables registered over a snapshot, identifiers kept as written
//! (the firmware's field names are mixed case: `currentA_a`), a memory pool with a hard
//! limit, no URL tables. Statements are planned first and refused before execution unless
//! the plan is a query: DDL, DML (INSERT, COPY), and statements (SET, transactions) never run.
//! Besides the stored tables, `metrics` holds the last live ingest's counters, `findings` the
//! rule layer's episodes, `alerts` the alert transitions, `alert_actions` the operators' acks
//! and silences, and `devices` the registry (`devices.csv` in the data directory, or
//! the file a command names).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};

use crate::model::{
    ALERT_ACTIONS_FILE, ALERT_ACTIONS_TABLE, ALERTS_FILE, ALERTS_TABLE, DEVICES_FILE,
    DEVICES_TABLE, FINDINGS_FILE, FINDINGS_TABLE, alerts_schema, findings_schema,
};
use crate::store::{Snapshot, catalog};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("refused: wallscope SQL is read-only (SELECT, WITH, EXPLAIN, SHOW, DESCRIBE); {0}")]
    Refused(String),
    #[error("{0}")]
    Sql(#[from] DataFusionError),
    #[error("cannot format the result: {0}")]
    Format(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("{path}: cannot read the findings: {source}")]
    Findings {
        path: String,
        source: crate::store::files::FileError,
    },
}

/// Limits for one session.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// Memory the query's operators may hold (sorts, joins, aggregates).
    pub memory_limit_bytes: usize,
    /// Parallelism (DataFusion target partitions).
    pub target_partitions: usize,
    /// Disk a query's sorts and aggregates may spill to (in the OS temp directory); past it
    /// the query fails with a resources error instead of filling the disk the WAL needs.
    pub spill_limit_bytes: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            memory_limit_bytes: 2 << 30,
            target_partitions: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            spill_limit_bytes: 16 << 30,
        }
    }
}

/// A session with the store's tables registered over `snapshot`.
pub fn session(snapshot: &Snapshot, cfg: &QueryConfig) -> Result<SessionContext, QueryError> {
    let mut config = SessionConfig::new()
        .with_target_partitions(cfg.target_partitions)
        .with_information_schema(true);
    config.options_mut().sql_parser.enable_ident_normalization = false;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(cfg.memory_limit_bytes, 1.0)
        .with_disk_manager_builder(
            datafusion::execution::disk_manager::DiskManagerBuilder::default()
                .with_max_temp_directory_size(cfg.spill_limit_bytes),
        )
        .build_arc()?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    catalog::register(&ctx, snapshot)?;
    ctx.register_table("metrics", metrics_table(snapshot)?)?;
    ctx.register_table(FINDINGS_TABLE, findings_table(snapshot)?)?;
    ctx.register_table(
        ALERTS_TABLE,
        parquet_table(snapshot, ALERTS_FILE, alerts_schema())?,
    )?;
    ctx.register_table(ALERT_ACTIONS_TABLE, actions_table(snapshot)?)?;
    let registry = snapshot.dir.join(DEVICES_FILE);
    let devices = if registry.is_file() {
        crate::registry::load(&registry)?
    } else {
        crate::registry::empty()
    };
    set_devices(&ctx, devices)?;
    Ok(ctx)
}

/// Registers (or replaces) the `devices` registry table.
pub fn set_devices(ctx: &SessionContext, devices: RecordBatch) -> Result<(), QueryError> {
    let schema = devices.schema();
    ctx.deregister_table(DEVICES_TABLE)?;
    ctx.register_table(
        DEVICES_TABLE,
        Arc::new(MemTable::try_new(schema, vec![vec![devices]])?),
    )?;
    Ok(())
}

/// The stored findings (empty before the rule layer has run on this data directory).
fn findings_table(snapshot: &Snapshot) -> Result<Arc<MemTable>, QueryError> {
    parquet_table(snapshot, FINDINGS_FILE, findings_schema())
}

/// A derived table stored as one Parquet file (empty while the file does not exist).
fn parquet_table(
    snapshot: &Snapshot,
    file: &str,
    schema: arrow::datatypes::SchemaRef,
) -> Result<Arc<MemTable>, QueryError> {
    let path = snapshot.dir.join(file);
    let batches = if path.is_file() {
        crate::store::files::read_parquet(&path, None).map_err(|source| QueryError::Findings {
            path: path.display().to_string(),
            source,
        })?
    } else {
        Vec::new()
    };
    Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
}

/// The operators' actions log as rows: action, alert_id (acks), id, device and rule
/// (silences), by, at, until, reason or note. Unreadable lines are left out.
fn actions_table(snapshot: &Snapshot) -> Result<Arc<MemTable>, QueryError> {
    use arrow::array::{StringArray, TimestampMillisecondArray};
    let text = std::fs::read_to_string(snapshot.dir.join(ALERT_ACTIONS_FILE)).unwrap_or_default();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let s = |k: &str| -> StringArray {
        rows.iter()
            .map(|r| r.get(k).and_then(|v| v.as_str()).map(String::from))
            .collect()
    };
    let t = |k: &str| -> TimestampMillisecondArray {
        rows.iter()
            .map(|r| r.get(k).and_then(|v| v.as_i64()))
            .collect::<TimestampMillisecondArray>()
            .with_timezone("UTC")
    };
    let at: TimestampMillisecondArray = rows
        .iter()
        .map(|r| {
            r.get("at_ms")
                .or_else(|| r.get("from_ms"))
                .and_then(|v| v.as_i64())
        })
        .collect::<TimestampMillisecondArray>()
        .with_timezone("UTC");
    let why: StringArray = rows
        .iter()
        .map(|r| {
            r.get("reason")
                .or_else(|| r.get("note"))
                .and_then(|v| v.as_str())
                .map(String::from)
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("action", DataType::Utf8, true),
        Field::new("alert_id", DataType::Utf8, true),
        Field::new("id", DataType::Utf8, true),
        Field::new("device", DataType::Utf8, true),
        Field::new("rule", DataType::Utf8, true),
        Field::new("by", DataType::Utf8, true),
        Field::new("at", crate::model::ts_type(), true),
        Field::new("until", crate::model::ts_type(), true),
        Field::new("reason", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(s("action")),
            Arc::new(s("alert_id")),
            Arc::new(s("id")),
            Arc::new(s("device")),
            Arc::new(s("rule")),
            Arc::new(s("by")),
            Arc::new(at),
            Arc::new(t("until_ms")),
            Arc::new(why),
        ],
    )?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

/// The live ingest's counters as a table (name, value, at): empty when no ingest has run.
fn metrics_table(snapshot: &Snapshot) -> Result<Arc<MemTable>, QueryError> {
    use arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
        Field::new("at", crate::model::ts_type(), false),
    ]));
    let rows = crate::ingest::read_status(&snapshot.dir)
        .map(|m| (m.at_ms, m.rows()))
        .unwrap_or((0, Vec::new()));
    let n = rows.1.len();
    let names = StringArray::from_iter_values(rows.1.iter().map(|r| r.0));
    let values: Float64Array = rows
        .1
        .iter()
        .map(|r| (!r.1.is_nan()).then_some(r.1))
        .collect();
    let at = TimestampMillisecondArray::from(vec![rows.0; n]).with_timezone("UTC");
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(names), Arc::new(values), Arc::new(at)],
    )?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Plans `sql` and refuses it unless it is a query: `verify_plan` with DDL, DML (COPY
/// included) and statements off, then every node of the plan, subqueries included, checked
/// against an allowlist — a node type a future DataFusion adds is refused until it is
/// looked at, rather than allowed because no check knew it.
pub async fn plan_readonly(
    ctx: &SessionContext,
    sql: &str,
) -> Result<datafusion::logical_expr::LogicalPlan, QueryError> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::LogicalPlan as P;
    let plan = ctx.state().create_logical_plan(sql).await?;
    read_only().verify_plan(&plan).map_err(|e| {
        let what = match e {
            DataFusionError::Plan(m) => m,
            other => other.to_string(),
        };
        QueryError::Refused(what.to_lowercase())
    })?;
    let mut refused: Option<String> = None;
    plan.apply_with_subqueries(|node| {
        let ok = matches!(
            node,
            P::Projection(_)
                | P::Filter(_)
                | P::Window(_)
                | P::Aggregate(_)
                | P::Sort(_)
                | P::Join(_)
                | P::Repartition(_)
                | P::Union(_)
                | P::TableScan(_)
                | P::EmptyRelation(_)
                | P::Subquery(_)
                | P::SubqueryAlias(_)
                | P::Limit(_)
                | P::Values(_)
                | P::Explain(_)
                | P::Analyze(_)
                | P::Distinct(_)
                | P::Unnest(_)
                | P::RecursiveQuery(_)
                | P::DescribeTable(_)
        );
        if ok {
            Ok(TreeNodeRecursion::Continue)
        } else {
            let name = node.display().to_string();
            refused = Some(name.split(':').next().unwrap_or("").trim().to_string());
            Ok(TreeNodeRecursion::Stop)
        }
    })?;
    if let Some(name) = refused {
        return Err(QueryError::Refused(format!("{name} is not a query")));
    }
    Ok(plan)
}

/// Plans `sql`, refuses anything that is not a query, and runs it.
pub async fn run_readonly(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let plan = plan_readonly(ctx, sql).await?;
    let df = ctx.execute_logical_plan(plan).await?;
    Ok(df.collect().await?)
}

/// What [`run_limited`] returns: at most the rows asked for, and whether more were left.
#[derive(Debug, Default)]
pub struct Limited {
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    pub truncated: bool,
}

/// Like [`run_readonly`], but stops reading after `max_rows` rows or `max_bytes` of result
/// (the rest of the plan is dropped, not computed): a result cap that also bounds the
/// memory of plans the pool does not see (`generate_series`, plain scans).
pub async fn run_limited(
    ctx: &SessionContext,
    sql: &str,
    max_rows: usize,
    max_bytes: usize,
) -> Result<Limited, QueryError> {
    use futures::StreamExt;
    let plan = plan_readonly(ctx, sql).await?;
    let df = ctx.execute_logical_plan(plan).await?;
    let mut stream = df.execute_stream().await?;
    let mut out = Limited::default();
    let mut bytes = 0usize;
    while let Some(b) = stream.next().await {
        let b = b?;
        let room = max_rows - out.rows;
        if b.num_rows() > room {
            out.batches.push(b.slice(0, room));
            out.rows += room;
            out.truncated = true;
            break;
        }
        bytes += b.get_array_memory_size();
        out.rows += b.num_rows();
        out.batches.push(b);
        if bytes > max_bytes {
            out.truncated = stream.next().await.is_some();
            break;
        }
        if out.rows == max_rows {
            out.truncated = stream.next().await.is_some();
            break;
        }
    }
    Ok(out)
}

/// How `wallscope sql` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

pub fn render(batches: &[RecordBatch], format: OutputFormat) -> Result<String, QueryError> {
    match format {
        OutputFormat::Table => Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string()),
        OutputFormat::Csv => {
            let mut buf = Vec::new();
            {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut buf);
                if batches.is_empty() {
                    return Ok(String::new());
                }
                for b in batches {
                    w.write(b)?;
                }
            }
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        OutputFormat::Json => {
            let mut buf = Vec::new();
            {
                let mut w = arrow::json::ArrayWriter::new(&mut buf);
                let refs: Vec<&RecordBatch> = batches.iter().collect();
                w.write_batches(&refs)?;
                w.finish()?;
            }
            if buf.is_empty() {
                buf.extend_from_slice(b"[]");
            }
            buf.push(b'\n');
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
    }
}

/// Runs one read-only query over a snapshot.
pub async fn query_snapshot(
    snapshot: &Snapshot,
    cfg: &QueryConfig,
    sql: &str,
) -> Result<Vec<RecordBatch>, QueryError> {
    let ctx = session(snapshot, cfg)?;
    run_readonly(&ctx, sql).await
}
