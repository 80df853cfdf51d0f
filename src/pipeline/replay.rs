//! `replay`: publish a capture (or a vitals log) back into a broker on the original schedule,
//! scaled.
//!
//! Contract:
//! - Messages go out in file order, QoS 1, with a bounded in-flight window; the replay ends
//!   once the broker has acknowledged every message.
//! - Message `i` is due at `start + (ts_i − ts_0) / speed` (`max`: as fast as the broker
//!   takes them). How late each message actually went out is measured (p50 / p99 / max).
//! - Payloads are byte-exact unless the replay must change them: `--shift-time` (and every
//!   pass after the first of `--loop`) moves the envelope's `ts` with the schedule, so event
//!   time moves too; a raw payload (no envelope) that would lose its event time — replayed
//!   faster or slower than 1×, or shifted — is wrapped in a `{"ts","data"}` envelope, the
//!   form bridges publish, so the engine's clock follows the capture at any speed.
//! - `--rewrite-device FROM=TO` maps device ids in topics: `FROM` is an id or `*`, `TO` may
//!   use `{id}` (the original id) and one `{a..b}` range, which clones each message into
//!   one copy per number (one charger into a thousand for a load test).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::value::RawValue;

use super::{Chunk, read_chunks};
use crate::ingest::publish::BatchPublisher;
use crate::ingest::{BrokerUrl, IngestError};
use crate::model::parse_topic;
use crate::source::{BadLine, InputFormat, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Mqtt(#[from] IngestError),
    #[error("--rewrite-device {0:?}: {1}")]
    Rewrite(String, String),
    #[error("--speed {0:?}: give a positive factor (1, 10, 100, 0.5) or max")]
    Speed(String),
    #[error("the input has no messages to replay")]
    Empty,
}

/// How fast to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// As fast as the broker acknowledges (bounded by the in-flight window).
    Max,
    /// The original schedule divided by this factor.
    Factor(f64),
}

impl Speed {
    pub fn parse(s: &str) -> Result<Speed, ReplayError> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Speed::Max);
        }
        match s.trim_end_matches('x').parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => Ok(Speed::Factor(f)),
            _ => Err(ReplayError::Speed(s.into())),
        }
    }
}

/// One `--rewrite-device` mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewrite {
    /// `None` = every device.
    from: Option<String>,
    /// Target template split at `{id}` / the range.
    to: String,
    range: Option<(u64, u64)>,
}

impl Rewrite {
    /// Parses `FROM=TO`.
    pub fn parse(spec: &str) -> Result<Rewrite, ReplayError> {
        let bad = |why: &str| ReplayError::Rewrite(spec.into(), why.into());
        let (from, to) = spec
            .split_once('=')
            .ok_or_else(|| bad("expected FROM=TO, e.g. wc0001=load{1..1000} or *=site2-{id}"))?;
        if to.is_empty() || from.is_empty() {
            return Err(bad("FROM and TO must not be empty"));
        }
        let mut range = None;
        let mut template = to.to_string();
        if let Some(open) = to.find('{').filter(|&i| !to[i..].starts_with("{id}")) {
            let close = to[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| bad("unclosed {"))?;
            let inner = &to[open + 1..close];
            let (a, b) = inner
                .split_once("..")
                .ok_or_else(|| bad("a range is written {a..b}, e.g. {1..1000}"))?;
            let (a, b): (u64, u64) = match (a.parse(), b.parse()) {
                (Ok(a), Ok(b)) if a <= b => (a, b),
                _ => return Err(bad("a range needs two numbers a <= b")),
            };
            if b - a >= 1_000_000 {
                return Err(bad("a range clones at most 1,000,000 devices"));
            }
            range = Some((a, b));
            template = format!("{}{{n}}{}", &to[..open], &to[close + 1..]);
            if template.matches("{n}").count() != 1 || to[close + 1..].contains("..") {
                return Err(bad("only one {a..b} range is allowed"));
            }
        }
        let r = Rewrite {
            from: (from != "*").then(|| from.to_string()),
            to: template,
            range,
        };
        // Every id it produces must be a valid device id.
        for probe in r.apply("wc0001") {
            parse_topic(&format!("wc/{probe}/vitals")).map_err(|e| bad(&e))?;
        }
        Ok(r)
    }

    fn matches(&self, id: &str) -> bool {
        self.from.as_deref().is_none_or(|f| f == id)
    }

