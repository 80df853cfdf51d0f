//! Reading a result column as plain Rust values, whatever numeric or text type DataFusion
//! chose for it (a cast first; the handlers only need i64, f64 or text).

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};

use super::ApiError;

fn cast(b: &RecordBatch, i: usize, to: &DataType) -> Result<arrow::array::ArrayRef, ApiError> {
    arrow::compute::cast(b.column(i), to).map_err(|e| ApiError::Internal(e.to_string()))
}

pub(crate) fn i64s(b: &RecordBatch, i: usize) -> Result<Vec<Option<i64>>, ApiError> {
    Ok(cast(b, i, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .iter()
        .collect())
}

pub(crate) fn f64s(b: &RecordBatch, i: usize) -> Result<Vec<Option<f64>>, ApiError> {
    Ok(cast(b, i, &DataType::Float64)?
        .as_primitive::<Float64Type>()
        .iter()
        .collect())
}

pub(crate) fn strings(b: &RecordBatch, i: usize) -> Result<Vec<Option<String>>, ApiError> {
    Ok(cast(b, i, &DataType::Utf8)?
        .as_string::<i32>()
        .iter()
        .map(|v| v.map(String::from))
        .collect())
}
