//! Domain types and Arrow schemas: the shape of every stored row.
//!
//! Owns the table list, the payload field catalogue of each Wall Connector endpoint
//! (`/api/1/vitals`, `/lifetime`, `/wifi_status`, `/version`), and the Arrow schema each table
//! is stored with. Knows nothing internal. Every row of every telemetry table starts with the
//! same five columns (`device_id`, `ts`, `received_at`, `seq`, `payload_hash`) and ends with
//! `extra` (unknown payload fields as a JSON object, kept so new firmware fields are never lost).
//! Every payload field is nullable: fields vary by firmware (DOMAIN.md §2.1).

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// The stored tables that ingest writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Vitals,
    Lifetime,
    Wifi,
    Version,
    DeadLetters,
}

impl Table {
    /// Every ingest table, in a fixed order (used as an index).
    pub const ALL: [Table; 5] = [
        Table::Vitals,
        Table::Lifetime,
        Table::Wifi,
        Table::Version,
        Table::DeadLetters,
    ];
    /// The telemetry tables (payload kinds).
    pub const TELEMETRY: [Table; 4] = [Table::Vitals, Table::Lifetime, Table::Wifi, Table::Version];

    pub fn name(self) -> &'static str {
        match self {
            Table::Vitals => "vitals",
            Table::Lifetime => "lifetime",
            Table::Wifi => "wifi",
            Table::Version => "version",
            Table::DeadLetters => "dead_letters",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The table a topic's kind segment maps to (`wc/{device}/{kind}`).
    pub fn from_kind(kind: &str) -> Option<Table> {
        match kind {
            "vitals" => Some(Table::Vitals),
            "lifetime" => Some(Table::Lifetime),
            "wifi_status" | "wifi" => Some(Table::Wifi),
            "version" => Some(Table::Version),
            _ => None,
        }
    }

    /// The topic kind segment a bridge publishes this table's payloads under.
    pub fn kind(self) -> &'static str {
        match self {
            Table::Wifi => "wifi_status",
            t => t.name(),
        }
    }

    /// Payload fields of a telemetry table (empty for dead letters).
    pub fn fields(self) -> &'static [FieldSpec] {
        match self {
            Table::Vitals => VITALS,
            Table::Lifetime => LIFETIME,
            Table::Wifi => WIFI,
            Table::Version => VERSION,
            Table::DeadLetters => &[],
        }
    }

    pub fn schema(self) -> SchemaRef {
        SCHEMAS[self.index()].clone()
    }
}

/// How a payload field is typed and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Any JSON number → Float64.
    F64,
    /// An integral JSON number → Int64 (`5.0` accepted, `5.5` is a wrong type).
    I64,
    Bool,
    /// A JSON string → Utf8.
    Str,
    /// A JSON string or number, stored as its text (fields whose type varies by firmware).
    Text,
    /// An array of strings or numbers, stored as text elements.
    ListText,
    /// An array of integers.
    ListI64,
}

#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    pub name: &'static str,
    pub kind: FieldKind,
}

const fn f(name: &'static str, kind: FieldKind) -> FieldSpec {
    FieldSpec { name, kind }
}

use FieldKind::*;

/// `/api/1/vitals`, in the order the firmware serves them (the decoder predicts this order).
pub static VITALS: &[FieldSpec] = &[
    f("contactor_closed", Bool),
    f("vehicle_connected", Bool),
    f("session_s", I64),
    f("grid_v", F64),
    f("grid_hz", F64),
    f("vehicle_current_a", F64),
    f("currentA_a", F64),
    f("currentB_a", F64),
    f("currentC_a", F64),
    f("currentN_a", F64),
    f("voltageA_v", F64),
    f("voltageB_v", F64),
    f("voltageC_v", F64),
    f("relay_coil_v", F64),
    f("relay_k1_v", F64),
    f("relay_k2_v", F64),
    f("pcba_temp_c", F64),
    f("handle_temp_c", F64),
    f("mcu_temp_c", F64),
    f("uptime_s", I64),
    f("input_thermopile_uv", I64),
    f("prox_v", F64),
    f("pilot_high_v", F64),
    f("pilot_low_v", F64),
    f("session_energy_wh", F64),
    f("config_status", I64),
    f("evse_state", I64),
    f("current_alerts", ListText),
    f("evse_not_ready_reasons", ListI64),
];

