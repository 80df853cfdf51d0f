//! File sources: vitals logs and capture files → [`Message`]s.
//!
//! Owns reading the two file formats the project takes offline: the real-world vitals log
//! (`<RFC 3339> [INFO] vitals: <json>`, one poll per line, no device id: the caller names the
//! device) and the capture format (see [`crate::capture`]). Lines that are not in the format
//! are reported with file and line number and skipped; payload problems are not this module's
//! business (the decoder dead-letters them). Knows nothing of the store.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::capture::{CaptureRecord, parse_vitals_line};
use crate::model::Message;

/// The input file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// JSON Lines capture (`{"ts","topic","payload"|"payload_b64"}`).
    Capture,
    /// `<RFC 3339> [INFO] vitals: <json>` lines (needs --device).
    VitalsLog,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--format vitals-log needs --device <id>: the log lines carry no device id")]
    NeedDevice,
    #[error("device id {0:?} must be 1–128 characters of A-Z a-z 0-9 _ - . :")]
    BadDevice(String),
}

/// A line that was not in the file's format.
#[derive(Debug, Clone)]
pub struct BadLine {
    pub path: PathBuf,
    pub line: u64,
    pub why: String,
}

/// Reads messages from one file, calling `on_message` for each and `on_bad` for each
/// malformed line. `on_bytes` reports progress in bytes read.
pub fn read_file(
    path: &Path,
    format: InputFormat,
    device: Option<&str>,
    on_message: &mut dyn FnMut(Message),
    on_bad: &mut dyn FnMut(BadLine),
    on_bytes: &mut dyn FnMut(u64),
) -> Result<(), SourceError> {
    let topic = match format {
        InputFormat::VitalsLog => {
            let d = device.ok_or(SourceError::NeedDevice)?;
            let topic = format!("wc/{d}/vitals");
            crate::model::parse_topic(&topic).map_err(|_| SourceError::BadDevice(d.into()))?;
            Some(topic)
        }
        InputFormat::Capture => None,
    };
    let ioe = |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.extension().is_some_and(|e| e == "parquet") && format == InputFormat::Capture {
        return read_parquet_capture(path, on_message, on_bytes);
    }
    let f = File::open(path).map_err(ioe)?;
    // `.zst` (what `record` writes when asked): a sequence of zstd frames.
    let zst = path.extension().is_some_and(|e| e == "zst");
    let mut r: Box<dyn BufRead> = if zst {
        let d = zstd::stream::read::Decoder::new(f).map_err(ioe)?;
        Box::new(BufReader::with_capacity(1 << 20, d))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, f))
    };
    let mut buf = Vec::with_capacity(4096);
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = match r.read_until(b'\n', &mut buf) {
            Ok(n) => n,
            // A recorder killed mid-frame leaves a cut last frame: what came before stands.
            Err(e) if zst => {
                on_bad(BadLine {
                    path: path.to_path_buf(),
                    line: line_no + 1,
                    why: format!("the compressed data ends early ({e}); the rest is lost"),
                });
                break;
            }
            Err(e) => return Err(ioe(e)),
        };
        if n == 0 {
            break;
        }
        on_bytes(n as u64);
        line_no += 1;
        let line = trim_newline(&buf);
        if line.iter().all(|c| c.is_ascii_whitespace()) {
            continue;
        }
        let bad = |why: String| BadLine {
            path: path.to_path_buf(),
            line: line_no,
            why,
        };
        match (format, &topic) {
            (InputFormat::VitalsLog, Some(topic)) => match parse_vitals_line(line) {
                Ok((ts, payload)) => on_message(Message {
                    topic: topic.clone(),
                    payload: payload.to_vec(),
                    received_at_ms: ts,
                    recorded: true,
                }),
                Err(why) => on_bad(bad(why)),
            },
            _ => match std::str::from_utf8(line)
                .map_err(|_| "line is not UTF-8".to_string())
                .and_then(|s| parse_capture_line(s).map_err(|e| e.to_string()))
            {
                Ok(rec) => on_message(Message {
                    topic: rec.topic,
                    payload: rec.payload,
                    received_at_ms: rec.ts_ms,
                    recorded: true,
                }),
                Err(why) => on_bad(bad(why)),
            },
        }
    }
    Ok(())
}

/// A capture stored as Parquet (`export --out case.parquet`): columns `ts` (timestamp),
/// `topic` (text), `payload` (bytes or text), one row per message.
fn read_parquet_capture(
    path: &Path,
    on_message: &mut dyn FnMut(Message),
    on_bytes: &mut dyn FnMut(u64),
) -> Result<(), SourceError> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Int64Type, TimeUnit};
    let bad = |why: String| SourceError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
    };
    let f = File::open(path).map_err(|source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.with_batch_size(8192).build())
        .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
    for batch in reader {
        let b = batch.map_err(|e| bad(e.to_string()))?;
        let col = |name: &str| {
            b.column_by_name(name).cloned().ok_or_else(|| {
                bad(format!(
                    "a Parquet capture needs the columns ts, topic, payload (no {name})"
                ))
            })
        };
        let cast = |a: &arrow::array::ArrayRef, t: &DataType| {
            arrow::compute::cast(a, t).map_err(|e| bad(e.to_string()))
        };
        let ts = cast(
            &col("ts")?,
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )?;
        let ts = cast(&ts, &DataType::Int64)?;
        let ts = ts.as_primitive::<Int64Type>();
        let topic = cast(&col("topic")?, &DataType::Utf8)?;
        let topic = topic.as_string::<i32>();
        let payload = cast(&col("payload")?, &DataType::Binary)?;
        let payload = payload.as_binary::<i32>();
        for r in 0..b.num_rows() {
            if ts.is_null(r) || topic.is_null(r) || payload.is_null(r) {
                continue;
            }
            on_message(Message {
                topic: topic.value(r).to_string(),
                payload: payload.value(r).to_vec(),
                received_at_ms: ts.value(r),
                recorded: true,
            });
        }
    }
    on_bytes(size);
    Ok(())
}

