//! Payload bytes → rows. No I/O.
//!
//! Owns the translation of one [`Message`] into one row of its table, appended straight into
//! Arrow builders ([`TableBuilders`]), or into one `dead_letters` row with an [`ErrorClass`] and
//! a text saying what was wrong. Accepts raw Wall Connector JSON and the bridge envelope
//! `{"ts","seq","data"}`; tolerates the firmware's bare `nan` (→ null) and a missing final `}`
//! (the one truncation the firmware is known to produce); keeps unknown fields in `extra`.
//! Never panics on any input (a proptest and the bad-payload table check this).

mod columns;
pub mod json;

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{TimestampMillisecondType, UInt64Type};

use crate::model::{ErrorClass, FieldKind, Message, Table, parse_topic, truncate_for_display};
use columns::{Bytes, Col, Prim};
use json::{Cursor, ScanError, ScanErrorKind};

/// Limits the decoder enforces.
#[derive(Debug, Clone)]
pub struct DecodeConfig {
    /// Larger payloads are dead-lettered as `oversized` (real payloads are < 1 KiB).
    pub max_payload_bytes: usize,
    /// Deeper JSON nesting is dead-lettered as `too_deep`.
    pub max_depth: usize,
    /// How far an envelope's `ts` may lie before the receive time. Wide on purpose: bridges
    /// backfill buffered data and replays carry old times; what it catches is a clock that
    /// never synced (1970, 2000-01-01).
    pub max_past_ms: i64,
    /// How far an envelope's `ts` may lie after the receive time (clock skew).
    pub max_future_ms: i64,
    /// At most this many payload bytes are kept in a dead-letter row.
    pub dead_letter_payload_bytes: usize,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            max_payload_bytes: 256 * 1024,
            max_depth: 32,
            max_past_ms: 3 * 365 * 24 * 3600 * 1000,
            max_future_ms: 5 * 60 * 1000,
            dead_letter_payload_bytes: 64 * 1024,
        }
    }
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Stored(Table),
    Dead(ErrorClass),
}

/// Counters a decoder keeps; read and reset by whoever reports metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub rows: [u64; 4],
    pub dead: [u64; ErrorClass::ALL.len()],
    pub unknown_fields: u64,
    pub repaired_truncations: u64,
    pub nan_values: u64,
}

/// One table's columns, written in place as payloads are scanned (see [`columns`]).
pub struct TableBuilder {
    table: Table,
    device: Bytes,
    ts: Prim<i64>,
    received: Prim<i64>,
    seq: Prim<u64>,
    hash: Prim<u64>,
    cols: Vec<Col>,
    /// Bit `i` set: column `i` holds every row (`(1 << cols.len()) - 1`).
    all_cols: u64,
    extra: Bytes,
    // dead_letters only
    dl_topic: Bytes,
    dl_kind: Bytes,
    dl_class: Bytes,
    dl_text: Bytes,
    dl_len: Prim<u64>,
    dl_payload: Bytes,
    rows: usize,
    bytes: usize,
}

impl TableBuilder {
    pub fn new(table: Table) -> Self {
        let cols: Vec<Col> = table.fields().iter().map(|s| Col::new(s.kind)).collect();
        // A row's filled columns are tracked in one u64; the endpoints have at most 29.
        debug_assert!(cols.len() < 64);
        TableBuilder {
            table,
            device: Bytes::new(),
            ts: Prim::new(),
            received: Prim::new(),
            seq: Prim::new(),
            hash: Prim::new(),
            all_cols: (1u64 << cols.len().min(63)) - 1,
            cols,
            extra: Bytes::new(),
            dl_topic: Bytes::new(),
            dl_kind: Bytes::new(),
            dl_class: Bytes::new(),
            dl_text: Bytes::new(),
            dl_len: Prim::new(),
            dl_payload: Bytes::new(),
            rows: 0,
            bytes: 0,
        }
    }