/// `/api/1/lifetime` (cumulative since manufacture).
pub static LIFETIME: &[FieldSpec] = &[
    f("contactor_cycles", I64),
    f("contactor_cycles_loaded", I64),
    f("alert_count", I64),
    f("thermal_foldbacks", I64),
    f("avg_startup_temp", F64),
    f("charge_starts", I64),
    f("energy_wh", F64),
    f("connector_cycles", I64),
    f("uptime_s", I64),
    f("charging_time_s", I64),
];

/// `/api/1/wifi_status` (`wifi_ssid` is base64 as served).
pub static WIFI: &[FieldSpec] = &[
    f("wifi_ssid", Str),
    f("wifi_signal_strength", F64),
    f("wifi_rssi", F64),
    f("wifi_snr", F64),
    f("wifi_connected", Bool),
    f("wifi_infra_ip", Str),
    f("internet", Bool),
    f("wifi_mac", Str),
];

/// `/api/1/version`.
pub static VERSION: &[FieldSpec] = &[
    f("firmware_version", Str),
    f("git_branch", Str),
    f("part_number", Str),
    f("serial_number", Str),
    f("web_service", Str),
    f("IEEE1547CombinedComplianceCrc", Text),
    f("IEEE1547RideThruMomentaryCessationCrc", Text),
    f("IEEE1547VfTripsCrc", Text),
];

/// Columns every telemetry row starts with.
pub const COL_DEVICE_ID: &str = "device_id";
pub const COL_TS: &str = "ts";
pub const COL_RECEIVED_AT: &str = "received_at";
pub const COL_SEQ: &str = "seq";
/// xxh3 of the payload bytes, set only for raw (envelope-less) payloads received live: their
/// `ts` is the receive time, which a redelivery changes, so the content is their identity.
pub const COL_PAYLOAD_HASH: &str = "payload_hash";
pub const COL_EXTRA: &str = "extra";
/// Number of leading columns shared by every table.
pub const PREFIX_COLS: usize = 5;

pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn field_type(kind: FieldKind) -> DataType {
    match kind {
        F64 => DataType::Float64,
        I64 => DataType::Int64,
        Bool => DataType::Boolean,
        Str | Text => DataType::Utf8,
        ListText => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        ListI64 => DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
    }
}

fn prefix_fields(device_nullable: bool) -> Vec<Field> {
    vec![
        Field::new(COL_DEVICE_ID, DataType::Utf8, device_nullable),
        Field::new(COL_TS, ts_type(), false),
        Field::new(COL_RECEIVED_AT, ts_type(), false),
        Field::new(COL_SEQ, DataType::UInt64, true),
        Field::new(COL_PAYLOAD_HASH, DataType::UInt64, true),
    ]
}

fn build_schema(t: Table) -> SchemaRef {
    let mut fields = prefix_fields(t == Table::DeadLetters);
    if t == Table::DeadLetters {
        fields.extend([
            Field::new("topic", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, true),
            Field::new("error_class", DataType::Utf8, false),
            Field::new("error_text", DataType::Utf8, false),
            Field::new("payload_bytes", DataType::UInt64, false),
            Field::new("payload", DataType::Binary, false),
        ]);
    } else {
        fields.extend(
            t.fields()
                .iter()
                .map(|s| Field::new(s.name, field_type(s.kind), true)),
        );
        fields.push(Field::new(COL_EXTRA, DataType::Utf8, true));
    }
    Arc::new(Schema::new(fields))
}

static SCHEMAS: LazyLock<Vec<SchemaRef>> =
    LazyLock::new(|| Table::ALL.iter().map(|t| build_schema(*t)).collect());

/// The rule layer's output table: one row per fault episode (rules/findings.rs writes it).
pub const FINDINGS_TABLE: &str = "findings";
/// Where the findings live inside a data directory.
pub const FINDINGS_FILE: &str = "findings/findings.parquet";

