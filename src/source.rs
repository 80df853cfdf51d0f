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
    let f = File::open(path).map_err(ioe)?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut buf = Vec::with_capacity(4096);
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf).map_err(ioe)?;
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
                .and_then(|s| CaptureRecord::parse(s).map_err(|e| e.to_string()))
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