    pub fn table(&self) -> Table {
        self.table
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Approximate payload bytes behind the buffered rows (for size-based flushing).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Cuts the payload columns back to the complete rows (a rejected payload).
    fn discard_partial_row(&mut self) {
        for c in &mut self.cols {
            c.truncate(self.rows);
        }
    }

    /// Takes the buffered rows as a batch (None when empty) and resets the builders.
    pub fn finish(&mut self) -> Option<RecordBatch> {
        if self.rows == 0 {
            return None;
        }
        let utc = |p: &mut Prim<i64>| -> ArrayRef {
            Arc::new(p.finish::<TimestampMillisecondType>().with_timezone("UTC"))
        };
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(self.device.finish_utf8()),
            utc(&mut self.ts),
            utc(&mut self.received),
            Arc::new(self.seq.finish::<UInt64Type>()),
            Arc::new(self.hash.finish::<UInt64Type>()),
        ];
        if self.table == Table::DeadLetters {
            arrays.push(Arc::new(self.dl_topic.finish_utf8()));
            arrays.push(Arc::new(self.dl_kind.finish_utf8()));
            arrays.push(Arc::new(self.dl_class.finish_utf8()));
            arrays.push(Arc::new(self.dl_text.finish_utf8()));
            arrays.push(Arc::new(self.dl_len.finish::<UInt64Type>()));
            arrays.push(Arc::new(self.dl_payload.finish_binary()));
        } else {
            for c in &mut self.cols {
                match c.finish() {
                    Ok(a) => arrays.push(a),
                    // Not reachable: list offsets are item counts as lists closed. Reported
                    // below, with the batch, by the schema check this short column fails.
                    Err(e) => tracing::error!(table = self.table.name(), "list column: {e}"),
                }
            }
            arrays.push(Arc::new(self.extra.finish_utf8()));
        }
        self.rows = 0;
        self.bytes = 0;
        let batch = RecordBatch::try_new(self.table.schema(), arrays);
        // Every column gets exactly one value per row (tested on mutated payloads), so this
        // holds by construction; a failure here is a decoder bug, reported, not hidden.
        debug_assert!(batch.is_ok(), "decoded columns disagree: {batch:?}");
        if let Err(e) = &batch {
            tracing::error!(table = self.table.name(), "decoded batch rejected: {e}");
        }
        batch.ok()
    }
}

/// Builders for every ingest table.
pub struct TableBuilders {
    tables: Vec<TableBuilder>,
}

impl Default for TableBuilders {
    fn default() -> Self {
        TableBuilders {
            tables: Table::ALL.iter().map(|t| TableBuilder::new(*t)).collect(),
        }
    }
}

impl TableBuilders {
    pub fn get(&self, t: Table) -> &TableBuilder {
        &self.tables[t.index()]
    }
    pub fn get_mut(&mut self, t: Table) -> &mut TableBuilder {
        &mut self.tables[t.index()]
    }
    pub fn rows(&self) -> usize {
        self.tables.iter().map(|t| t.rows).sum()
    }
    pub fn bytes(&self) -> usize {
        self.tables.iter().map(|t| t.bytes).sum()
    }
    /// Every non-empty table's batch.
    pub fn finish_all(&mut self) -> Vec<(Table, RecordBatch)> {
        self.tables
            .iter_mut()
            .filter_map(|b| b.finish().map(|r| (b.table, r)))
            .collect()
    }
}

/// What one payload has shown so far, beyond the values already in their columns.
#[derive(Default)]
struct RowState {
    /// Bit `i`: column `i` got a value from this payload.
    filled: u64,
    /// Unknown members, `"key":value,…` (braces added when the row is complete).
    extra: String,
    env_ts: Option<i64>,
    env_seq: Option<u64>,
    env_data: bool,
    /// Unescaping space for strings with escapes.
    scratch: String,
}

impl RowState {
    fn reset(&mut self) {
        self.filled = 0;
        self.extra.clear();
        self.env_ts = None;
        self.env_seq = None;
        self.env_data = false;
    }
}

/// A decode failure before it becomes a dead letter.
struct Reject {
    class: ErrorClass,
    text: String,
}

fn reject(class: ErrorClass, text: impl Into<String>) -> Reject {
    Reject {
        class,
        text: text.into(),
    }
}

impl From<ScanError> for Reject {
    fn from(e: ScanError) -> Self {
        let class = match e.kind {
            ScanErrorKind::TooDeep => ErrorClass::TooDeep,
            _ => ErrorClass::InvalidJson,
        };
        reject(class, e.to_string())
    }
}

/// Decodes messages into table builders. Holds reusable scratch space; one per thread.
pub struct Decoder {
    cfg: DecodeConfig,
    row: RowState,
    stats: DecodeStats,
}

impl Decoder {
    pub fn new(cfg: DecodeConfig) -> Self {
        Decoder {
            cfg,
            row: RowState::default(),
            stats: DecodeStats::default(),
        }
    }

    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    pub fn take_stats(&mut self) -> DecodeStats {
        std::mem::take(&mut self.stats)
    }