/// `findings`: rule, fault, device, the evidence's time span, severity, evidence values
/// (a JSON object) and the ordered steps (a JSON array of `{"who", "text"}`).
pub fn findings_schema() -> SchemaRef {
    FINDINGS_SCHEMA.clone()
}

static FINDINGS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("rule", DataType::Utf8, false),
        Field::new("fault", DataType::Utf8, false),
        Field::new(COL_DEVICE_ID, DataType::Utf8, false),
        Field::new("first_ts", ts_type(), false),
        Field::new("last_ts", ts_type(), false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("class", DataType::Utf8, false),
        Field::new("owner", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, false),
        Field::new("summary", DataType::Utf8, false),
        Field::new("evidence", DataType::Utf8, false),
        Field::new("steps", DataType::Utf8, false),
        // Event time of the evaluation that first reported the episode.
        Field::new("detected_at", ts_type(), false),
    ]))
});

/// The alert layer's table: one row per lifecycle transition (src/alerts writes it).
pub const ALERTS_TABLE: &str = "alerts";
/// Where the alert transitions live inside a data directory.
pub const ALERTS_FILE: &str = "alerts/alerts.parquet";
/// Operator actions (acks, silences): an append-only JSON Lines log the CLI and the API
/// write while `run` reads it, so neither rewrites the other's file.
pub const ALERT_ACTIONS_FILE: &str = "alerts/actions.jsonl";
/// The `alert_actions` table (the actions log as rows).
pub const ALERT_ACTIONS_TABLE: &str = "alert_actions";

/// `alerts`: one row per transition of one alert (pending, firing, resolved, cancelled).
/// An alert is keyed by (rule, key): a fault rule's key is the device id, a trend rule's the
/// cohort it names (`site=S0042`, `firmware_version=25.2.1`, or a device id). `at` and
/// `started_at` are event time, so a replay gives the same rows; `notification_id` and
/// `recorded_at` say when and in which notification the engine sent it (wall clock).
pub fn alerts_schema() -> SchemaRef {
    ALERTS_SCHEMA.clone()
}

static ALERTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("rule", DataType::Utf8, false),
        // `fault` (a fault rule over findings) or `trend` (rules/trends/).
        Field::new("kind", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new(COL_DEVICE_ID, DataType::Utf8, true),
        Field::new("fault", DataType::Utf8, true),
        Field::new("state", DataType::Utf8, false),
        Field::new("at", ts_type(), false),
        Field::new("started_at", ts_type(), false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("owner", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, false),
        Field::new("summary", DataType::Utf8, false),
        // Labels (site, installer, firmware_version, …) as a JSON object: grouping and
        // inhibition match on them.
        Field::new("labels", DataType::Utf8, false),
        Field::new("evidence", DataType::Utf8, false),
        Field::new("steps", DataType::Utf8, false),
        // The firing alert that inhibits this one, or the silence that mutes it.
        Field::new("inhibited_by", DataType::Utf8, true),
        Field::new("silenced_by", DataType::Utf8, true),
        // Null while the transition waits for its group (or when nothing is sent for it).
        Field::new("notification_id", DataType::Utf8, true),
        Field::new("recorded_at", ts_type(), false),
    ]))
});

/// The device registry's table name.
pub const DEVICES_TABLE: &str = "devices";
/// A registry a data directory may hold (loaded when `--devices` is not given).
pub const DEVICES_FILE: &str = "devices.csv";

/// `devices`: installation facts the charger's API does not expose (DOMAIN.md §2.6).
pub fn devices_schema() -> SchemaRef {
    DEVICES_SCHEMA.clone()
}

static DEVICES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new(COL_DEVICE_ID, DataType::Utf8, false),
        Field::new("service_type", DataType::Utf8, true),
        Field::new("breaker_a", DataType::Float64, true),
        Field::new("max_current_a", DataType::Float64, true),
        Field::new("part_number", DataType::Utf8, true),
        Field::new("site", DataType::Utf8, true),
        Field::new("installer", DataType::Utf8, true),
        Field::new("commissioned_at", DataType::Utf8, true),
        Field::new("firmware_version", DataType::Utf8, true),
    ]))
});

