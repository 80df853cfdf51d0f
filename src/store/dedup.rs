//! Idempotent writes: the dedup key of a row, and the index of keys already stored.
//!
//! A row's key is derived from stored columns only, so the index can always be rebuilt from
//! the WAL and the Parquet files:
//! - telemetry with `payload_hash` (raw payloads received live): (device_id, payload_hash);
//! - other telemetry (envelopes, logs, captures): (device_id, ts, seq);
//! - dead letters: (topic, received_at, payload_hash).
//!
//! Keys are 64-bit xxh3 hashes, kept per (table, hour of `ts`) partition. Partitions are
//! loaded on demand (from Parquet through a callback) and the least recently used are dropped
//! beyond a configured count, so memory is bounded and dedup stays exact for late data.

use std::collections::{HashMap, HashSet};

use arrow::array::{
    Array, AsArray, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use arrow::datatypes::{TimestampMillisecondType, UInt64Type};
use xxhash_rust::xxh3::Xxh3;

use crate::model::{COL_DEVICE_ID, COL_PAYLOAD_HASH, COL_RECEIVED_AT, COL_SEQ, COL_TS, Table};

pub const HOUR_MS: i64 = 3_600_000;

pub fn hour_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// Columns the key is computed from (for projected Parquet reads).
pub fn key_columns(table: Table) -> &'static [&'static str] {
    if table == Table::DeadLetters {
        &["topic", COL_TS, COL_RECEIVED_AT, COL_PAYLOAD_HASH]
    } else {
        &[COL_DEVICE_ID, COL_TS, COL_SEQ, COL_PAYLOAD_HASH]
    }
}

/// A batch whose key columns are missing or of another type (a file from a different
/// schema version): dedup cannot vouch for it, so the caller must not guess.
#[derive(Debug, thiserror::Error)]
#[error("cannot compute dedup keys: column `{0}` is missing or has an unexpected type")]
pub struct KeyError(pub &'static str);

/// (hour partition, key) for every row of a batch holding at least the key columns.
pub fn row_keys(table: Table, batch: &RecordBatch) -> Result<Vec<(i64, u64)>, KeyError> {
    let n = batch.num_rows();
    let mut out = Vec::with_capacity(n);
    let ts = batch
        .column_by_name(COL_TS)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
        .ok_or(KeyError(COL_TS))?;
    let hash = batch
        .column_by_name(COL_PAYLOAD_HASH)
        .and_then(|c| c.as_primitive_opt::<UInt64Type>());
    if table == Table::DeadLetters {
        let topic = batch
            .column_by_name("topic")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>());
        let recv = batch
            .column_by_name(COL_RECEIVED_AT)
            .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>());
        for i in 0..n {
            let mut h = Xxh3::new();
            h.update(topic.map(|t| t.value(i)).unwrap_or("").as_bytes());
            h.update(&[0xff]);
            h.update(&recv.map(|r| r.value(i)).unwrap_or(0).to_le_bytes());
            h.update(&hash.map(|x| x.value(i)).unwrap_or(0).to_le_bytes());
            out.push((hour_of(ts.value(i)), h.digest()));
        }
        return Ok(out);
    }
    let device = batch
        .column_by_name(COL_DEVICE_ID)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>());
    let seq: Option<&UInt64Array> = batch
        .column_by_name(COL_SEQ)
        .and_then(|c| c.as_primitive_opt::<UInt64Type>());
    for i in 0..n {
        let mut h = Xxh3::new();
        h.update(device.map(|d| d.value(i)).unwrap_or("").as_bytes());
        // A separator that cannot occur in a device id keeps (id, number) pairs unambiguous.
        h.update(&[0xff]);
        match hash.filter(|x| x.is_valid(i)) {
            Some(x) => {
                h.update(&[1]);
                h.update(&x.value(i).to_le_bytes());
            }
            None => {
                h.update(&[0]);
                h.update(&ts.value(i).to_le_bytes());
                match seq.filter(|s| s.is_valid(i)) {
                    Some(s) => h.update(&s.value(i).to_le_bytes()),
                    None => h.update(&[0xfe]),
                }
            }
        }
        out.push((hour_of(ts.value(i)), h.digest()));
    }
    Ok(out)
}

struct Partition {
    keys: HashSet<u64>,
    last_used: u64,
    /// Rows of this partition are still in the WAL tail: its keys cannot be reloaded from
    /// Parquet alone, so it must not be dropped.
    pinned: bool,
}

/// Keys already stored, per (table, hour).
pub struct DedupIndex {
    parts: HashMap<(Table, i64), Partition>,
    max_partitions: usize,
    clock: u64,
    pub duplicates: u64,
}

impl DedupIndex {
    pub fn new(max_partitions: usize) -> Self {
        DedupIndex {
            parts: HashMap::new(),
            max_partitions: max_partitions.max(4),
            clock: 0,
            duplicates: 0,
        }
    }

    /// Filters `batch` down to rows not seen before (also de-duplicating within the batch)
    /// and records their keys. `load` is called once for each partition not in memory and
    /// returns the keys already stored in Parquet for it. Every partition is loaded before
    /// any key is recorded, so a failed load leaves the index as it was.
    pub fn admit<E: From<KeyError>>(
        &mut self,
        table: Table,
        batch: &RecordBatch,
        mut load: impl FnMut(Table, i64) -> Result<Vec<u64>, E>,
    ) -> Result<Option<RecordBatch>, E> {
        self.clock += 1;
        let keys = row_keys(table, batch)?;
        let mut hours: Vec<i64> = keys.iter().map(|(h, _)| *h).collect();
        hours.sort_unstable();
        hours.dedup();
        for hour in hours {
            if let std::collections::hash_map::Entry::Vacant(slot) = self.parts.entry((table, hour))
            {
                slot.insert(Partition {
                    keys: load(table, hour)?.into_iter().collect(),
                    last_used: 0,
                    pinned: false,
                });
            }
        }
        let mut keep = Vec::with_capacity(keys.len());
        let mut all = true;
        for (hour, key) in keys {
            // Loaded just above and not evicted since (eviction runs below).
            let Some(part) = self.parts.get_mut(&(table, hour)) else {
                keep.push(false);
                all = false;
                continue;
            };
            part.last_used = self.clock;
            part.pinned = true;
            let fresh = part.keys.insert(key);
            if !fresh {
                self.duplicates += 1;
                all = false;
            }
            keep.push(fresh);
        }
        self.evict();
        if all {
            return Ok(Some(batch.clone()));
        }
        let mask = arrow::array::BooleanArray::from(keep);
        let filtered =
            arrow::compute::filter_record_batch(batch, &mask).map_err(|_| KeyError("filter"))?;
        Ok(Some(filtered).filter(|b| b.num_rows() > 0))
    }

    /// After compaction, partitions' rows are all in Parquet: they may be dropped again.
    pub fn unpin_all(&mut self) {
        for p in self.parts.values_mut() {
            p.pinned = false;
        }
        self.evict();
    }

    fn evict(&mut self) {
        while self.parts.len() > self.max_partitions {
            let victim = self
                .parts
                .iter()
                .filter(|(_, p)| !p.pinned)
                .min_by_key(|(_, p)| p.last_used)
                .map(|(k, _)| *k);
            match victim {
                Some(k) => {
                    self.parts.remove(&k);
                }
                None => break,
            }
        }
    }

    pub fn partitions(&self) -> usize {
        self.parts.len()
    }
}