    /// Decodes one message into `out`: a row of its table, or a dead letter.
    pub fn decode(&mut self, msg: &Message, out: &mut TableBuilders) -> Outcome {
        match self.try_decode(msg, out) {
            Ok(t) => {
                self.stats.rows[t.index()] += 1;
                Outcome::Stored(t)
            }
            Err(r) => {
                let r = utf8_first(&msg.payload, r);
                let class = r.class;
                self.stats.dead[class as usize] += 1;
                self.dead_letter(msg, r, out);
                Outcome::Dead(class)
            }
        }
    }

    fn try_decode(&mut self, msg: &Message, out: &mut TableBuilders) -> Result<Table, Reject> {
        let topic = parse_topic(&msg.topic).map_err(|e| reject(ErrorClass::BadTopic, e))?;
        let p = &msg.payload;
        if p.len() > self.cfg.max_payload_bytes {
            return Err(reject(
                ErrorClass::Oversized,
                format!(
                    "payload of {} bytes exceeds max_payload_bytes = {}",
                    p.len(),
                    self.cfg.max_payload_bytes
                ),
            ));
        }
        // UTF-8 is checked where text is kept (string values, unknown keys and values), not
        // over the whole payload up front: everything else the scanner accepts is ASCII by
        // construction, and a rejected payload is checked in full (`utf8_first`), so invalid
        // UTF-8 is still classed as such. Saves a pass over every payload (4–10 % of decode).
        let table = topic.table;
        let b = out.get_mut(table);
        self.row.reset();
        // Values go to their columns as they are scanned; whatever rejects the payload from
        // here on cuts the columns back to the complete rows.
        let ts = match self
            .parse_top(p, table, b)
            .and_then(|repaired| self.event_ts(msg, repaired))
        {
            Ok(ts) => ts,
            Err(r) => {
                b.discard_partial_row();
                return Err(r);
            }
        };
        let mut missing = b.all_cols & !self.row.filled;
        while missing != 0 {
            b.cols[missing.trailing_zeros() as usize].push_null();
            missing &= missing - 1;
        }
        // Raw payloads received live have no stable identity but their bytes (see model).
        let hash =
            (self.row.env_ts.is_none() && !msg.recorded).then(|| xxhash_rust::xxh3::xxh3_64(p));
        b.device.push(topic.device_id.as_bytes());
        b.ts.push(ts);
        b.received.push(msg.received_at_ms);
        b.seq.push_option(self.row.env_seq);
        b.hash.push_option(hash);
        if self.row.extra.is_empty() {
            b.extra.push_null();
        } else {
            self.stats.unknown_fields += 1;
            let e = &mut b.extra.data;
            e.push(b'{');
            e.extend_from_slice(self.row.extra.as_bytes());
            e.push(b'}');
            b.extra.close();
        }
        b.rows += 1;
        b.bytes += p.len();
        Ok(table)
    }

    /// The row's event time: the envelope's `ts` (inside the plausibility window), else the
    /// receive time. Also counts a repaired truncation, once the payload is accepted.
    fn event_ts(&mut self, msg: &Message, repaired: bool) -> Result<i64, Reject> {
        let Some(ts) = self.row.env_ts else {
            self.stats.repaired_truncations += u64::from(repaired);
            return Ok(msg.received_at_ms);
        };
        let d = ts.saturating_sub(msg.received_at_ms);
        if d > self.cfg.max_future_ms || d < self.cfg.max_past_ms.saturating_neg() {
            return Err(reject(
                ErrorClass::TsOutOfWindow,
                format!(
                    "envelope ts {} is {} s from the receive time {} (window: -{} s .. +{} s)",
                    crate::capture::format_rfc3339_ms(ts),
                    d / 1000,
                    crate::capture::format_rfc3339_ms(msg.received_at_ms),
                    self.cfg.max_past_ms / 1000,
                    self.cfg.max_future_ms / 1000
                ),
            ));
        }
        self.stats.repaired_truncations += u64::from(repaired);
        Ok(ts)
    }

