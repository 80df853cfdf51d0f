//! The shared derived views every evaluation computes once and many rules read:
//!
//! - `samples`: vitals with burst duplicates removed (at most one sample per device per
//!   second: a client burst returns the same payload several times within 0.3 s and must
//!   never count as independent evidence, DOMAIN.md §3), epoch-ms time `t_ms`, the coil
//!   voltage of either firmware schema (`coil_v`), the highest output voltage (`out_v`), the
//!   previous and next sample's values, running numbers for plug-in sessions
//!   (`plug_no`) and contactor closures (`close_no`), and the sample's position `n`.
//! - `contactor_episodes`: one row per contactor closure (consecutive closed samples).
//! - `sessions`: one row per plug-in session (plug-in → unplug).
//! - `baselines`: per device, its own idle offsets, closed-coil level, grid level, source
//!   resistance and poll interval (`poll_ms`, the median gap between samples), so rules
//!   compare a unit with itself before fleet constants.
//!
//! Names here are part of the rule-writing interface (rules/README.md documents them).
//!
//! Every view is defined by its SQL here (what `rules check` plans against and what the
//! DuckDB comparison runs). `samples` is *computed* by [`samples`] instead: a sort, then one
//! linear pass for its window columns. DataFusion's window operators pay per partition, and
//! `samples` has one partition per device — 200,000 of them in a live evaluation of a big
//! fleet — while the pass costs the same per row whatever the partitioning. A test holds the
//! pass equal to the SQL.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, Int64Array, RecordBatch,
    UInt32Array, UInt64Array,
};
use arrow::compute::{interleave, take};
use arrow::datatypes::{Field, Int64Type, Schema};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

/// View names in the order they are built (each may read the ones before it).
pub const VIEWS: [(&str, &str); 4] = [
    ("samples", SAMPLES),
    ("contactor_episodes", CONTACTOR_EPISODES),
    ("sessions", SESSIONS),
    ("baselines", BASELINES),
];

