//! Live-ingest counters: designed up front, cheap to bump from the hot path, read as one
//! snapshot by the status line, the `ingest-status.json` file and `wallscope status`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Ack latency (receive → PUBACK written) in 1 ms buckets up to 4 s (the last bucket
/// holds everything slower): exact to the millisecond where the targets live, constant
/// memory (32 KiB), no allocation per sample.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

const LATENCY_BUCKETS: usize = 4096;

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LatencyHistogram {
    pub fn record_ms(&self, ms: u64) {
        let b = (ms as usize).min(LATENCY_BUCKETS - 1);
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
    }
    /// The latency (ms) at quantile `q`, or None without samples. The top bucket reads as
    /// its lower bound (4095 ms).
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        let total: u64 = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= want {
                return Some(i as u64);
            }
        }
        Some((LATENCY_BUCKETS - 1) as u64)
    }
}

/// Every counter of a live ingest.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub received: Counter,
    pub received_bytes: Counter,
    /// PUBLISH packets flagged DUP (the broker resending after a lost connection).
    pub redelivered: Counter,
    /// PUBACKs written to the socket.
    pub acked: Counter,
    /// Tokens whose connection had ended by the time they were durable.
    pub acks_dropped_stale: Counter,
    pub connections: Counter,
    pub reconnects: Counter,
    /// CONNACKs with session_present = 0 (the first connect of a new client id included).
    pub sessions_lost: Counter,
    /// SUBACKs granting every topic filter.
    pub subscriptions: Counter,
    pub rows_durable: Counter,
    pub dead_letters: Counter,
    pub commits: Counter,
    pub ack_latency: LatencyHistogram,
    /// Live rule evaluations, their summed wall time, and the findings they added or extended.
    pub rule_evaluations: Counter,
    pub rule_eval_ms: Counter,
    pub rule_errors: Counter,
    pub findings_new: Counter,
    /// Time from a batch becoming durable to the evaluation that covered it finishing:
    /// the last one and the largest seen.
    rule_lag_ms_last: AtomicU64,
    rule_lag_ms_max: AtomicU64,
    /// The newest event time the last live evaluation covered: findings are complete up
    /// to here (a watermark; 0 before the first evaluation).
    rule_watermark_ms: AtomicI64,
    pending_msgs: AtomicU64,
    pending_bytes: AtomicU64,
    paused: AtomicBool,
    paused_count: Counter,
    started_ms: Mutex<Option<i64>>,
}

impl IngestMetrics {
    pub fn set_pending(&self, msgs: usize, bytes: usize) {
        self.pending_msgs.store(msgs as u64, Ordering::Relaxed);
        self.pending_bytes.store(bytes as u64, Ordering::Relaxed);
    }
    pub fn set_paused(&self, paused: bool) {
        if paused && !self.paused.swap(true, Ordering::Relaxed) {
            self.paused_count.inc();
        } else if !paused {
            self.paused.store(false, Ordering::Relaxed);
        }
    }
    pub fn set_rule_lag_ms(&self, ms: u64) {
        self.rule_lag_ms_last.store(ms, Ordering::Relaxed);
        self.rule_lag_ms_max.fetch_max(ms, Ordering::Relaxed);
    }
    pub fn set_rule_watermark_ms(&self, ms: i64) {
        self.rule_watermark_ms.fetch_max(ms, Ordering::Relaxed);
    }
    pub fn set_started(&self, ms: i64) {
        if let Ok(mut s) = self.started_ms.lock() {
            *s = Some(ms);
        }
    }

    pub fn snapshot(&self, now_ms: i64) -> MetricsSnapshot {
        MetricsSnapshot {
            at_ms: now_ms,
            started_ms: self.started_ms.lock().ok().and_then(|s| *s),
            received: self.received.get(),
            received_bytes: self.received_bytes.get(),
            redelivered: self.redelivered.get(),
            acked: self.acked.get(),
            acks_dropped_stale: self.acks_dropped_stale.get(),
            acks_pending: self.pending_msgs.load(Ordering::Relaxed),
            pending_bytes: self.pending_bytes.load(Ordering::Relaxed),
            paused: self.paused.load(Ordering::Relaxed),
            pauses: self.paused_count.get(),
            connections: self.connections.get(),
            reconnects: self.reconnects.get(),
            sessions_lost: self.sessions_lost.get(),
            rows_durable: self.rows_durable.get(),
            dead_letters: self.dead_letters.get(),
            commits: self.commits.get(),
            ack_latency_p50_ms: self.ack_latency.quantile_ms(0.5),
            ack_latency_p99_ms: self.ack_latency.quantile_ms(0.99),
            rule_evaluations: self.rule_evaluations.get(),
            rule_eval_ms: self.rule_eval_ms.get(),
            rule_errors: self.rule_errors.get(),
            findings_new: self.findings_new.get(),
            rule_lag_ms_last: self.rule_lag_ms_last.load(Ordering::Relaxed),
            rule_lag_ms_max: self.rule_lag_ms_max.load(Ordering::Relaxed),
            rule_watermark_ms: self.rule_watermark_ms.load(Ordering::Relaxed),
        }
    }
}