    /// Parses the top-level object; returns whether a missing final `}` was repaired.
    fn parse_top(&mut self, p: &[u8], table: Table, b: &mut TableBuilder) -> Result<bool, Reject> {
        let mut c = Cursor::new(p);
        c.ws();
        if !c.eat(b'{') {
            return Err(if c.at_end() {
                reject(ErrorClass::InvalidJson, "empty payload")
            } else {
                reject(
                    ErrorClass::NotAnObject,
                    "payload is not a JSON object (expected `{` first)",
                )
            });
        }
        // The first key decides: a bridge envelope starts with ts, seq or data.
        let mut envelope: Option<bool> = None;
        let mut expect = 0usize;
        let mut repaired = false;
        c.ws();
        if !c.eat(b'}') {
            loop {
                c.ws();
                let (known, key, escaped) = read_key(&mut c, table, expect)?;
                c.expect(b':', "expected ':' after a key")?;
                c.ws();
                let is_env = *envelope.get_or_insert(matches!(key, b"ts" | b"seq" | b"data"));
                if is_env {
                    match key {
                        b"data" => {
                            if !c.eat(b'{') {
                                return Err(reject(
                                    ErrorClass::BadEnvelope,
                                    "envelope `data` is not a JSON object",
                                ));
                            }
                            self.row.env_data = true;
                            if !self.parse_fields(&mut c, table, b, 1, &mut expect)? {
                                // Only the outermost brace may be missing: an unclosed `data`
                                // means the payload was cut, not the firmware quirk.
                                return Err(reject(
                                    ErrorClass::InvalidJson,
                                    format!(
                                        "JSON ends early at byte {} (envelope `data` is not closed)",
                                        c.i
                                    ),
                                ));
                            }
                        }
                        b"ts" => self.row.env_ts = Some(envelope_ts(&mut c)?),
                        b"seq" => self.row.env_seq = Some(envelope_seq(&mut c)?),
                        _ => {
                            let v = c.skip_value(1, self.cfg.max_depth)?;
                            push_extra(&mut self.row.extra, key, v)?;
                        }
                    }
                } else {
                    self.field(&mut c, table, b, known, key, escaped, 1, &mut expect)?;
                }
                c.ws();
                if c.eat(b',') {
                    continue;
                }
                if c.eat(b'}') {
                    break;
                }
                if c.at_end() {
                    // The firmware sometimes drops the final `}` after its last field: repair
                    // exactly that. Input that stops after any other member was cut short
                    // (perhaps inside a number), so it is rejected.
                    let complete = envelope == Some(true) || expect == table.fields().len();
                    if !complete {
                        return Err(reject(
                            ErrorClass::InvalidJson,
                            format!("JSON ends early at byte {} (no closing `}}`)", c.i),
                        ));
                    }
                    repaired = true;
                    break;
                }
                return Err(reject(
                    ErrorClass::InvalidJson,
                    format!("invalid JSON at byte {}: expected ',' or '}}'", c.i),
                ));
            }
        }
        c.ws();
        if !c.at_end() {
            return Err(reject(
                ErrorClass::InvalidJson,
                format!("invalid JSON at byte {}: bytes after the object", c.i),
            ));
        }
        if envelope == Some(true) && !self.row.env_data {
            return Err(reject(
                ErrorClass::BadEnvelope,
                "envelope has no `data` object",
            ));
        }
        Ok(repaired)
    }

    /// Parses the members of an object whose `{` was consumed. Returns false when the input
    /// ended right after a complete member (a missing `}`), true when the object closed.
    fn parse_fields(
        &mut self,
        c: &mut Cursor<'_>,
        table: Table,
        b: &mut TableBuilder,
        depth: usize,
        expect: &mut usize,
    ) -> Result<bool, Reject> {
        c.ws();
        if c.eat(b'}') {
            return Ok(true);
        }
        loop {
            c.ws();
            let (known, key, escaped) = read_key(c, table, *expect)?;
            c.expect(b':', "expected ':' after a key")?;
            c.ws();
            self.field(c, table, b, known, key, escaped, depth, expect)?;
            c.ws();
            if c.eat(b',') {
                continue;
            }
            if c.eat(b'}') {
                return Ok(true);
            }
            if c.at_end() {
                return Ok(false);
            }
            return Err(reject(
                ErrorClass::InvalidJson,
                format!("invalid JSON at byte {}: expected ',' or '}}'", c.i),
            ));
        }
    }