/// The definition of `samples` (see [`samples`] for how it is computed).
const SAMPLES: &str = r#"
WITH base AS (
  SELECT device_id, ts, CAST(ts AS BIGINT) AS t_ms,
    contactor_closed, vehicle_connected, session_s, grid_v, grid_hz, vehicle_current_a,
    "currentA_a", "currentB_a", "currentC_a", "currentN_a",
    "voltageA_v", "voltageB_v", "voltageC_v",
    COALESCE(relay_coil_v, GREATEST(relay_k1_v, relay_k2_v)) AS coil_v,
    relay_k1_v, relay_k2_v,
    pcba_temp_c, handle_temp_c, mcu_temp_c, uptime_s, input_thermopile_uv, prox_v,
    pilot_high_v, pilot_low_v, session_energy_wh, config_status, evse_state,
    evse_not_ready_reasons, current_alerts,
    LAG(CAST(ts AS BIGINT)) OVER (PARTITION BY device_id ORDER BY ts) AS raw_prev_t_ms
  FROM vitals
),
d AS (
  -- The first sample of each second: a row whose predecessor fell in another second.
  -- (Partitioning by the second itself would make a million one-row partitions.)
  SELECT *,
    GREATEST(COALESCE("voltageA_v", 0.0), COALESCE("voltageB_v", 0.0), COALESCE("voltageC_v", 0.0)) AS out_v
  FROM base
  WHERE raw_prev_t_ms IS NULL OR t_ms / 1000 <> raw_prev_t_ms / 1000
),
l AS (
  SELECT d.*,
    LAG(contactor_closed) OVER (PARTITION BY device_id ORDER BY ts) AS prev_closed,
    LAG(vehicle_connected) OVER (PARTITION BY device_id ORDER BY ts) AS prev_connected,
    LAG(t_ms) OVER (PARTITION BY device_id ORDER BY ts) AS prev_t_ms,
    LAG(uptime_s) OVER (PARTITION BY device_id ORDER BY ts) AS prev_uptime_s,
    LAG(grid_v) OVER (PARTITION BY device_id ORDER BY ts) AS prev_grid_v,
    LAG(vehicle_current_a) OVER (PARTITION BY device_id ORDER BY ts) AS prev_current_a,
    LAG(evse_state) OVER (PARTITION BY device_id ORDER BY ts) AS prev_state,
    LEAD(t_ms) OVER (PARTITION BY device_id ORDER BY ts) AS next_t_ms,
    LEAD(contactor_closed) OVER (PARTITION BY device_id ORDER BY ts) AS next_closed
  FROM d
)
SELECT device_id, ts, t_ms,
  contactor_closed, vehicle_connected, session_s, grid_v, grid_hz, vehicle_current_a,
  "currentA_a", "currentB_a", "currentC_a", "currentN_a",
  "voltageA_v", "voltageB_v", "voltageC_v", coil_v, relay_k1_v, relay_k2_v,
  pcba_temp_c, handle_temp_c, mcu_temp_c, uptime_s, input_thermopile_uv, prox_v,
  pilot_high_v, pilot_low_v, session_energy_wh, config_status, evse_state,
  evse_not_ready_reasons, current_alerts, out_v,
  prev_closed, prev_connected, prev_t_ms, prev_uptime_s, prev_grid_v, prev_current_a,
  prev_state, next_t_ms, next_closed,
  SUM(CASE WHEN vehicle_connected AND NOT COALESCE(prev_connected, FALSE) THEN 1 ELSE 0 END)
    OVER (PARTITION BY device_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS plug_no,
  SUM(CASE WHEN contactor_closed AND NOT COALESCE(prev_closed, FALSE) THEN 1 ELSE 0 END)
    OVER (PARTITION BY device_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS close_no,
  COALESCE(uptime_s < prev_uptime_s, FALSE) AS rebooted,
  ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY ts) AS n
FROM l
"#;

const CONTACTOR_EPISODES: &str = r#"
SELECT device_id, close_no, MIN(plug_no) AS plug_no,
  MIN(ts) AS first_ts, MAX(ts) AS last_ts, MIN(t_ms) AS first_ms, MAX(t_ms) AS last_ms,
  MAX(t_ms) - MIN(t_ms) AS span_ms, COUNT(*) AS samples,
  MAX(vehicle_current_a) AS max_current_a,
  MIN(CASE WHEN vehicle_current_a >= 1.0 THEN t_ms END) - MIN(t_ms) AS ms_to_current,
  median(coil_v) AS coil_v, MIN(coil_v) AS min_coil_v,
  median(out_v) AS out_v, MIN(out_v) AS min_out_v, median(grid_v) AS grid_v,
  first_value(prev_grid_v ORDER BY t_ms) AS pre_grid_v,
  median(CASE WHEN vehicle_current_a >= 10.0 THEN grid_v END) AS loaded_grid_v,
  median(CASE WHEN vehicle_current_a >= 10.0 THEN vehicle_current_a END) AS loaded_current_a,
  last_value(vehicle_current_a ORDER BY t_ms) AS last_current_a,
  last_value(next_t_ms ORDER BY t_ms) AS opened_ms,
  MAX(session_energy_wh) - MIN(session_energy_wh) AS energy_wh,
  (first_value(prev_grid_v ORDER BY t_ms) - median(CASE WHEN vehicle_current_a >= 10.0 THEN grid_v END))
    / median(CASE WHEN vehicle_current_a >= 10.0 THEN vehicle_current_a END) AS r_source_ohm
FROM samples
WHERE contactor_closed
GROUP BY device_id, close_no
"#;

const SESSIONS: &str = r#"
SELECT device_id, plug_no,
  MIN(ts) AS first_ts, MAX(ts) AS last_ts, MIN(t_ms) AS first_ms, MAX(t_ms) AS last_ms,
  MAX(t_ms) - MIN(t_ms) AS span_ms, COUNT(*) AS samples,
  COALESCE(MAX(session_energy_wh), 0.0) AS energy_wh,
  COALESCE(MAX(vehicle_current_a), 0.0) AS max_current_a,
  COUNT(DISTINCT CASE WHEN contactor_closed THEN close_no END) AS closures,
  SUM(CASE WHEN contactor_closed THEN 1 ELSE 0 END) AS closed_samples,
  last_value(next_t_ms ORDER BY t_ms) AS unplug_ms,
  CASE
    WHEN last_value(next_t_ms ORDER BY t_ms) IS NULL THEN 'ongoing'
    WHEN COALESCE(MAX(session_energy_wh), 0.0) > 0.0 THEN 'unplugged_after_charge'
    WHEN COUNT(DISTINCT CASE WHEN contactor_closed THEN close_no END) > 0 THEN 'unplugged_no_energy'
    ELSE 'unplugged_never_started'
  END AS ended
FROM samples
WHERE vehicle_connected AND plug_no > 0
GROUP BY device_id, plug_no
"#;

const BASELINES: &str = r#"
WITH s AS (
  SELECT device_id,
    COUNT(*) AS samples, MIN(ts) AS first_ts, MAX(ts) AS last_ts, MAX(t_ms) AS last_ms,
    median(CASE WHEN NOT contactor_closed AND NOT vehicle_connected THEN "voltageB_v" END) AS idle_vb_v,
    median(CASE WHEN NOT contactor_closed AND NOT vehicle_connected THEN "currentB_a" END) AS idle_ib_a,
    median(CASE WHEN NOT contactor_closed THEN vehicle_current_a END) AS idle_current_a,
    median(CASE WHEN contactor_closed AND coil_v > 1.0 THEN coil_v END) AS coil_closed_v,
    median(CASE WHEN NOT contactor_closed THEN grid_v END) AS idle_grid_v,
    median(grid_hz) AS grid_hz,
    median(CASE WHEN NOT contactor_closed AND NOT vehicle_connected THEN input_thermopile_uv END) AS idle_thermopile_uv,
    median(t_ms - prev_t_ms) AS poll_ms
  FROM samples GROUP BY device_id
),
e AS (
  SELECT device_id, median(r_source_ohm) AS r_source_ohm, COUNT(*) AS closures
  FROM contactor_episodes GROUP BY device_id
)
SELECT s.*, e.r_source_ohm, COALESCE(e.closures, 0) AS closures
FROM s LEFT JOIN e ON s.device_id = e.device_id
"#;

/// `samples` before burst de-duplication and its window columns: the per-row columns, then
/// the receive time (a sort key, not output). Keep the column list in step with `SAMPLES`.
const SAMPLES_BASE: &str = r#"
SELECT device_id, ts, CAST(ts AS BIGINT) AS t_ms,
  contactor_closed, vehicle_connected, session_s, grid_v, grid_hz, vehicle_current_a,
  "currentA_a", "currentB_a", "currentC_a", "currentN_a",
  "voltageA_v", "voltageB_v", "voltageC_v",
  COALESCE(relay_coil_v, GREATEST(relay_k1_v, relay_k2_v)) AS coil_v,
  relay_k1_v, relay_k2_v,
  pcba_temp_c, handle_temp_c, mcu_temp_c, uptime_s, input_thermopile_uv, prox_v,
  pilot_high_v, pilot_low_v, session_energy_wh, config_status, evse_state,
  evse_not_ready_reasons, current_alerts,
  GREATEST(COALESCE("voltageA_v", 0.0), COALESCE("voltageB_v", 0.0), COALESCE("voltageC_v", 0.0)) AS out_v,
  CAST(received_at AS BIGINT) AS received_ms
FROM vitals
"#;

/// The `samples` view's SQL (its definition).
pub fn samples_sql() -> &'static str {
    SAMPLES
}

