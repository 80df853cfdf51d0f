//! The capture format: JSON Lines, one MQTT message per line.
//!
//! `{"ts": "<RFC 3339 receive time>", "topic": "wc/<id>/<kind>", "payload": <JSON value>}`, or
//! `"payload_b64": "<base64>"` instead of `payload` for bytes that are not JSON. This module
//! owns only the line format (parse and render); reading and writing files is the caller's.
//! Also the real vitals log line (`<RFC 3339> [INFO] vitals: <json>`). Payload bytes round-trip exactly: a JSON payload is kept as the exact text it arrived as
//! (`serde_json::value::RawValue`), so `record` → `replay` is byte-exact.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One captured MQTT message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRecord {
    /// Receive time, milliseconds since the Unix epoch (UTC).
    pub ts_ms: i64,
    pub topic: String,
    /// The payload bytes exactly as published.
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("not a capture line: {0}")]
    Json(#[from] serde_json::Error),
    #[error("capture line has neither `payload` nor `payload_b64`")]
    NoPayload,
    #[error("capture line `payload_b64` is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("capture line `ts` {0:?} is not an RFC 3339 time")]
    Time(String),
}

#[derive(Deserialize)]
struct LineIn<'a> {
    ts: TsIn,
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    payload_b64: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TsIn {
    Text(String),
    Millis(i64),
}

#[derive(Serialize)]
struct LineOut<'a> {
    ts: &'a str,
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
}

/// Parses an RFC 3339 time into epoch milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Renders epoch milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_rfc3339_ms(ms: i64) -> String {
    match chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// The real vitals log format: splits `<RFC 3339> [LEVEL] vitals: <json>` into (epoch ms, JSON bytes).
pub fn parse_vitals_line(line: &[u8]) -> Result<(i64, &[u8]), String> {
    let sp = memchr::memchr(b' ', line).ok_or("not a vitals log line (no space after the time)")?;
    let ts = std::str::from_utf8(&line[..sp])
        .ok()
        .and_then(parse_rfc3339_ms)
        .ok_or("not a vitals log line (does not start with an RFC 3339 time)")?;
    let marker = b"vitals: ";
    let at = memchr::memmem::find(&line[sp..], marker)
        .ok_or("not a vitals log line (no `vitals: ` before the JSON)")?;
    Ok((ts, &line[sp + at + marker.len()..]))
}

impl CaptureRecord {
    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> Result<Self, CaptureError> {
        let l: LineIn<'_> = serde_json::from_str(line)?;
        let ts_ms = match l.ts {
            TsIn::Millis(ms) => ms,
            TsIn::Text(s) => parse_rfc3339_ms(&s).ok_or(CaptureError::Time(s))?,
        };
        let payload = match (l.payload, l.payload_b64) {
            (Some(raw), _) => raw.get().as_bytes().to_vec(),
            (None, Some(b)) => B64.decode(b.as_bytes())?,
            (None, None) => return Err(CaptureError::NoPayload),
        };
        Ok(CaptureRecord {
            ts_ms,
            topic: l.topic.into_owned(),
            payload,
        })
    }

    /// Renders the record as one line (without a newline). JSON payloads are embedded as-is,
    /// anything else (invalid UTF-8, truncated JSON, bare `nan`) as base64.
    pub fn render(&self) -> String {
        let ts = format_rfc3339_ms(self.ts_ms);
        let as_json = std::str::from_utf8(&self.payload)
            .ok()
            .and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
            // RawValue trims surrounding whitespace; only embed when nothing would change.
            .filter(|raw| raw.get().len() == self.payload.len());
        let out = match as_json {
            Some(raw) => LineOut {
                ts: &ts,
                topic: &self.topic,
                payload: Some(raw),
                payload_b64: None,
            },
            None => LineOut {
                ts: &ts,
                topic: &self.topic,
                payload: None,
                payload_b64: Some(B64.encode(&self.payload)),
            },
        };
        // Serialising plain strings and a RawValue cannot fail.
        serde_json::to_string(&out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_payload_round_trips_byte_exact() {
        let r = CaptureRecord {
            ts_ms: 1_767_225_600_123,
            topic: "wc/a/vitals".into(),
            payload: br#"{"grid_v":246.30,"x":[1, 2]}"#.to_vec(),
        };
        let line = r.render();
        assert!(
            line.contains(r#""payload":{"grid_v":246.30,"x":[1, 2]}"#),
            "{line}"
        );
        assert_eq!(CaptureRecord::parse(&line).unwrap(), r);
    }

    #[test]
    fn non_json_payload_goes_base64() {
        for p in [
            &b"{\"a\": nan}"[..],
            b"{\"grid_v\": 24",
            b"\xff\xfe",
            b" {} ",
        ] {
            let r = CaptureRecord {
                ts_ms: 0,
                topic: "wc/a/lifetime".into(),
                payload: p.to_vec(),
            };
            let line = r.render();
            assert!(line.contains("payload_b64"), "{line}");
            assert_eq!(CaptureRecord::parse(&line).unwrap(), r);
        }
    }

    #[test]
    fn vitals_line() {
        let l = br#"2025-12-21T04:39:18.721454164Z [INFO] vitals: {"grid_v":246.3}"#;
        let (ts, p) = parse_vitals_line(l).unwrap();
        assert_eq!(ts, 1_766_291_958_721);
        assert_eq!(p, br#"{"grid_v":246.3}"#);
        assert!(parse_vitals_line(b"garbage").is_err());
        assert!(parse_vitals_line(b"2025-12-21T04:39:18Z [INFO] other: {}").is_err());
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(CaptureRecord::parse("{").is_err());
        assert!(CaptureRecord::parse(r#"{"ts":"x","topic":"t","payload":1}"#).is_err());
        assert!(CaptureRecord::parse(r#"{"ts":1,"topic":"t"}"#).is_err());
    }
}