    /// Decodes one member's value into its column, or into `extra` when the key is unknown.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn field(
        &mut self,
        c: &mut Cursor<'_>,
        table: Table,
        b: &mut TableBuilder,
        known: Option<usize>,
        key: &[u8],
        escaped: bool,
        depth: usize,
        expect: &mut usize,
    ) -> Result<(), Reject> {
        let specs = table.fields();
        // Firmware serves fields in a fixed order: try the next expected one first.
        let idx = if known.is_some() {
            known
        } else if escaped {
            None
        } else if specs
            .get(*expect)
            .is_some_and(|s| same(s.name.as_bytes(), key))
        {
            Some(*expect)
        } else {
            specs.iter().position(|s| same(s.name.as_bytes(), key))
        };
        let Some(i) = idx else {
            let v = c.skip_value(depth, self.cfg.max_depth)?;
            push_extra(&mut self.row.extra, key, v)?;
            return Ok(());
        };
        *expect = i + 1;
        let bit = 1u64 << i;
        let col = &mut b.cols[i];
        if self.row.filled & bit != 0 {
            // The same key twice: the last value wins.
            col.truncate(b.rows);
        }
        self.row.filled |= bit;
        let spec = specs[i];
        value_into(
            c,
            col,
            spec.kind,
            &mut self.row.scratch,
            &mut self.stats.nan_values,
        )
        .map_err(|e| match e {
            ValueError::Scan(s) => Reject::from(s),
            ValueError::Wrong { expected, found } => reject(
                ErrorClass::WrongType,
                format!("field `{}`: expected {expected}, found {found}", spec.name),
            ),
        })
    }

    fn dead_letter(&mut self, msg: &Message, r: Reject, out: &mut TableBuilders) {
        let b = out.get_mut(Table::DeadLetters);
        let mut parts = msg.topic.split('/');
        let device = parts.next().and(parts.next()).filter(|d| {
            !d.is_empty()
                && d.len() <= crate::model::MAX_DEVICE_ID_LEN
                && d.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':'))
        });
        let kind = parts.next();
        match device {
            Some(d) => b.device.push(d.as_bytes()),
            None => b.device.push_null(),
        }
        b.ts.push(msg.received_at_ms);
        b.received.push(msg.received_at_ms);
        b.seq.push_null();
        b.hash.push(xxhash_rust::xxh3::xxh3_64(&msg.payload));
        b.dl_topic
            .push(truncate_for_display(&msg.topic, 1024).as_bytes());
        match kind {
            Some(k) => b.dl_kind.push(truncate_for_display(k, 64).as_bytes()),
            None => b.dl_kind.push_null(),
        }
        b.dl_class.push(r.class.as_str().as_bytes());
        b.dl_text.push(r.text.as_bytes());
        b.dl_len.push(msg.payload.len() as u64);
        let keep = msg.payload.len().min(self.cfg.dead_letter_payload_bytes);
        b.dl_payload.push(&msg.payload[..keep]);
        b.rows += 1;
        b.bytes += keep;
    }
}

/// Whether the value at the cursor may be one of the firmware's non-finite tokens.
#[inline(always)]
fn maybe_non_finite(c: &Cursor<'_>, first: u8) -> bool {
    match first {
        b'n' | b'N' | b'i' | b'I' => true,
        b'-' => matches!(c.b.get(c.i + 1), Some(b'n' | b'N' | b'i' | b'I')),
        _ => false,
    }
}

