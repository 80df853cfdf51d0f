//! Payload bytes → rows. No I/O.
//!
//! Owns the translation of one [`Message`] into one row of its table, appended straight into
//! Arrow builders ([`TableBuilders`]), or into one `dead_letters` row with an [`ErrorClass`] and
//! a text saying what was wrong. Accepts raw Wall Connector JSON and the bridge envelope
//! `{"ts","seq","data"}`; tolerates the firmware's bare `nan` (→ null) and a missing final `}`
//! (the one truncation the firmware is known to produce); keeps unknown fields in `extra`.
//! Never panics on any input (a proptest and the bad-payload table check this).

pub mod json;

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder,
    RecordBatch, StringBuilder, TimestampMillisecondBuilder, UInt64Builder,
};

use crate::model::{ErrorClass, FieldKind, Message, Table, parse_topic, truncate_for_display};
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

/// One table's column builders.
pub struct TableBuilder {
    table: Table,
    device: StringBuilder,
    ts: TimestampMillisecondBuilder,
    received: TimestampMillisecondBuilder,
    seq: UInt64Builder,
    hash: UInt64Builder,
    cols: Vec<Col>,
    extra: StringBuilder,
    // dead_letters only
    dl_topic: StringBuilder,
    dl_kind: StringBuilder,
    dl_class: StringBuilder,
    dl_text: StringBuilder,
    dl_len: UInt64Builder,
    dl_payload: BinaryBuilder,
    rows: usize,
    bytes: usize,
}

enum Col {
    F64(Float64Builder),
    I64(Int64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
    ListText(ListBuilder<StringBuilder>),
    ListI64(ListBuilder<Int64Builder>),
}

fn ts_builder() -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::new().with_timezone("UTC")
}