/// Computes `samples` over the session's `vitals`: rows sorted by (device_id, ts), in
/// batches of the session's batch size. Equal to running `SAMPLES`, row for row (of two
/// samples of one device in the same millisecond, the one received first is kept).
///
/// DataFusion computes the per-row columns (in parallel); the order is decided here on
/// integer keys and every kept row is gathered once, straight into its sorted place — a
/// general sort of ~35 columns, then a concatenation, cost several times more.
pub async fn samples(ctx: &SessionContext) -> Result<Vec<RecordBatch>, DataFusionError> {
    let df = ctx.sql(SAMPLES_BASE).await?;
    let schema = df.schema().inner().clone();
    let batches = df.collect().await?;
    let Kept {
        rows: order,
        devices,
    } = sorted_first_per_second(&batches)?;
    // Gather every output column (all but the receive time) in that order, on two
    // threads: the gathers read memory at random and dominate the view's time.
    let out_cols = schema.fields().len() - 1;
    let gather = |c: usize| -> Result<ArrayRef, DataFusionError> {
        let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
        Ok(if parts.is_empty() {
            arrow::array::new_empty_array(schema.field(c).data_type())
        } else {
            interleave(&parts, &order)?
        })
    };
    let (even, odd) = std::thread::scope(|scope| {
        let odd = scope.spawn(|| (1..out_cols).step_by(2).map(gather).collect::<Vec<_>>());
        let even: Vec<_> = (0..out_cols).step_by(2).map(gather).collect();
        (even, odd.join())
    });
    let odd = odd.map_err(|_| DataFusionError::Internal("samples: a gather panicked".into()))?;
    let (mut even, mut odd) = (even.into_iter(), odd.into_iter());
    let columns = (0..out_cols)
        .map(|c| if c % 2 == 0 { even.next() } else { odd.next() })
        .map(|c| c.unwrap_or_else(|| Err(DataFusionError::Internal("samples: column lost".into()))))
        .collect::<Result<Vec<_>, _>>()?;
    let fields: Vec<Arc<Field>> = schema.fields().iter().take(out_cols).cloned().collect();
    let base = RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(order.len())),
    )?;
    let out = window_columns(&base, &devices)?;
    let size = ctx.state().config().batch_size().max(1);
    Ok((0..out.num_rows())
        .step_by(size)
        .map(|at| out.slice(at, size.min(out.num_rows() - at)))
        .collect())
}

