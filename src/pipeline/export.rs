//! `export`: cut a case file from the store — one device's telemetry over a time range, as a
//! capture that `diagnose` and `replay` read like any other — plus its findings beside it.
//!
//! Contract:
//! - Every stored row of the four telemetry tables becomes one capture record: topic
//!   `wc/<device>/<kind>`, receive time `received_at`, payload the bridge envelope
//!   `{"ts","seq","data"}` with the row's non-null fields under their payload names. The
//!   store keeps decoded values, not bytes, so the payload is re-encoded: decoding it again
//!   gives the same rows (`diagnose` on the case finds what the store found).
//! - `.jsonl` (optionally `.zst`) writes the capture format; `.parquet` writes the same
//!   records as a Parquet table `ts, topic, payload` (zstd), which the capture readers accept.
//! - The findings the pack gives the device over the range (what `diagnose --store` shows
//!   for it) go to `<stem>.findings.jsonl` beside it, in `diagnose --json`'s line format.
//! - Files are written to a temporary name, fsynced and renamed: a case file is whole or absent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::prelude::{col, lit};

use crate::capture::CaptureRecord;
use crate::model::{COL_RECEIVED_AT, COL_SEQ, Table};
use crate::query::{self, QueryConfig};
use crate::rules::Pack;
use crate::store::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Query(#[from] query::QueryError),
    #[error("export query: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("encoding the rows: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing Parquet {path}: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error(transparent)]
    Rules(#[from] crate::rules::EvalError),
    #[error(
        "--out {0}: the case file must end in .jsonl, .jsonl.zst or .parquet (the format follows the extension)"
    )]
    Extension(String),
}

/// What to cut.
#[derive(Debug, Clone)]
pub struct ExportSpec {
    pub device: String,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub out: PathBuf,
}

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct ExportReport {
    pub records: u64,
    /// Rows per telemetry table, in `Table::TELEMETRY` order.
    pub rows: Vec<(Table, u64)>,
    pub findings: usize,
    pub findings_file: Option<PathBuf>,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

enum Format {
    Jsonl,
    Parquet,
}

fn format_of(p: &Path) -> Result<Format, ExportError> {
    let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase());
    match name.as_deref() {
        Some(n) if n.ends_with(".jsonl") || n.ends_with(".jsonl.zst") => Ok(Format::Jsonl),
        Some(n) if n.ends_with(".parquet") => Ok(Format::Parquet),
        _ => Err(ExportError::Extension(p.display().to_string())),
    }
}

/// Cuts the case file described by `spec` from `snapshot`; `pack` judges the findings.
pub async fn export(
    snapshot: &Snapshot,
    pack: &Pack,
    spec: &ExportSpec,
    cfg: &QueryConfig,
) -> Result<ExportReport, ExportError> {
    let format = format_of(&spec.out)?;
    let ctx = query::session(snapshot, cfg)?;
    let mut records: Vec<CaptureRecord> = Vec::new();
    let mut report = ExportReport::default();
    for t in Table::TELEMETRY {
        let ts = |ms: i64| {
            lit(datafusion::scalar::ScalarValue::TimestampMillisecond(
                Some(ms),
                Some("UTC".into()),
            ))
        };
        let mut df = ctx
            .table(t.name())
            .await?
            .filter(col("device_id").eq(lit(spec.device.as_str())))?;
        if let Some(s) = spec.since_ms {
            df = df.filter(col("ts").gt_eq(ts(s)))?;
        }
        if let Some(u) = spec.until_ms {
            df = df.filter(col("ts").lt(ts(u)))?;
        }
        let batches = df
            .sort(vec![col("ts").sort(true, false)])?
            .collect()
            .await?;
        let before = records.len();
        for b in &batches {
            encode_rows(t, &spec.device, b, &mut records)?;
        }
        report.rows.push((t, (records.len() - before) as u64));
    }
    // One capture in receive order, as the wire would have carried it.
    records.sort_by_key(|r| r.ts_ms);
    report.records = records.len() as u64;
    report.first_ms = records.first().map(|r| r.ts_ms);
    report.last_ms = records.last().map(|r| r.ts_ms);
    match format {
        Format::Jsonl => write_jsonl(&spec.out, &records)?,
        Format::Parquet => write_parquet(&spec.out, &records)?,
    }
    // The findings the pack gives this device over the range (what `diagnose --store`
    // shows for it), beside the case.
    let scope = crate::rules::Scope {
        since_ms: spec.since_ms,
        until_ms: spec.until_ms,
        devices: Some(vec![spec.device.clone()]),
    };
    let mut findings = crate::rules::evaluate(snapshot, None, pack, &scope, cfg)
        .await?
        .findings;
    crate::rules::finding::sort_for_people(&mut findings);
    let side = sidecar_path(&spec.out);
    let mut text = String::new();
    for f in &findings {
        text.push_str(&f.to_json_line());
        text.push('\n');
    }
    write_atomic(&side, text.as_bytes())?;
    report.findings = findings.len();
    report.findings_file = Some(side);
    Ok(report)
}