    /// The ids `id` becomes.
    fn apply(&self, id: &str) -> Vec<String> {
        let base = self.to.replace("{id}", id);
        match self.range {
            None => vec![base],
            Some((a, b)) => (a..=b)
                .map(|n| base.replace("{n}", &n.to_string()))
                .collect(),
        }
    }
}

/// Replay settings.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub broker: BrokerUrl,
    pub client_id: String,
    pub files: Vec<PathBuf>,
    pub format: InputFormat,
    /// For `--format vitals-log`.
    pub device: Option<String>,
    pub speed: Speed,
    /// Replay the input again and again (each pass shifted by the input's span).
    pub loop_passes: Option<u64>,
    pub rewrites: Vec<Rewrite>,
    /// Move every timestamp by this much (`--shift-time`).
    pub shift_ms: i64,
    /// Unacknowledged messages allowed in flight.
    pub inflight: u16,
    /// How long to keep reconnecting after the broker connection is lost.
    pub reconnect_for_ms: u64,
}

/// Progress and outcome.
#[derive(Debug, Clone, Default)]
pub struct ReplayStats {
    pub published: u64,
    pub acked: u64,
    pub bytes_read: u64,
    pub bad_lines: u64,
    pub bad_line_samples: Vec<BadLine>,
    /// How late messages went out against their schedule (not measured at `max`).
    pub lag: LagHistogram,
    pub elapsed_ms: u64,
    pub passes: u64,
    /// Times the broker connection was lost and re-established (unacknowledged messages
    /// were sent again).
    pub reconnects: u64,
}

/// Lateness per message in 1 ms buckets up to a minute (later counts as a minute).
#[derive(Debug, Clone)]
pub struct LagHistogram {
    buckets: Vec<u64>,
    max_ms: u64,
    n: u64,
}

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram {
            buckets: vec![0; 60_001],
            max_ms: 0,
            n: 0,
        }
    }
}

impl LagHistogram {
    fn add(&mut self, ms: u64) {
        self.buckets[ms.min(60_000) as usize] += 1;
        self.max_ms = self.max_ms.max(ms);
        self.n += 1;
    }
    pub fn count(&self) -> u64 {
        self.n
    }
    pub fn max_ms(&self) -> u64 {
        self.max_ms
    }
    /// The `q` quantile in ms (`None` before any sample).
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((self.n as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (ms, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(ms as u64);
            }
        }
        Some(self.max_ms)
    }
}