/// Why a message went to `dead_letters` — a closed set so metrics stay low-cardinality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorClass {
    BadTopic,
    Oversized,
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    TooDeep,
    WrongType,
    BadEnvelope,
    TsOutOfWindow,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 9] = [
        ErrorClass::BadTopic,
        ErrorClass::Oversized,
        ErrorClass::InvalidUtf8,
        ErrorClass::InvalidJson,
        ErrorClass::NotAnObject,
        ErrorClass::TooDeep,
        ErrorClass::WrongType,
        ErrorClass::BadEnvelope,
        ErrorClass::TsOutOfWindow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::BadTopic => "bad_topic",
            ErrorClass::Oversized => "oversized",
            ErrorClass::InvalidUtf8 => "invalid_utf8",
            ErrorClass::InvalidJson => "invalid_json",
            ErrorClass::NotAnObject => "not_an_object",
            ErrorClass::TooDeep => "too_deep",
            ErrorClass::WrongType => "wrong_type",
            ErrorClass::BadEnvelope => "bad_envelope",
            ErrorClass::TsOutOfWindow => "ts_out_of_window",
        }
    }
}

/// One MQTT message (or one line of a log or capture) on its way into the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    /// When the message reached us (or the receive time a log or capture recorded), epoch ms.
    pub received_at_ms: i64,
    /// True when `received_at_ms` comes from a file (a log line or a capture) and is therefore
    /// stable across re-imports; false for a live receive, whose time a redelivery changes.
    pub recorded: bool,
}

/// Parsed `wc/{device_id}/{kind}` topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic<'a> {
    pub device_id: &'a str,
    pub table: Table,
}

/// Longest device id accepted from a topic.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// Parses a topic of the form `<prefix>/<device_id>/<kind>`: exactly three levels, a device id
/// of 1–128 characters from `[A-Za-z0-9_.:-]`, and a known kind.
pub fn parse_topic(topic: &str) -> Result<Topic<'_>, String> {
    let mut parts = topic.split('/');
    let (Some(_prefix), Some(device_id), Some(kind), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "topic {:?} is not of the form wc/<device_id>/<kind>",
            truncate_for_display(topic, 80)
        ));
    };
    if device_id.is_empty()
        || device_id.len() > MAX_DEVICE_ID_LEN
        || !device_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(format!(
            "device id {:?} must be 1–{MAX_DEVICE_ID_LEN} characters of A-Z a-z 0-9 _ - . :",
            truncate_for_display(device_id, 80)
        ));
    }
    let table = Table::from_kind(kind).ok_or_else(|| {
        format!(
            "unknown payload kind {:?} (expected vitals, lifetime, wifi_status or version)",
            truncate_for_display(kind, 40)
        )
    })?;
    Ok(Topic { device_id, table })
}

/// Cuts a string for an error message without splitting a character.
pub fn truncate_for_display(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_share_the_prefix() {
        for t in Table::ALL {
            let s = t.schema();
            let names: Vec<_> = s
                .fields()
                .iter()
                .take(PREFIX_COLS)
                .map(|f| f.name().as_str())
                .collect();
            assert_eq!(
                names,
                [
                    COL_DEVICE_ID,
                    COL_TS,
                    COL_RECEIVED_AT,
                    COL_SEQ,
                    COL_PAYLOAD_HASH
                ]
            );
        }
        assert_eq!(
            Table::Vitals.schema().fields().len(),
            PREFIX_COLS + VITALS.len() + 1
        );
    }

    #[test]
    fn topics() {
        let t = parse_topic("wc/home/vitals").unwrap();
        assert_eq!((t.device_id, t.table), ("home", Table::Vitals));
        assert_eq!(
            parse_topic("wc/a-1/wifi_status").unwrap().table,
            Table::Wifi
        );
        for bad in [
            "wc/home",
            "wc/home/vitals/x",
            "wc//vitals",
            "wc/ho me/vitals",
            "wc/x/nope",
            "",
        ] {
            assert!(parse_topic(bad).is_err(), "{bad}");
        }
    }
}