impl TableBuilder {
    pub fn new(table: Table) -> Self {
        let cols = table
            .fields()
            .iter()
            .map(|s| match s.kind {
                FieldKind::F64 => Col::F64(Float64Builder::new()),
                FieldKind::I64 => Col::I64(Int64Builder::new()),
                FieldKind::Bool => Col::Bool(BooleanBuilder::new()),
                FieldKind::Str | FieldKind::Text => Col::Str(StringBuilder::new()),
                FieldKind::ListText => Col::ListText(ListBuilder::new(StringBuilder::new())),
                FieldKind::ListI64 => Col::ListI64(ListBuilder::new(Int64Builder::new())),
            })
            .collect();
        TableBuilder {
            table,
            device: StringBuilder::new(),
            ts: ts_builder(),
            received: ts_builder(),
            seq: UInt64Builder::new(),
            hash: UInt64Builder::new(),
            cols,
            extra: StringBuilder::new(),
            dl_topic: StringBuilder::new(),
            dl_kind: StringBuilder::new(),
            dl_class: StringBuilder::new(),
            dl_text: StringBuilder::new(),
            dl_len: UInt64Builder::new(),
            dl_payload: BinaryBuilder::new(),
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

    /// Takes the buffered rows as a batch (None when empty) and resets the builders.
    pub fn finish(&mut self) -> Option<RecordBatch> {
        if self.rows == 0 {
            return None;
        }
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(self.device.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.received.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.hash.finish()),
        ];
        if self.table == Table::DeadLetters {
            arrays.push(Arc::new(self.dl_topic.finish()));
            arrays.push(Arc::new(self.dl_kind.finish()));
            arrays.push(Arc::new(self.dl_class.finish()));
            arrays.push(Arc::new(self.dl_text.finish()));
            arrays.push(Arc::new(self.dl_len.finish()));
            arrays.push(Arc::new(self.dl_payload.finish()));
        } else {
            for c in &mut self.cols {
                arrays.push(match c {
                    Col::F64(b) => Arc::new(b.finish()),
                    Col::I64(b) => Arc::new(b.finish()),
                    Col::Bool(b) => Arc::new(b.finish()),
                    Col::Str(b) => Arc::new(b.finish()),
                    Col::ListText(b) => Arc::new(b.finish()),
                    Col::ListI64(b) => Arc::new(b.finish()),
                });
            }
            arrays.push(Arc::new(self.extra.finish()));
        }
        self.rows = 0;
        self.bytes = 0;
        // The builders were created from the same field catalogue as the schema.
        RecordBatch::try_new(self.table.schema(), arrays).ok()
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

/// A decoded value waiting in the row buffer until the whole payload has been read.
#[derive(Clone, Copy)]
enum Slot {
    Null,
    F64(f64),
    I64(i64),
    Bool(bool),
    /// Byte range in `RowBuf::text`.
    Str(u32, u32),
    /// Range in `RowBuf::list_text` (element byte ranges, None = null element).
    ListText(u32, u32),
    /// Range in `RowBuf::list_i64`.
    ListI64(u32, u32),
}

/// Scratch space for one row, reused across messages so decoding does not allocate.
#[derive(Default)]
struct RowBuf {
    slots: Vec<Slot>,
    text: String,
    list_text: Vec<Option<(u32, u32)>>,
    list_i64: Vec<Option<i64>>,
    extra: String,
    env_ts: Option<i64>,
    env_seq: Option<u64>,
    env_data: bool,
}

impl RowBuf {
    fn reset(&mut self, n: usize) {
        self.slots.clear();
        self.slots.resize(n, Slot::Null);
        self.text.clear();
        self.list_text.clear();
        self.list_i64.clear();
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
    row: RowBuf,
    stats: DecodeStats,
}

impl Decoder {
    pub fn new(cfg: DecodeConfig) -> Self {
        Decoder {
            cfg,
            row: RowBuf::default(),
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
        let specs = table.fields();
        self.row.reset(specs.len());
        let repaired = self.parse_top(p, table)?;
        if repaired {
            self.stats.repaired_truncations += 1;
        }
        let ts = match self.row.env_ts {
            Some(ts) => {
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
                ts
            }
            None => msg.received_at_ms,
        };
        // Raw payloads received live have no stable identity but their bytes (see model).
        let hash =
            (self.row.env_ts.is_none() && !msg.recorded).then(|| xxhash_rust::xxh3::xxh3_64(p));
        let b = out.get_mut(table);
        b.device.append_value(topic.device_id);
        b.ts.append_value(ts);
        b.received.append_value(msg.received_at_ms);
        b.seq.append_option(self.row.env_seq);
        b.hash.append_option(hash);
        let row = &self.row;
        for (slot, col) in row.slots.iter().zip(b.cols.iter_mut()) {
            append_slot(row, *slot, col);
        }
        if row.extra.is_empty() {
            b.extra.append_null();
        } else {
            self.stats.unknown_fields += 1;
            b.extra.append_value(format!("{{{}}}", row.extra));
        }
        b.rows += 1;
        b.bytes += p.len();
        Ok(table)
    }

    /// Parses the top-level object; returns whether a missing final `}` was repaired.
    fn parse_top(&mut self, p: &[u8], table: Table) -> Result<bool, Reject> {
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
                            if !self.parse_fields(&mut c, table, 1, &mut expect)? {
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
                    self.field(&mut c, table, known, key, escaped, 1, &mut expect)?;
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
            self.field(c, table, known, key, escaped, depth, expect)?;
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

    /// Decodes one member's value into its slot, or into `extra` when the key is unknown.
    #[inline]
    fn field(
        &mut self,
        c: &mut Cursor<'_>,
        table: Table,
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
        let spec = specs[i];
        let slot = self.value(c, spec.kind).map_err(|e| match e {
            ValueError::Scan(s) => Reject::from(s),
            ValueError::Wrong { expected, found } => reject(
                ErrorClass::WrongType,
                format!("field `{}`: expected {expected}, found {found}", spec.name),
            ),
        })?;
        self.row.slots[i] = slot;
        Ok(())
    }

    #[inline]
    fn value(&mut self, c: &mut Cursor<'_>, kind: FieldKind) -> Result<Slot, ValueError> {
        let Some(first) = c.peek() else {
            return Err(ValueError::Scan(ScanError {
                kind: ScanErrorKind::Truncated,
                offset: c.i,
            }));
        };
        if matches!(first, b'n' | b'N' | b'i' | b'I' | b'-') && c.non_finite() {
            self.stats.nan_values += 1;
            return Ok(Slot::Null);
        }
        if first == b'n' {
            c.literal(b"null")?;
            return Ok(Slot::Null);
        }
        let row = &mut self.row;
        match kind {
            FieldKind::F64 => match first {
                b'-' | b'0'..=b'9' => Ok(Slot::F64(c.number()?.f)),
                _ => Err(wrong("a number", c)),
            },
            FieldKind::I64 => match first {
                b'-' | b'0'..=b'9' => {
                    let n = c.number()?;
                    match n.i {
                        Some(i) => Ok(Slot::I64(i)),
                        None if n.f.fract() == 0.0 && n.f.abs() < 9.0e18 => {
                            Ok(Slot::I64(n.f as i64))
                        }
                        None => Err(ValueError::Wrong {
                            expected: "an integer",
                            found: "a fractional number",
                        }),
                    }
                }
                _ => Err(wrong("an integer", c)),
            },
            FieldKind::Bool => match first {
                b't' => {
                    c.literal(b"true")?;
                    Ok(Slot::Bool(true))
                }
                b'f' => {
                    c.literal(b"false")?;
                    Ok(Slot::Bool(false))
                }
                _ => Err(wrong("a boolean", c)),
            },
            FieldKind::Str | FieldKind::Text => {
                let start = row.text.len() as u32;
                match first {
                    b'"' => c.string_into(&mut row.text)?,
                    b'-' | b'0'..=b'9' if kind == FieldKind::Text => {
                        let at = c.i;
                        c.number()?;
                        push_ascii(&mut row.text, &c.b[at..c.i]);
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
                Ok(Slot::Str(start, row.text.len() as u32))
            }
            FieldKind::ListText | FieldKind::ListI64 => {
                if first != b'[' {
                    return Err(wrong("an array", c));
                }
                c.eat(b'[');
                let texts = kind == FieldKind::ListText;
                let start = if texts {
                    row.list_text.len()
                } else {
                    row.list_i64.len()
                } as u32;
                c.ws();
                if !c.eat(b']') {
                    loop {
                        c.ws();
                        let Some(e) = c.peek() else {
                            return Err(ValueError::Scan(ScanError {
                                kind: ScanErrorKind::Truncated,
                                offset: c.i,
                            }));
                        };
                        let is_null =
                            if matches!(e, b'n' | b'N' | b'i' | b'I' | b'-') && c.non_finite() {
                                true
                            } else if e == b'n' {
                                c.literal(b"null")?;
                                true
                            } else {
                                false
                            };
                        if is_null {
                            if texts {
                                row.list_text.push(None);
                            } else {
                                row.list_i64.push(None);
                            }
                        } else if texts {
                            let s = row.text.len() as u32;
                            match e {
                                b'"' => c.string_into(&mut row.text)?,
                                b'-' | b'0'..=b'9' => {
                                    let at = c.i;
                                    c.number()?;
                                    push_ascii(&mut row.text, &c.b[at..c.i]);
                                }
                                _ => return Err(wrong("an array of strings or numbers", c)),
                            }
                            row.list_text.push(Some((s, row.text.len() as u32)));
                        } else {
                            match e {
                                b'-' | b'0'..=b'9' => match c.number()?.i {
                                    Some(i) => row.list_i64.push(Some(i)),
                                    None => {
                                        return Err(ValueError::Wrong {
                                            expected: "an array of integers",
                                            found: "a fractional number",
                                        });
                                    }
                                },
                                _ => return Err(wrong("an array of integers", c)),
                            }
                        }
                        c.ws();
                        if c.eat(b',') {
                            continue;
                        }
                        if c.eat(b']') {
                            break;
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
                let end = if texts {
                    row.list_text.len()
                } else {
                    row.list_i64.len()
                } as u32;
                Ok(if texts {
                    Slot::ListText(start, end)
                } else {
                    Slot::ListI64(start, end)
                })
            }
        }
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
        b.device.append_option(device);
        b.ts.append_value(msg.received_at_ms);
        b.received.append_value(msg.received_at_ms);
        b.seq.append_null();
        b.hash
            .append_value(xxhash_rust::xxh3::xxh3_64(&msg.payload));
        b.dl_topic
            .append_value(truncate_for_display(&msg.topic, 1024));
        b.dl_kind
            .append_option(kind.map(|k| truncate_for_display(k, 64)));
        b.dl_class.append_value(r.class.as_str());
        b.dl_text.append_value(&r.text);
        b.dl_len.append_value(msg.payload.len() as u64);
        let keep = msg.payload.len().min(self.cfg.dead_letter_payload_bytes);
        b.dl_payload.append_value(&msg.payload[..keep]);
        b.rows += 1;
        b.bytes += keep;
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

fn push_ascii(out: &mut String, b: &[u8]) {
    // Only called on bytes the number scanner accepted: ASCII digits, signs, '.', 'e'.
    for &c in b {
        out.push(c as char);
    }
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

fn append_slot(row: &RowBuf, slot: Slot, col: &mut Col) {
    match (slot, col) {
        (Slot::F64(v), Col::F64(b)) => b.append_value(v),
        (Slot::I64(v), Col::I64(b)) => b.append_value(v),
        (Slot::Bool(v), Col::Bool(b)) => b.append_value(v),
        (Slot::Str(s, e), Col::Str(b)) => b.append_value(&row.text[s as usize..e as usize]),
        (Slot::ListText(s, e), Col::ListText(b)) => {
            for el in &row.list_text[s as usize..e as usize] {
                match el {
                    Some((a, z)) => b.values().append_value(&row.text[*a as usize..*z as usize]),
                    None => b.values().append_null(),
                }
            }
            b.append(true);
        }
        (Slot::ListI64(s, e), Col::ListI64(b)) => {
            for el in &row.list_i64[s as usize..e as usize] {
                b.values().append_option(*el);
            }
            b.append(true);
        }
        (_, col) => match col {
            Col::F64(b) => b.append_null(),
            Col::I64(b) => b.append_null(),
            Col::Bool(b) => b.append_null(),
            Col::Str(b) => b.append_null(),
            Col::ListText(b) => b.append(false),
            Col::ListI64(b) => b.append(false),
        },
    }
}

#[cfg(test)]
mod tests;