/// Replays; `progress` is called about every 200 ms and once at the end.
pub async fn replay(
    cfg: &ReplayConfig,
    progress: &mut dyn FnMut(&ReplayStats),
) -> Result<ReplayStats, ReplayError> {
    let mut stats = ReplayStats::default();
    let started = tokio::time::Instant::now();
    let mut publisher = BatchPublisher::connect(&cfg.broker, &cfg.client_id, cfg.inflight).await?;
    publisher.set_reconnect_for(Duration::from_millis(cfg.reconnect_for_ms));
    let mut last_report = started;
    // Schedule origin: the first message's time, and the input's span for loops.
    let mut origin: Option<i64> = None;
    let mut span_ms = 0i64;
    let passes = cfg.loop_passes.unwrap_or(1).max(1);
    for pass in 0..passes {
        let pass_shift = cfg.shift_ms + pass as i64 * span_ms;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(4);
        let files = cfg.files.clone();
        let (format, device) = (cfg.format, cfg.device.clone());
        let reader = std::thread::spawn(move || {
            read_chunks(&files, format, device.as_deref(), &mut |c| {
                tx.blocking_send(c).is_ok()
            })
        });
        let mut first_ts = None;
        let mut last_ts = 0i64;
        loop {
            // Whatever is buffered goes out before waiting for the reader.
            let chunk = match rx.try_recv() {
                Ok(c) => c,
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    publisher.flush().await?;
                    match rx.recv().await {
                        Some(c) => c,
                        None => break,
                    }
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break,
            };
            let Chunk::Items { items, bytes } = chunk else {
                continue; // a new file begins
            };
            stats.bytes_read += bytes;
            for item in items {
                let m = match item {
                    Ok(m) => m,
                    Err(b) => {
                        stats.bad_lines += 1;
                        if stats.bad_line_samples.len() < 10 {
                            stats.bad_line_samples.push(b);
                        }
                        continue;
                    }
                };
                first_ts.get_or_insert(m.received_at_ms);
                last_ts = last_ts.max(m.received_at_ms);
                let t0 = *origin.get_or_insert(m.received_at_ms);
                let ts = m.received_at_ms + pass_shift;
                if let Speed::Factor(f) = cfg.speed {
                    let offset_ms = ((ts - cfg.shift_ms - t0).max(0) as f64 / f) as u64;
                    let due = started + Duration::from_millis(offset_ms);
                    let now = tokio::time::Instant::now();
                    if due > now {
                        publisher.flush().await?;
                        tokio::time::sleep_until(due).await;
                        stats.lag.add(0);
                    } else {
                        stats.lag.add((now - due).as_millis() as u64);
                    }
                }
                let payload = rewrite_payload(m.payload, ts, pass_shift, cfg);
                if cfg.rewrites.is_empty() {
                    publisher.publish(&m.topic, payload).await?;
                    stats.published += 1;
                } else {
                    for topic in rewrite_topic(&m.topic, &cfg.rewrites) {
                        publisher.publish(&topic, payload.clone()).await?;
                        stats.published += 1;
                    }
                }
                let now = tokio::time::Instant::now();
                if now - last_report >= Duration::from_millis(200) {
                    last_report = now;
                    stats.acked = publisher.acked();
                    stats.reconnects = publisher.reconnects();
                    stats.elapsed_ms = (now - started).as_millis() as u64;
                    progress(&stats);
                }
            }
        }
        reader.join().map_err(|_| SourceError::Io {
            path: cfg.files.first().cloned().unwrap_or_default(),
            source: std::io::Error::other("the replay reader panicked"),
        })??;
        let Some(first) = first_ts else {
            return Err(ReplayError::Empty);
        };
        // The next pass starts one median-ish step after this one ended: the span plus a
        // second, so no two passes share a timestamp.
        span_ms = span_ms.max(last_ts - first + 1000);
        stats.passes = pass + 1;
    }
    stats.reconnects = publisher.reconnects();
    stats.acked = publisher.finish(Duration::from_secs(600)).await?;
    stats.elapsed_ms = started.elapsed().as_millis() as u64;
    progress(&stats);
    Ok(stats)
}

/// The topics one message goes out on.
fn rewrite_topic(topic: &str, rewrites: &[Rewrite]) -> Vec<String> {
    let Ok(t) = parse_topic(topic) else {
        return vec![topic.to_string()]; // the engine dead-letters it; replay it as it was
    };
    match rewrites.iter().find(|r| r.matches(t.device_id)) {
        None => vec![topic.to_string()],
        Some(r) => {
            let mut parts = topic.splitn(3, '/');
            let prefix = parts.next().unwrap_or("wc");
            let kind = parts.nth(1).unwrap_or_default();
            r.apply(t.device_id)
                .into_iter()
                .map(|id| format!("{prefix}/{id}/{kind}"))
                .collect()
        }
    }
}

/// The payload to publish: as recorded, unless time moves (shifted or a later loop pass:
/// the envelope's `ts` moves with it) or a raw payload would lose its event time.
fn rewrite_payload(payload: Vec<u8>, ts_ms: i64, shift_ms: i64, cfg: &ReplayConfig) -> Vec<u8> {
    let changes_time = shift_ms != 0 || cfg.speed != Speed::Factor(1.0);
    if !changes_time {
        return payload;
    }
    if shift_ms == 0 {
        // Only a raw payload needs work (an envelope's own time is still right); telling
        // them apart must not cost a parse per message at full speed.
        let enveloped = memchr::memmem::find(&payload, b"\"data\"").is_some();
        let object = payload.first() == Some(&b'{');
        if enveloped || !object {
            return payload;
        }
        // A raw object (no `data` member anywhere in it): it only needs to be JSON to be
        // wrapped. Checked by a scan, not parsed into a map per message at full speed; what
        // the scan does not vouch for takes the long way below.
        if crate::decode::json::is_strict_value(&payload) {
            return wrap(&payload, ts_ms);
        }
    }
    let Ok(mut env) = serde_json::from_slice::<BTreeMap<String, Box<RawValue>>>(&payload) else {
        return payload; // not a JSON object: nothing to carry the time in
    };
    if env.contains_key("data") {
        let shifted = env
            .get("ts")
            .and_then(|v| v.get().parse::<i64>().ok())
            .map(|t| t + shift_ms);
        if let Some(t) = shifted
            && let Ok(v) = RawValue::from_string(t.to_string())
        {
            env.insert("ts".into(), v);
        }
        return serde_json::to_vec(&env).unwrap_or(payload);
    }
    wrap(&payload, ts_ms)
}

