//! Column buffers the decoder writes into while it scans a payload.
//!
//! Arrow's builders cannot take back a value, so a decoder on them must hold a whole row
//! aside until the payload proves valid and copy it over afterwards. These buffers can
//! ([`Col::truncate`]): every value goes straight to its column as it is scanned, and a
//! rejected payload cuts every column back to the row count. `finish` hands the buffers to
//! Arrow without copying and keeps the capacity for the next batch, so a steady stream of
//! equal batches grows nothing.

use std::sync::Arc;

use arrow::array::builder::NullBufferBuilder;
use arrow::array::{ArrayRef, BooleanArray, Int64Array, ListArray, PrimitiveArray, StringArray};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{ArrowPrimitiveType, DataType, Field, Float64Type, Int64Type};
use arrow::error::ArrowError;

use crate::model::FieldKind;

/// Fixed-width values with validity.
pub struct Prim<T> {
    pub values: Vec<T>,
    nulls: NullBufferBuilder,
}

impl<T: Copy + Default> Prim<T> {
    pub fn new() -> Self {
        Prim {
            values: Vec::new(),
            nulls: NullBufferBuilder::new(0),
        }
    }

    #[inline(always)]
    pub fn push(&mut self, v: T) {
        self.values.push(v);
        self.nulls.append_non_null();
    }

    #[inline]
    pub fn push_null(&mut self) {
        self.values.push(T::default());
        self.nulls.append_null();
    }

    #[inline]
    pub fn push_option(&mut self, v: Option<T>) {
        match v {
            Some(v) => self.push(v),
            None => self.push_null(),
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn truncate(&mut self, len: usize) {
        self.values.truncate(len);
        self.nulls.truncate(len);
    }

    /// The values and their validity; the next batch starts with the same capacity.
    fn take(&mut self) -> (Vec<T>, Option<NullBuffer>) {
        let cap = self.values.len();
        let values = std::mem::replace(&mut self.values, Vec::with_capacity(cap));
        (values, self.nulls.finish())
    }
}

impl<T: arrow::datatypes::ArrowNativeType + Default> Prim<T> {
    pub fn finish<A>(&mut self) -> PrimitiveArray<A>
    where
        A: ArrowPrimitiveType<Native = T>,
    {
        let (values, nulls) = self.take();
        PrimitiveArray::new(ScalarBuffer::from(values), nulls)
    }
}

/// Variable-length bytes (UTF-8 text: every caller validates before it pushes) with
/// validity, as Arrow lays them out: `offsets[i]..offsets[i + 1]` is row `i`.
pub struct Bytes {
    pub data: Vec<u8>,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
}

impl Bytes {
    pub fn new() -> Self {
        Bytes {
            data: Vec::new(),
            offsets: vec![0],
            nulls: NullBufferBuilder::new(0),
        }
    }

    /// Closes the value whose bytes were appended to `data` since the previous one.
    #[inline(always)]
    pub fn close(&mut self) {
        self.offsets.push(self.data.len() as i32);
        self.nulls.append_non_null();
    }

    #[inline]
    pub fn push(&mut self, s: &[u8]) {
        self.data.extend_from_slice(s);
        self.close();
    }

    #[inline]
    pub fn push_null(&mut self) {
        self.offsets.push(self.data.len() as i32);
        self.nulls.append_null();
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.offsets.truncate(len + 1);
            self.data.truncate(self.offsets[len] as usize);
            self.nulls.truncate(len);
        }
    }

    /// Drops bytes appended since the last closed value (a value rejected half-way).
    pub fn discard_open(&mut self) {
        let end = self.offsets.last().copied().unwrap_or(0) as usize;
        self.data.truncate(end);
    }

    fn take(&mut self) -> (OffsetBuffer<i32>, Buffer, Option<NullBuffer>) {
        let (ocap, dcap) = (self.offsets.len(), self.data.len());
        let mut offsets = std::mem::replace(&mut self.offsets, Vec::with_capacity(ocap));
        self.offsets.push(0);
        let data = std::mem::replace(&mut self.data, Vec::with_capacity(dcap));
        if offsets.is_empty() {
            offsets.push(0);
        }
        // Offsets start at 0 and never decrease: they are data lengths as values closed.
        (
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Buffer::from_vec(data),
            self.nulls.finish(),
        )
    }

    /// As a Utf8 array. Every push was UTF-8 checked, so Arrow's own check (one pass over
    /// the text, a few bytes a row) cannot fail; if it ever did, the text is kept lossily
    /// rather than the batch lost.
    pub fn finish_utf8(&mut self) -> StringArray {
        let (offsets, data, nulls) = self.take();
        match StringArray::try_new(offsets.clone(), data.clone(), nulls.clone()) {
            Ok(a) => a,
            Err(_) => offsets
                .windows(2)
                .enumerate()
                .map(|(i, w)| {
                    nulls.as_ref().is_none_or(|n| n.is_valid(i)).then(|| {
                        String::from_utf8_lossy(&data[w[0] as usize..w[1] as usize]).into_owned()
                    })
                })
                .collect(),
        }
    }

    pub fn finish_binary(&mut self) -> arrow::array::BinaryArray {
        let (offsets, data, nulls) = self.take();
        arrow::array::BinaryArray::new(offsets, data, nulls)
    }
}

/// List offsets with validity; the items live in a column of their own.
pub struct Lists {
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
}

impl Lists {
    fn new() -> Self {
        Lists {
            offsets: vec![0],
            nulls: NullBufferBuilder::new(0),
        }
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    #[inline]
    pub fn close(&mut self, items: usize) {
        self.offsets.push(items as i32);
        self.nulls.append_non_null();
    }

    fn push_null(&mut self, items: usize) {
        self.offsets.push(items as i32);
        self.nulls.append_null();
    }

    /// Cuts back to `len` lists; returns how many items they hold.
    fn truncate(&mut self, len: usize) -> usize {
        if len < self.len() {
            self.offsets.truncate(len + 1);
            self.nulls.truncate(len);
        }
        self.offsets[self.len()] as usize
    }

    fn take(&mut self) -> (OffsetBuffer<i32>, Option<NullBuffer>) {
        let cap = self.offsets.len();
        let offsets = std::mem::replace(&mut self.offsets, Vec::with_capacity(cap));
        self.offsets.push(0);
        (
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            self.nulls.finish(),
        )
    }
}

/// One payload field's column.
pub enum Col {
    F64(Prim<f64>),
    I64(Prim<i64>),
    Bool(Prim<bool>),
    Str(Bytes),
    ListText(Lists, Bytes),
    ListI64(Lists, Prim<i64>),
}

impl Col {
    pub fn new(kind: FieldKind) -> Self {
        match kind {
            FieldKind::F64 => Col::F64(Prim::new()),
            FieldKind::I64 => Col::I64(Prim::new()),
            FieldKind::Bool => Col::Bool(Prim::new()),
            FieldKind::Str | FieldKind::Text => Col::Str(Bytes::new()),
            FieldKind::ListText => Col::ListText(Lists::new(), Bytes::new()),
            FieldKind::ListI64 => Col::ListI64(Lists::new(), Prim::new()),
        }
    }