/// The counters at one moment; what `ingest-status.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MetricsSnapshot {
    pub at_ms: i64,
    pub started_ms: Option<i64>,
    pub received: u64,
    pub received_bytes: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub acks_dropped_stale: u64,
    pub acks_pending: u64,
    pub pending_bytes: u64,
    pub paused: bool,
    pub pauses: u64,
    pub connections: u64,
    pub reconnects: u64,
    pub sessions_lost: u64,
    pub rows_durable: u64,
    pub dead_letters: u64,
    pub commits: u64,
    pub ack_latency_p50_ms: Option<u64>,
    pub ack_latency_p99_ms: Option<u64>,
    #[serde(default)]
    pub rule_evaluations: u64,
    #[serde(default)]
    pub rule_eval_ms: u64,
    #[serde(default)]
    pub rule_errors: u64,
    #[serde(default)]
    pub findings_new: u64,
    #[serde(default)]
    pub rule_lag_ms_last: u64,
    #[serde(default)]
    pub rule_lag_ms_max: u64,
    #[serde(default)]
    pub rule_watermark_ms: i64,
}

impl MetricsSnapshot {
    /// Counters as (name, value) rows, for the `metrics` table and `status`.
    pub fn rows(&self) -> Vec<(&'static str, f64)> {
        let opt = |v: Option<u64>| v.map(|x| x as f64).unwrap_or(f64::NAN);
        vec![
            ("received", self.received as f64),
            ("received_bytes", self.received_bytes as f64),
            ("redelivered", self.redelivered as f64),
            ("acked", self.acked as f64),
            ("acks_dropped_stale", self.acks_dropped_stale as f64),
            ("acks_pending", self.acks_pending as f64),
            ("pending_bytes", self.pending_bytes as f64),
            ("paused", if self.paused { 1.0 } else { 0.0 }),
            ("pauses", self.pauses as f64),
            ("connections", self.connections as f64),
            ("reconnects", self.reconnects as f64),
            ("sessions_lost", self.sessions_lost as f64),
            ("rows_durable", self.rows_durable as f64),
            ("dead_letters", self.dead_letters as f64),
            ("commits", self.commits as f64),
            ("ack_latency_p50_ms", opt(self.ack_latency_p50_ms)),
            ("ack_latency_p99_ms", opt(self.ack_latency_p99_ms)),
            ("rule_evaluations", self.rule_evaluations as f64),
            ("rule_eval_ms", self.rule_eval_ms as f64),
            ("rule_errors", self.rule_errors as f64),
            ("findings_new", self.findings_new as f64),
            ("rule_lag_ms_last", self.rule_lag_ms_last as f64),
            ("rule_lag_ms_max", self.rule_lag_ms_max as f64),
            ("rule_watermark_ms", self.rule_watermark_ms as f64),
        ]
    }
}

/// File in the data directory where a running ingest publishes its counters.
pub const STATUS_FILE: &str = "ingest-status.json";

/// Writes the counters atomically (temp file + rename); a failure only costs visibility.
pub fn write_status(dir: &std::path::Path, snap: &MetricsSnapshot) {
    let tmp = dir.join(format!("{STATUS_FILE}.tmp"));
    let Ok(json) = serde_json::to_vec_pretty(snap) else {
        return;
    };
    if std::fs::write(&tmp, json).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(STATUS_FILE));
    }
}

/// Reads the counters a running or finished ingest left in `dir`.
pub fn read_status(dir: &std::path::Path) -> Option<MetricsSnapshot> {
    let bytes = std::fs::read(dir.join(STATUS_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_exact_to_the_millisecond() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for _ in 0..98 {
            h.record_ms(10);
        }
        h.record_ms(300);
        h.record_ms(300);
        assert_eq!(h.quantile_ms(0.5), Some(10));
        assert_eq!(h.quantile_ms(0.99), Some(300));
        h.record_ms(0);
        assert_eq!(h.quantile_ms(0.0), Some(0));
        h.record_ms(1_000_000);
        assert_eq!(h.quantile_ms(1.0), Some(4095));
    }
}