/// `case.jsonl` → `case.findings.jsonl` (also for `.jsonl.zst` and `.parquet`).
pub fn sidecar_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.split('.').next().unwrap_or("case");
    out.with_file_name(format!("{stem}.findings.jsonl"))
}

/// Turns each row of `b` (a telemetry table) into a capture record.
fn encode_rows(
    t: Table,
    device: &str,
    b: &RecordBatch,
    out: &mut Vec<CaptureRecord>,
) -> Result<(), ExportError> {
    if b.num_rows() == 0 {
        return Ok(());
    }
    let schema = b.schema();
    let ms = |name: &str| -> Result<Vec<Option<i64>>, ExportError> {
        let i = schema.index_of(name)?;
        let c = arrow::compute::cast(
            b.column(i),
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )?;
        let c = arrow::compute::cast(&c, &DataType::Int64)?;
        Ok(c.as_primitive::<arrow::datatypes::Int64Type>()
            .iter()
            .collect())
    };
    let ts = ms("ts")?;
    let received = ms(COL_RECEIVED_AT)?;
    let seq_col = arrow::compute::cast(b.column(schema.index_of(COL_SEQ)?), &DataType::Int64)?;
    let seq = seq_col.as_primitive::<arrow::datatypes::Int64Type>();
    // The payload fields only, under their payload names, as JSON objects (nulls omitted).
    let fields: Vec<usize> = t
        .fields()
        .iter()
        .filter_map(|f| schema.index_of(f.name).ok())
        .collect();
    let data = b.project(&fields)?;
    let mut buf = Vec::with_capacity(data.num_rows() * 512);
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(&data)?;
        w.finish()?;
    }
    let topic = format!("wc/{device}/{}", t.kind());
    for (r, obj) in buf.split(|c| *c == b'\n').take(b.num_rows()).enumerate() {
        let Some(ts_ms) = ts[r] else { continue };
        let mut payload = format!("{{\"ts\":{ts_ms},").into_bytes();
        if seq.is_valid(r) {
            payload.extend_from_slice(format!("\"seq\":{},", seq.value(r)).as_bytes());
        }
        payload.extend_from_slice(b"\"data\":");
        payload.extend_from_slice(obj);
        payload.push(b'}');
        out.push(CaptureRecord {
            ts_ms: received[r].unwrap_or(ts_ms),
            topic: topic.clone(),
            payload,
        });
    }
    Ok(())
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` via a fsynced temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    write_with(path, |f| f.write_all(bytes).map_err(io_err(path)))
}

fn write_with(
    path: &Path,
    body: impl FnOnce(&mut std::fs::File) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(d) = dir {
        std::fs::create_dir_all(d).map_err(io_err(path))?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{}.tmp", name.unwrap_or_default()));
    let mut f = std::fs::File::create(&tmp).map_err(io_err(path))?;
    body(&mut f)?;
    f.sync_all().map_err(io_err(path))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}

fn write_jsonl(path: &Path, records: &[CaptureRecord]) -> Result<(), ExportError> {
    let zst = path.extension().is_some_and(|e| e == "zst");
    write_with(path, |f| {
        let mut text = Vec::with_capacity(records.len() * 600);
        for r in records {
            text.extend_from_slice(r.render().as_bytes());
            text.push(b'\n');
        }
        let bytes = if zst {
            zstd::stream::encode_all(text.as_slice(), 9).map_err(io_err(path))?
        } else {
            text
        };
        f.write_all(&bytes).map_err(io_err(path))
    })
}

fn write_parquet(path: &Path, records: &[CaptureRecord]) -> Result<(), ExportError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("topic", DataType::Utf8, false),
        Field::new("payload", DataType::Binary, false),
    ]));
    let ts = TimestampMillisecondArray::from_iter_values(records.iter().map(|r| r.ts_ms))
        .with_timezone("UTC");
    let topic = StringArray::from_iter_values(records.iter().map(|r| r.topic.as_str()));
    let payload =
        arrow::array::BinaryArray::from_iter_values(records.iter().map(|r| r.payload.as_slice()));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(ts), Arc::new(topic), Arc::new(payload)],
    )?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(
            parquet::basic::ZstdLevel::try_new(9).unwrap_or_default(),
        ))
        .build();
    write_with(path, |f| {
        let pq = |source| ExportError::Parquet {
            path: path.to_path_buf(),
            source,
        };
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, Some(props)).map_err(pq)?;
        w.write(&batch).map_err(pq)?;
        w.close().map_err(pq)?;
        Ok(())
    })
}