    #[inline]
    pub fn push_null(&mut self) {
        match self {
            Col::F64(p) => p.push_null(),
            Col::I64(p) => p.push_null(),
            Col::Bool(p) => p.push_null(),
            Col::Str(b) => b.push_null(),
            Col::ListText(l, items) => l.push_null(items.len()),
            Col::ListI64(l, items) => l.push_null(items.len()),
        }
    }

    /// Cuts the column back to `rows` values (and a list's items with it).
    pub fn truncate(&mut self, rows: usize) {
        match self {
            Col::F64(p) => p.truncate(rows),
            Col::I64(p) => p.truncate(rows),
            Col::Bool(p) => p.truncate(rows),
            Col::Str(b) => {
                b.truncate(rows);
                b.discard_open();
            }
            Col::ListText(l, items) => {
                let n = l.truncate(rows);
                items.truncate(n);
                items.discard_open();
            }
            Col::ListI64(l, items) => {
                let n = l.truncate(rows);
                items.truncate(n);
            }
        }
    }

    pub fn finish(&mut self) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            Col::F64(p) => Arc::new(p.finish::<Float64Type>()) as ArrayRef,
            Col::I64(p) => Arc::new(p.finish::<Int64Type>()),
            Col::Bool(p) => {
                let (values, nulls) = p.take();
                Arc::new(BooleanArray::new(BooleanBuffer::from(values), nulls))
            }
            Col::Str(b) => Arc::new(b.finish_utf8()),
            Col::ListText(l, items) => {
                let (offsets, nulls) = l.take();
                let values = Arc::new(items.finish_utf8());
                Arc::new(ListArray::try_new(
                    item_field(DataType::Utf8),
                    offsets,
                    values,
                    nulls,
                )?)
            }
            Col::ListI64(l, items) => {
                let (offsets, nulls) = l.take();
                let values: Int64Array = items.finish();
                Arc::new(ListArray::try_new(
                    item_field(DataType::Int64),
                    offsets,
                    Arc::new(values),
                    nulls,
                )?)
            }
        })
    }
}

/// The list item field as the schema declares it (`ListBuilder`'s default: "item",
/// nullable).
fn item_field(t: DataType) -> Arc<Field> {
    Arc::new(Field::new("item", t, true))
}
