//! The device registry: installation facts the charger's API does not expose (service type,
//! breaker, commissioned maximum current, part number, site, installer, commissioning date).
//!
//! Owns parsing and validating a registry file (CSV with a header, or Parquet with the same
//! columns) into one Arrow batch of `model::devices_schema()`. Rules join it; a rule that
//! needs a fact it lacks says so rather than guessing. Knows nothing about rules or SQL.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray};

use crate::model::{COL_DEVICE_ID, devices_schema};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: cannot read the device registry: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: the header has no `{column}` column; a registry needs at least {required}")]
    MissingColumn {
        path: String,
        column: &'static str,
        required: String,
    },
    #[error("{path}:{line}: {problem}")]
    Row {
        path: String,
        line: usize,
        problem: String,
    },
    #[error("{path}: {problem}")]
    Parquet { path: String, problem: String },
}

/// The installation facts a registry holds besides `device_id` (rules may declare them in
/// `needs`).
pub const FACTS: [&str; 7] = [
    "service_type",
    "breaker_a",
    "max_current_a",
    "part_number",
    "site",
    "installer",
    "commissioned_at",
];

/// Columns a registry must have (in any order; more are ignored): `device_id` and [`FACTS`].
fn required() -> impl Iterator<Item = &'static str> {
    std::iter::once(COL_DEVICE_ID).chain(FACTS)
}

fn required_list() -> String {
    required().collect::<Vec<_>>().join(",")
}

/// Accepted `service_type` values.
pub const SERVICE_TYPES: [&str; 3] = ["split_phase", "single_phase", "three_phase"];

/// An empty registry (no file given, none in the data directory).
pub fn empty() -> RecordBatch {
    RecordBatch::new_empty(devices_schema())
}

/// Reads a registry: `.parquet` files through the Parquet reader, anything else as CSV.
pub fn load(path: &Path) -> Result<RecordBatch, RegistryError> {
    let shown = path.display().to_string();
    if path.extension().is_some_and(|e| e == "parquet") {
        return load_parquet(path, &shown);
    }
    let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Io {
        path: shown.clone(),
        source,
    })?;
    parse_csv(&text, &shown)
}

fn load_parquet(path: &Path, shown: &str) -> Result<RecordBatch, RegistryError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let bad = |problem: String| RegistryError::Parquet {
        path: shown.to_string(),
        problem,
    };
    let f = std::fs::File::open(path).map_err(|source| RegistryError::Io {
        path: shown.to_string(),
        source,
    })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .map_err(|e| bad(e.to_string()))?;
    // Through CSV text so both formats get the same validation.
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<String> = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        if header.is_empty() {
            header = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
        }
        let cols: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8))
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("a column cannot be read as text: {e}")))?;
        for r in 0..batch.num_rows() {
            rows.push(
                cols.iter()
                    .map(|c| {
                        let s = c.as_any().downcast_ref::<StringArray>();
                        s.filter(|s| !s.is_null(r))
                            .map(|s| s.value(r).to_string())
                            .unwrap_or_default()
                    })
                    .collect(),
            );
        }
    }
    build(
        &header,
        rows.into_iter().enumerate().map(|(i, r)| (i + 2, r)),
        shown,
    )
}

/// Parses registry CSV text (RFC 4180 quoting; one record per line).
pub fn parse_csv(text: &str, shown: &str) -> Result<RecordBatch, RegistryError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    let Some((hl, header)) = lines.next() else {
        return Err(RegistryError::Row {
            path: shown.into(),
            line: 1,
            problem: format!("empty file; expected a header line: {}", required_list()),
        });
    };
    let header = split_csv(header).map_err(|problem| RegistryError::Row {
        path: shown.into(),
        line: hl,
        problem,
    })?;
    let mut rows = Vec::new();
    for (n, line) in lines {
        let fields = split_csv(line).map_err(|problem| RegistryError::Row {
            path: shown.into(),
            line: n,
            problem,
        })?;
        if fields.len() != header.len() {
            return Err(RegistryError::Row {
                path: shown.into(),
                line: n,
                problem: format!(
                    "{} fields, but the header has {}",
                    fields.len(),
                    header.len()
                ),
            });
        }
        rows.push((n, fields));
    }
    build(&header, rows.into_iter(), shown)
}

