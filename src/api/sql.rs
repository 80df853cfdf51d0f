//! `POST /api/v1/sql`: the CLI's read-only SQL over HTTP, with a row cap, a memory pool, a
//! timeout and the concurrency caps of [`super::App::run`]; JSON or Arrow IPC out.
//!
//! Every statement is planned and checked (`query::plan_readonly`) before anything runs: a
//! refused one answers 400 and bumps `wallscope_sql_rejected_total`; nothing it names is
//! opened, since planning against our catalog resolves only registered tables (URL tables
//! are off).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, App, Caller};

/// Result bytes a JSON answer may carry before it is cut (the row cap usually comes first).
const MAX_RESULT_BYTES: usize = 64 << 20;

pub(crate) async fn handler(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let v: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::param(
            "body",
            format!("must be JSON like {{\"sql\": \"SELECT 1\"}}: {e}"),
        )
    })?;
    let Some(o) = v.as_object() else {
        return Err(ApiError::param("body", "must be a JSON object"));
    };
    for k in o.keys() {
        if !["sql", "format", "limit"].contains(&k.as_str()) {
            return Err(ApiError::param(
                k,
                "unknown field; the body takes sql, format, limit",
            ));
        }
    }
    let sql = match o.get("sql") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => return Err(ApiError::param("sql", "required: the query text")),
    };
    let arrow_out = match o.get("format").and_then(Value::as_str) {
        None | Some("json") => false,
        Some("arrow") => true,
        Some(f) => {
            return Err(ApiError::param(
                "format",
                format!("{f:?}: use json or arrow"),
            ));
        }
    };
    if o.get("format").is_some_and(|f| !f.is_string()) {
        return Err(ApiError::param("format", "must be a string"));
    }
    let cap = app.limits.sql_row_limit;
    let limit = match o.get("limit") {
        None => cap,
        Some(l) => match l.as_u64() {
            Some(n) if n >= 1 && n as usize <= cap => n as usize,
            _ => {
                return Err(ApiError::param(
                    "limit",
                    format!("a whole number from 1 to {cap}"),
                ));
            }
        },
    };
    let a = app.clone();
    let started = std::time::Instant::now();
    // Encoding runs inside the query task too, so the slots bound its memory as well.
    let r = app
        .run(&caller, async move {
            let snap = a.snapshot()?;
            let ctx = a.user_session(&snap)?;
            let r = crate::query::run_limited(&ctx, &sql, limit, MAX_RESULT_BYTES).await?;
            encode(r, arrow_out, started)
        })
        .await;
    match r {
        Ok(resp) => {
            app.metrics.sql_ok.inc();
            Ok(resp)
        }
        Err(e) => {
            if matches!(&e, ApiError::BadParam { message, .. } if message.starts_with("refused")) {
                app.metrics.sql_rejected.inc();
                tracing::info!(caller = %caller.name, "SQL refused: {e}");
            } else {
                app.metrics.sql_failed.inc();
            }
            Err(e)
        }
    }
}

/// The answer: Arrow IPC stream, or JSON with the columns, rows and whether they were cut.
fn encode(
    r: crate::query::Limited,
    arrow_out: bool,
    started: std::time::Instant,
) -> Result<Response, ApiError> {
    let internal = |e: arrow::error::ArrowError| ApiError::Internal(e.to_string());
    if arrow_out {
        let schema = match r.batches.first() {
            Some(b) => b.schema(),
            None => Arc::new(arrow::datatypes::Schema::empty()),
        };
        let mut buf = Vec::new();
        {
            let mut w =
                arrow::ipc::writer::StreamWriter::try_new(&mut buf, &schema).map_err(internal)?;
            for b in &r.batches {
                w.write(b).map_err(internal)?;
            }
            w.finish().map_err(internal)?;
        }
        return Ok((
            [
                (
                    header::CONTENT_TYPE,
                    "application/vnd.apache.arrow.stream".to_string(),
                ),
                (
                    header::HeaderName::from_static("x-wallscope-truncated"),
                    r.truncated.to_string(),
                ),
            ],
            buf,
        )
            .into_response());
    }
    let columns: Vec<Value> = r
        .batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
                .collect()
        })
        .unwrap_or_default();
    // The rows as arrow's JSON writer prints them, spliced in as they are (no second parse).
    let mut rows = Vec::new();
    {
        let mut w = arrow::json::ArrayWriter::new(&mut rows);
        let refs: Vec<&arrow::array::RecordBatch> = r.batches.iter().collect();
        w.write_batches(&refs).map_err(internal)?;
        w.finish().map_err(internal)?;
    }
    if rows.is_empty() {
        rows.extend_from_slice(b"[]");
    }
    let head = json!({
        "columns": columns,
        "row_count": r.rows,
        "truncated": r.truncated,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    })
    .to_string();
    // `{"columns":…,"row_count":…,…}` + `,"rows":[…]}`
    let mut body = Vec::with_capacity(head.len() + rows.len() + 10);
    body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    body.extend_from_slice(b",\"rows\":");
    body.extend_from_slice(&rows);
    body.push(b'}');
    Ok((
        [(header::CONTENT_TYPE, "application/json".to_string())],
        body,
    )
        .into_response())
}