/// The rows `samples` keeps, in output order.
struct Kept {
    /// (batch, row) of each kept row.
    rows: Vec<(usize, usize)>,
    /// Each device's range of `rows`.
    devices: Vec<Range<usize>>,
}

/// Sorts the rows by device, event time and receive time, and keeps the first sample of each
/// second: a row whose predecessor of the same device fell in another second (a burst
/// returns one reading several times within 0.3 s, DOMAIN.md §3).
fn sorted_first_per_second(batches: &[RecordBatch]) -> Result<Kept, DataFusionError> {
    // Devices ranked by id, so the sort runs on integers.
    let mut names: Vec<&str> = Vec::new();
    let mut seen: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    let mut keys: Vec<(u32, i64, i64, u32, u32)> = Vec::new();
    for (bi, b) in batches.iter().enumerate() {
        let ids = b
            .column(0)
            .as_string_opt::<i32>()
            .ok_or_else(|| DataFusionError::Internal("samples: device_id is not Utf8".into()))?;
        let t = int64(b, "t_ms")?;
        let recv = int64(b, "received_ms")?;
        for r in 0..b.num_rows() {
            if ids.is_null(r) || t.is_null(r) {
                continue; // not stored: ingest never writes a vitals row without them
            }
            let id = ids.value(r);
            let next = names.len() as u32;
            let dev = *seen.entry(id).or_insert_with(|| {
                names.push(id);
                next
            });
            keys.push((dev, t.value(r), recv.value(r), bi as u32, r as u32));
        }
    }
    let mut rank = vec![0u32; names.len()];
    let mut by_name: Vec<u32> = (0..names.len() as u32).collect();
    by_name.sort_unstable_by_key(|&d| names[d as usize]);
    for (i, d) in by_name.iter().enumerate() {
        rank[*d as usize] = i as u32;
    }
    for k in &mut keys {
        k.0 = rank[k.0 as usize];
    }
    keys.sort_unstable();
    let mut order = Vec::with_capacity(keys.len());
    let mut devices = Vec::with_capacity(names.len());
    let mut start = 0;
    for (i, k) in keys.iter().enumerate() {
        let new_device = i == 0 || keys[i - 1].0 != k.0;
        if new_device && i > 0 {
            devices.push(start..order.len());
            start = order.len();
        }
        if new_device || keys[i - 1].1 / 1000 != k.1 / 1000 {
            order.push((k.3 as usize, k.4 as usize));
        }
    }
    if !keys.is_empty() {
        devices.push(start..order.len());
    }
    Ok(Kept {
        rows: order,
        devices,
    })
}