/// One capture line. The layout `CaptureRecord::render` writes,
/// `{"ts":"…","topic":"…","payload":…}`, is read by position: no serde pass, and the payload
/// only checked by a scan, since it is kept as bytes (a replay at full speed spent a quarter
/// of its CPU in serde here). Anything else — other member order, spaces, escapes in the
/// time or topic, `payload_b64`, a time in milliseconds, a payload the scan does not vouch
/// for — goes through `CaptureRecord::parse`, so both paths accept the same lines.
pub fn parse_capture_line(line: &str) -> Result<CaptureRecord, crate::capture::CaptureError> {
    match parse_rendered(line.as_bytes()) {
        Some(r) => Ok(r),
        None => CaptureRecord::parse(line),
    }
}

fn parse_rendered(line: &[u8]) -> Option<CaptureRecord> {
    let rest = line.strip_prefix(b"{\"ts\":\"")?;
    let q = memchr::memchr(b'"', rest)?;
    let ts = std::str::from_utf8(&rest[..q]).ok()?;
    if ts.contains('\\') {
        return None;
    }
    let rest = rest[q..].strip_prefix(b"\",\"topic\":\"")?;
    let q = memchr::memchr(b'"', rest)?;
    let topic = &rest[..q];
    if topic.iter().any(|c| *c == b'\\' || *c < 0x20) {
        return None;
    }
    let payload = rest[q..]
        .strip_prefix(b"\",\"payload\":")?
        .strip_suffix(b"}")?;
    if !crate::decode::json::is_strict_value(payload) {
        return None;
    }
    Some(CaptureRecord {
        ts_ms: crate::capture::parse_rfc3339_ms(ts)?,
        topic: std::str::from_utf8(topic).ok()?.to_string(),
        payload: payload.to_vec(),
    })
}

fn trim_newline(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// Total size of the inputs (for a progress bar).
pub fn total_bytes(paths: &[PathBuf]) -> u64 {
    paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The positional reading of `render`'s layout gives what serde_json gives, and lines it
    /// does not vouch for still go through serde_json (same record or same error).
    #[test]
    fn rendered_layout_reads_as_serde_reads_it() {
        let lines = [
            r#"{"ts":"2026-01-01T00:00:00.123Z","topic":"wc/a/vitals","payload":{"grid_v":246.30,"x":[1, 2]}}"#,
            r#"{"ts":"2026-01-01T00:00:00.123Z","topic":"wc/é/vitals","payload":"text"}"#,
            r#"{"ts":"2026-01-01T00:00:00Z","topic":"wc/a\/b/wifi","payload":{}}"#,
            r#"{"ts":"2026-01-01T00:00:00Z","topic":"wc/a/wifi","payload":{},"extra":1}"#,
            r#"{"ts":"2026-01-01T00:00:00Z","topic":"wc/a/wifi","payload":{"a":nan}}"#,
            r#"{"ts":"2026-01-01T00:00:00Z","topic":"wc/a/wifi","payload":{"a":1}"#,
            r#"{"ts":"2026-01-01T00:00:00Z","topic":"wc/a/wifi","payload":{"a":1}} "#,
            r#"{"ts":"not a time","topic":"wc/a/wifi","payload":{}}"#,
            r#"{"ts":"2026-01-01T00:00:00Z","topic":"wc/a/wifi","payload_b64":"AAE="}"#,
            r#"{"ts":1767225600000,"topic":"wc/a/wifi","payload":[]}"#,
            r#"{"topic":"wc/a/wifi","ts":"2026-01-01T00:00:00Z","payload":{}}"#,
        ];
        let mut positional = 0;
        for line in lines {
            positional += usize::from(parse_rendered(line.as_bytes()).is_some());
            let fast = parse_capture_line(line).map_err(|e| e.to_string());
            let slow = CaptureRecord::parse(line).map_err(|e| e.to_string());
            assert_eq!(fast, slow, "{line}");
        }
        assert_eq!(positional, 2, "the first two lines are in render's layout");
        // What `render` writes is read by position, byte-exact.
        let r = CaptureRecord {
            ts_ms: 5,
            topic: "wc/a/vitals".into(),
            payload: br#"{"v":[1,2.5e-3,"x"]}"#.to_vec(),
        };
        assert_eq!(parse_rendered(r.render().as_bytes()), Some(r));
    }
}
