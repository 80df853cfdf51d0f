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
//! - `baselines`: per device, its own idle offsets, closed-coil level, grid level and
//!   source resistance, so rules compare a unit with itself before fleet constants.
//!
//! Names here are part of the rule-writing interface (rules/README.md documents them).

/// View names in the order they are built (each may read the ones before it).
pub const VIEWS: [(&str, &str); 4] = [
    ("samples", SAMPLES),
    ("contactor_episodes", CONTACTOR_EPISODES),
    ("sessions", SESSIONS),
    ("baselines", BASELINES),
];

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
    median(CASE WHEN NOT contactor_closed AND NOT vehicle_connected THEN input_thermopile_uv END) AS idle_thermopile_uv
  FROM samples GROUP BY device_id
),
e AS (
  SELECT device_id, median(r_source_ohm) AS r_source_ohm, COUNT(*) AS closures
  FROM contactor_episodes GROUP BY device_id
)
SELECT s.*, e.r_source_ohm, COALESCE(e.closures, 0) AS closures
FROM s LEFT JOIN e ON s.device_id = e.device_id
"#;