/// Decodes one value of a known field straight into its column (a null for the
/// firmware's `nan` and for `null`). On an error the column may hold a partial value; the
/// caller cuts it back with the rest of the row.
#[inline]
fn value_into(
    c: &mut Cursor<'_>,
    col: &mut Col,
    kind: FieldKind,
    scratch: &mut String,
    nans: &mut u64,
) -> Result<(), ValueError> {
    let Some(first) = c.peek() else {
        return Err(ValueError::Scan(ScanError {
            kind: ScanErrorKind::Truncated,
            offset: c.i,
        }));
    };
    if maybe_non_finite(c, first) && c.non_finite() {
        *nans += 1;
        col.push_null();
        return Ok(());
    }
    if first == b'n' {
        c.literal(b"null")?;
        col.push_null();
        return Ok(());
    }
    match col {
        Col::F64(p) => match first {
            b'-' | b'0'..=b'9' => p.push(c.number()?.f),
            _ => return Err(wrong("a number", c)),
        },
        Col::I64(p) => match first {
            b'-' | b'0'..=b'9' => {
                let n = c.number()?;
                match n.i {
                    Some(i) => p.push(i),
                    None if n.f.fract() == 0.0 && n.f.abs() < 9.0e18 => p.push(n.f as i64),
                    None => {
                        return Err(ValueError::Wrong {
                            expected: "an integer",
                            found: "a fractional number",
                        });
                    }
                }
            }
            _ => return Err(wrong("an integer", c)),
        },
        Col::Bool(p) => match first {
            b't' => {
                c.literal(b"true")?;
                p.push(true);
            }
            b'f' => {
                c.literal(b"false")?;
                p.push(false);
            }
            _ => return Err(wrong("a boolean", c)),
        },
        Col::Str(s) => {
            match first {
                b'"' => c.string_into_bytes(&mut s.data, scratch)?,
                b'-' | b'0'..=b'9' if kind == FieldKind::Text => {
                    let at = c.i;
                    c.number()?;
                    s.data.extend_from_slice(&c.b[at..c.i]);
                }
                _ => {
                    return Err(wrong(
                        if kind == FieldKind::Str {
                            "a string"
                        } else {
                            "a string or number"
                        },
                        c,
                    ));
                }
            }
            s.close();
        }
        Col::ListText(lists, items) => {
            list_into(c, |c, e| {
                if null_item(c, e)? {
                    items.push_null();
                    return Ok(());
                }
                match e {
                    b'"' => {
                        c.string_into_bytes(&mut items.data, scratch)?;
                        items.close();
                    }
                    b'-' | b'0'..=b'9' => {
                        let at = c.i;
                        c.number()?;
                        items.push(&c.b[at..c.i]);
                    }
                    _ => return Err(wrong("an array of strings or numbers", c)),
                }
                Ok(())
            })?;
            lists.close(items.len());
        }
        Col::ListI64(lists, items) => {
            list_into(c, |c, e| {
                if null_item(c, e)? {
                    items.push_null();
                    return Ok(());
                }
                match e {
                    b'-' | b'0'..=b'9' => match c.number()?.i {
                        Some(i) => items.push(i),
                        None => {
                            return Err(ValueError::Wrong {
                                expected: "an array of integers",
                                found: "a fractional number",
                            });
                        }
                    },
                    _ => return Err(wrong("an array of integers", c)),
                }
                Ok(())
            })?;
            lists.close(items.len());
        }
    }
    Ok(())
}

/// Consumes an array item that stands for null (`null`, or the firmware's `nan`/`inf`),
/// telling whether it did; any other item is left to the caller.
#[inline]
fn null_item(c: &mut Cursor<'_>, first: u8) -> Result<bool, ValueError> {
    if maybe_non_finite(c, first) && c.non_finite() {
        return Ok(true);
    }
    if first == b'n' {
        c.literal(b"null")?;
        return Ok(true);
    }
    Ok(false)
}

/// Walks an array at the cursor, handing each element's first byte to `item`.
#[inline]
fn list_into(
    c: &mut Cursor<'_>,
    mut item: impl FnMut(&mut Cursor<'_>, u8) -> Result<(), ValueError>,
) -> Result<(), ValueError> {
    if !c.eat(b'[') {
        return Err(wrong("an array", c));
    }
    c.ws();
    if c.eat(b']') {
        return Ok(());
    }
    loop {
        c.ws();
        let Some(e) = c.peek() else {
            return Err(ValueError::Scan(ScanError {
                kind: ScanErrorKind::Truncated,
                offset: c.i,
            }));
        };
        item(c, e)?;
        c.ws();
        if c.eat(b',') {
            continue;
        }
        if c.eat(b']') {
            return Ok(());
        }
        return Err(ValueError::Scan(ScanError {
            kind: if c.at_end() {
                ScanErrorKind::Truncated
            } else {
                ScanErrorKind::Syntax("expected ',' or ']'")
            },
            offset: c.i,
        }));
    }
}

/// Reads an object key. Fast path: the bytes at the cursor are exactly the next expected
/// field name in quotes (the firmware's fixed order), matched in place without a scan.
#[inline(always)]
fn read_key<'a>(
    c: &mut Cursor<'a>,
    table: Table,
    expect: usize,
) -> Result<(Option<usize>, &'a [u8], bool), ScanError> {
    if let Some(spec) = table.fields().get(expect) {
        let n = spec.name.as_bytes();
        let b = c.b;
        let at = c.i;
        if b.len() > at + n.len() + 1
            && b[at] == b'"'
            && b[at + 1 + n.len()] == b'"'
            && same(&b[at + 1..at + 1 + n.len()], n)
        {
            c.i = at + n.len() + 2;
            return Ok((Some(expect), &b[at + 1..at + 1 + n.len()], false));
        }
    }
    let (key, escaped) = c.raw_string()?;
    Ok((None, key, escaped))
}