/// A raw payload in an envelope, so its event time survives a schedule change.
fn wrap(payload: &[u8], ts_ms: i64) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(payload.len() + 40);
    let _ = write!(out, "{{\"ts\":{ts_ms},\"data\":");
    out.extend_from_slice(payload);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_map_and_clone_devices() {
        let r = Rewrite::parse("wc0001=load{1..3}").unwrap();
        assert_eq!(
            rewrite_topic("wc/wc0001/vitals", std::slice::from_ref(&r)),
            ["wc/load1/vitals", "wc/load2/vitals", "wc/load3/vitals"]
        );
        assert_eq!(
            rewrite_topic("wc/wc0002/vitals", std::slice::from_ref(&r)),
            ["wc/wc0002/vitals"]
        );
        let all = Rewrite::parse("*=site2-{id}").unwrap();
        assert_eq!(rewrite_topic("wc/x/wifi", &[all]), ["wc/site2-x/wifi"]);
        for bad in [
            "nope",
            "=x",
            "a=b{1..}",
            "a=b{3..1}",
            "a=b/c",
            "a={1..2}{3..4}",
        ] {
            assert!(Rewrite::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn speed_parses_factors_and_max() {
        assert_eq!(Speed::parse("max").unwrap(), Speed::Max);
        assert_eq!(Speed::parse("10").unwrap(), Speed::Factor(10.0));
        assert_eq!(Speed::parse("10x").unwrap(), Speed::Factor(10.0));
        assert!(Speed::parse("0").is_err() && Speed::parse("fast").is_err());
    }

    fn cfg(speed: Speed) -> ReplayConfig {
        ReplayConfig {
            broker: BrokerUrl::parse("mqtt://127.0.0.1:1883").unwrap().0,
            client_id: "t".into(),
            files: vec![],
            format: InputFormat::Capture,
            device: None,
            speed,
            loop_passes: None,
            rewrites: vec![],
            shift_ms: 0,
            inflight: 10,
            reconnect_for_ms: 0,
        }
    }

    #[test]
    fn payloads_stay_byte_exact_unless_time_moves() {
        let env = br#"{"ts":1000,"seq":1,"data":{"grid_v":240.10}}"#;
        let raw = br#"{"grid_v":240.10}"#;
        // 1x, no shift: untouched, raw or not.
        assert_eq!(
            rewrite_payload(env.to_vec(), 1000, 0, &cfg(Speed::Factor(1.0))),
            env
        );
        assert_eq!(
            rewrite_payload(raw.to_vec(), 1000, 0, &cfg(Speed::Factor(1.0))),
            raw
        );
        // Faster: an envelope keeps its own time; a raw payload gets one.
        assert_eq!(
            rewrite_payload(env.to_vec(), 1000, 0, &cfg(Speed::Max)),
            env
        );
        assert_eq!(
            rewrite_payload(raw.to_vec(), 1000, 0, &cfg(Speed::Max)),
            br#"{"ts":1000,"data":{"grid_v":240.10}}"#
        );
        // Shifted: the envelope's ts moves, the data stays byte-exact.
        let shifted = rewrite_payload(env.to_vec(), 1500, 500, &cfg(Speed::Factor(1.0)));
        assert_eq!(
            std::str::from_utf8(&shifted).unwrap(),
            r#"{"data":{"grid_v":240.10},"seq":1,"ts":1500}"#
        );
        // Not JSON: left alone.
        assert_eq!(
            rewrite_payload(b"nan".to_vec(), 1, 5, &cfg(Speed::Max)),
            b"nan"
        );
    }

    #[test]
    fn lag_quantiles() {
        let mut h = LagHistogram::default();
        for ms in [0, 0, 1, 2, 50] {
            h.add(ms);
        }
        assert_eq!(h.quantile_ms(0.5), Some(1));
        assert_eq!(h.quantile_ms(0.99), Some(50));
        assert_eq!(h.max_ms(), 50);
    }
}