fn build(
    header: &[String],
    rows: impl Iterator<Item = (usize, Vec<String>)>,
    shown: &str,
) -> Result<RecordBatch, RegistryError> {
    let schema = devices_schema();
    let index: Vec<Option<usize>> = schema
        .fields()
        .iter()
        .map(|f| header.iter().position(|h| h.trim() == f.name()))
        .collect();
    for col in required() {
        if !header.iter().any(|h| h.trim() == col) {
            return Err(RegistryError::MissingColumn {
                path: shown.into(),
                column: col,
                required: required_list(),
            });
        }
    }
    let mut text: Vec<Vec<Option<String>>> = vec![Vec::new(); schema.fields().len()];
    let mut seen = std::collections::HashSet::new();
    for (line, fields) in rows {
        let row_err = |problem: String| RegistryError::Row {
            path: shown.into(),
            line,
            problem,
        };
        for (c, idx) in index.iter().enumerate() {
            let v = idx
                .map(|i| fields[i].trim().to_string())
                .filter(|v| !v.is_empty());
            text[c].push(v);
        }
        let id = text[0].last().cloned().flatten();
        let Some(id) = id else {
            return Err(row_err("device_id is empty".into()));
        };
        if crate::model::parse_topic(&format!("wc/{id}/vitals")).is_err() {
            return Err(row_err(format!(
                "device_id {id:?} must be 1–128 characters of A-Z a-z 0-9 _ - . :"
            )));
        }
        if !seen.insert(id.clone()) {
            return Err(row_err(format!("device {id:?} is listed twice")));
        }
        if let Some(Some(st)) = text[1].last()
            && !SERVICE_TYPES.contains(&st.as_str())
        {
            return Err(row_err(format!(
                "service_type {st:?} is not one of {}",
                SERVICE_TYPES.join(" | ")
            )));
        }
        for c in [2, 3] {
            if let Some(Some(v)) = text[c].last() {
                let ok = v
                    .parse::<f64>()
                    .is_ok_and(|x| x.is_finite() && x > 0.0 && x <= 1000.0);
                if !ok {
                    return Err(row_err(format!(
                        "{} {v:?} is not a current in amperes (a number between 0 and 1000)",
                        schema.field(c).name()
                    )));
                }
            }
        }
    }
    let cols: Vec<ArrayRef> = text
        .into_iter()
        .enumerate()
        .map(|(c, vals)| -> ArrayRef {
            if c == 2 || c == 3 {
                Arc::new(
                    vals.iter()
                        .map(|v| v.as_deref().and_then(|x| x.parse::<f64>().ok()))
                        .collect::<Float64Array>(),
                )
            } else {
                Arc::new(StringArray::from(vals))
            }
        })
        .collect();
    RecordBatch::try_new(schema, cols).map_err(|e| RegistryError::Parquet {
        path: shown.into(),
        problem: e.to_string(),
    })
}

/// Splits one CSV record: commas, double-quoted fields with `""` escapes.
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') if at_start => {
                quoted = true;
                at_start = false;
            }
            (true, '"') => {
                if chars.peek() == Some(&'"') {
                    cur.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            }
            (false, ',') => {
                out.push(std::mem::take(&mut cur));
                at_start = true;
            }
            (_, c) => {
                cur.push(c);
                at_start = false;
            }
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    out.push(cur);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "device_id,service_type,breaker_a,max_current_a,part_number,site,installer,commissioned_at\n\
        home,split_phase,50,40,1529455-02-D,\"Site, A\",Acme,2024-05-01\n\
        tt,,,,,,,\n";

    #[test]
    fn parses_and_keeps_missing_facts_null() {
        let b = parse_csv(GOOD, "r.csv").unwrap();
        assert_eq!(b.num_rows(), 2);
        let site = b.column(5).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(site.value(0), "Site, A");
        let max = b.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(max.value(0), 40.0);
        assert!(max.is_null(1));
    }

    #[test]
    fn errors_name_the_line_and_the_fix() {
        let e = parse_csv("device_id,site\nx,y\n", "r.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `service_type` column"), "{e}");
        let bad_type = GOOD.replace("split_phase", "delta");
        let e = parse_csv(&bad_type, "r.csv").unwrap_err().to_string();
        assert!(
            e.starts_with("r.csv:2:") && e.contains("split_phase | single_phase"),
            "{e}"
        );
        let dup = format!("{GOOD}home,,,,,,,\n");
        let e = parse_csv(&dup, "r.csv").unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        let amps = GOOD.replace(",50,40,", ",fifty,40,");
        let e = parse_csv(&amps, "r.csv").unwrap_err().to_string();
        assert!(e.contains("breaker_a \"fifty\""), "{e}");
    }
}