/// Byte equality for short keys, inlined: a libc `memcmp` call per field costs more than
/// comparing ~12 bytes in place.
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i + 8 <= a.len() {
        let x = u64::from_ne_bytes([
            a[i],
            a[i + 1],
            a[i + 2],
            a[i + 3],
            a[i + 4],
            a[i + 5],
            a[i + 6],
            a[i + 7],
        ]);
        let y = u64::from_ne_bytes([
            b[i],
            b[i + 1],
            b[i + 2],
            b[i + 3],
            b[i + 4],
            b[i + 5],
            b[i + 6],
            b[i + 7],
        ]);
        if x != y {
            return false;
        }
        i += 8;
    }
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

enum ValueError {
    Scan(ScanError),
    Wrong {
        expected: &'static str,
        found: &'static str,
    },
}

impl From<ScanError> for ValueError {
    fn from(e: ScanError) -> Self {
        ValueError::Scan(e)
    }
}

fn wrong(expected: &'static str, c: &Cursor<'_>) -> ValueError {
    let found = match c.peek() {
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        Some(b'-' | b'0'..=b'9') => "a number",
        Some(b'n') => "null",
        _ => "an invalid token",
    };
    ValueError::Wrong { expected, found }
}

/// A payload that is not UTF-8 is dead-lettered as `invalid_utf8`, whatever else the scanner
/// found wrong first (it reads only the bytes it needs to).
fn utf8_first(payload: &[u8], r: Reject) -> Reject {
    match std::str::from_utf8(payload) {
        Ok(_) => r,
        Err(e) => reject(
            ErrorClass::InvalidUtf8,
            format!("payload is not UTF-8 (byte {})", e.valid_up_to()),
        ),
    }
}

/// Appends an unknown member to `extra` (kept verbatim, so checked for UTF-8 here).
fn push_extra(extra: &mut String, key: &[u8], raw: &[u8]) -> Result<(), Reject> {
    // The caller's `utf8_first` words the error from the whole payload.
    let text = |b| std::str::from_utf8(b).map_err(|_| reject(ErrorClass::InvalidUtf8, ""));
    let (key, v) = (text(key)?, text(raw)?);
    if !extra.is_empty() {
        extra.push(',');
    }
    extra.push('"');
    extra.push_str(key);
    extra.push_str("\":");
    // Bare non-finite tokens are not JSON: keep `extra` valid JSON.
    if matches!(
        v,
        "nan" | "NaN" | "-nan" | "-NaN" | "inf" | "-inf" | "Infinity" | "-Infinity"
    ) {
        extra.push_str("null");
    } else {
        extra.push_str(v);
    }
    Ok(())
}

fn envelope_ts(c: &mut Cursor<'_>) -> Result<i64, Reject> {
    match c.peek() {
        Some(b'"') => {
            let mut s = String::new();
            c.string_into(&mut s)?;
            crate::capture::parse_rfc3339_ms(&s).ok_or_else(|| {
                reject(
                    ErrorClass::BadEnvelope,
                    format!(
                        "envelope `ts` {:?} is not an RFC 3339 time",
                        truncate_for_display(&s, 64)
                    ),
                )
            })
        }
        Some(b'-' | b'0'..=b'9') => {
            let n = c.number()?;
            n.i.ok_or_else(|| {
                reject(
                    ErrorClass::BadEnvelope,
                    "envelope `ts` must be epoch milliseconds (an integer) or RFC 3339 text",
                )
            })
        }
        _ => Err(reject(
            ErrorClass::BadEnvelope,
            "envelope `ts` must be epoch milliseconds or RFC 3339 text",
        )),
    }
}

fn envelope_seq(c: &mut Cursor<'_>) -> Result<u64, Reject> {
    let n = c
        .number()
        .map_err(|_| reject(ErrorClass::BadEnvelope, "envelope `seq` is not a number"))?;
    n.i.and_then(|i| u64::try_from(i).ok()).ok_or_else(|| {
        reject(
            ErrorClass::BadEnvelope,
            "envelope `seq` is not a non-negative integer",
        )
    })
}

#[cfg(test)]
mod tests;
