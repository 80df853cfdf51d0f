//! Batching: decoded rows accumulate in Arrow builders until a flush policy says "commit".
//!
//! Owns the flush policy (rows, payload bytes, age by the injected clock) on top of the
//! decoder's [`TableBuilders`]. A flush yields one `RecordBatch` per non-empty table. Knows
//! nothing of where batches go.

use std::sync::Arc;

use arrow::array::RecordBatch;

use crate::clock::Clock;
use crate::decode::TableBuilders;
use crate::model::Table;

/// When a batch is cut.
#[derive(Debug, Clone)]
pub struct FlushPolicy {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age_ms: i64,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy {
            max_rows: 65_536,
            max_bytes: 32 << 20,
            max_age_ms: 100,
        }
    }
}

pub struct Batcher {
    pub builders: TableBuilders,
    policy: FlushPolicy,
    clock: Arc<dyn Clock>,
    first_row_ms: Option<i64>,
}

impl Batcher {
    pub fn new(policy: FlushPolicy, clock: Arc<dyn Clock>) -> Self {
        Batcher {
            builders: TableBuilders::default(),
            policy,
            clock,
            first_row_ms: None,
        }
    }

    /// Call after adding rows: remembers when the oldest unflushed row arrived.
    pub fn note_rows(&mut self) {
        if self.first_row_ms.is_none() && self.builders.rows() > 0 {
            self.first_row_ms = Some(self.clock.now_ms());
        }
    }

    pub fn rows(&self) -> usize {
        self.builders.rows()
    }

    /// Whether the policy says to flush now.
    pub fn due(&self) -> bool {
        let rows = self.builders.rows();
        rows > 0
            && (rows >= self.policy.max_rows
                || self.builders.bytes() >= self.policy.max_bytes
                || self
                    .first_row_ms
                    .is_some_and(|t| self.clock.now_ms() - t >= self.policy.max_age_ms))
    }

    /// Milliseconds until the age limit cuts the pending rows (None when empty).
    pub fn ms_until_due(&self) -> Option<i64> {
        self.first_row_ms
            .map(|t| (t + self.policy.max_age_ms - self.clock.now_ms()).max(0))
    }

    pub fn flush(&mut self) -> Vec<(Table, RecordBatch)> {
        self.first_row_ms = None;
        self.builders.finish_all()
    }
}