/// The window columns of `samples` over `s` (de-duplicated, sorted rows; `devices` holds
/// each device's range of rows).
fn window_columns(
    s: &RecordBatch,
    devices: &[Range<usize>],
) -> Result<RecordBatch, DataFusionError> {
    let len = s.num_rows();
    // Row i's predecessor and successor within its device, as `take` indices.
    let mut prev = Vec::with_capacity(len);
    let mut next = Vec::with_capacity(len);
    for r in devices {
        for i in r.clone() {
            prev.push((i > r.start).then(|| (i - 1) as u32));
            next.push((i + 1 < r.end).then(|| (i + 1) as u32));
        }
    }
    let (prev, next) = (UInt32Array::from(prev), UInt32Array::from(next));
    let column = |name: &str| {
        s.column_by_name(name)
            .cloned()
            .ok_or_else(|| DataFusionError::Internal(format!("samples: no column {name}")))
    };
    let shifted = |name: &str, by: &UInt32Array| -> Result<ArrayRef, DataFusionError> {
        Ok(take(column(name)?.as_ref(), by, None)?)
    };
    let mistyped = |name: &str| DataFusionError::Internal(format!("samples: {name} mistyped"));
    let (connected, closed) = (column("vehicle_connected")?, column("contactor_closed")?);
    let connected = connected
        .as_boolean_opt()
        .ok_or_else(|| mistyped("vehicle_connected"))?;
    let closed = closed
        .as_boolean_opt()
        .ok_or_else(|| mistyped("contactor_closed"))?;
    let uptime = column("uptime_s")?;
    let uptime = uptime
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| mistyped("uptime_s"))?;
    // A rising edge: true here, and not true just before (SQL: `x AND NOT COALESCE(prev, FALSE)`).
    let rose = |a: &BooleanArray, i: usize, start: usize| {
        a.is_valid(i) && a.value(i) && !(i > start && a.is_valid(i - 1) && a.value(i - 1))
    };
    let mut plug_no = Vec::with_capacity(len);
    let mut close_no = Vec::with_capacity(len);
    let mut rebooted = BooleanBufferBuilder::new(len);
    let mut row_no = Vec::with_capacity(len);
    for r in devices {
        let (mut plugs, mut closes) = (0i64, 0i64);
        for i in r.clone() {
            plugs += i64::from(rose(connected, i, r.start));
            closes += i64::from(rose(closed, i, r.start));
            plug_no.push(plugs);
            close_no.push(closes);
            rebooted.append(
                i > r.start
                    && uptime.is_valid(i)
                    && uptime.is_valid(i - 1)
                    && uptime.value(i) < uptime.value(i - 1),
            );
            row_no.push((i - r.start + 1) as u64);
        }
    }

    let mut fields: Vec<Arc<Field>> = s.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = s.columns().to_vec();
    let mut add = |name: &str, array: ArrayRef| {
        fields.push(Arc::new(Field::new(name, array.data_type().clone(), true)));
        columns.push(array);
    };
    for (name, of, by) in [
        ("prev_closed", "contactor_closed", &prev),
        ("prev_connected", "vehicle_connected", &prev),
        ("prev_t_ms", "t_ms", &prev),
        ("prev_uptime_s", "uptime_s", &prev),
        ("prev_grid_v", "grid_v", &prev),
        ("prev_current_a", "vehicle_current_a", &prev),
        ("prev_state", "evse_state", &prev),
        ("next_t_ms", "t_ms", &next),
        ("next_closed", "contactor_closed", &next),
    ] {
        add(name, shifted(of, by)?);
    }
    add("plug_no", Arc::new(Int64Array::from(plug_no)));
    add("close_no", Arc::new(Int64Array::from(close_no)));
    add(
        "rebooted",
        Arc::new(BooleanArray::new(rebooted.finish(), None)),
    );
    add("n", Arc::new(UInt64Array::from(row_no)));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

fn int64<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a Int64Array, DataFusionError> {
    b.column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| DataFusionError::Internal(format!("samples: {name} is not Int64")))
}
