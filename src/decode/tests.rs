use super::*;
use crate::model::{VITALS, parse_topic};
use arrow::array::{Array, AsArray, ListArray};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType, UInt64Type};
use proptest::prelude::*;

fn msg(topic: &str, payload: &[u8]) -> Message {
    Message {
        topic: topic.into(),
        payload: payload.to_vec(),
        received_at_ms: 1_767_225_600_000,
        recorded: false,
    }
}

fn decode_one(topic: &str, payload: &[u8]) -> (Outcome, Vec<(Table, RecordBatch)>) {
    let mut d = Decoder::new(DecodeConfig::default());
    let mut b = TableBuilders::default();
    let o = d.decode(&msg(topic, payload), &mut b);
    (o, b.finish_all())
}

/// Every real log line decodes, and every field equals what serde_json reads from the
/// same text (the reference parser), including list fields.
#[test]
fn real_captures_decode_exactly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/real");
    let mut lines = 0;
    for f in [
        "logs.txt",
        "logs3-d-2.txt",
        "logs5tt-d-2.txt",
        "logs8-d-2.after-factory-reset.txt",
    ] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        for line in text.lines() {
            let (_, json) = crate::capture::parse_vitals_line(line.as_bytes()).unwrap();
            let (o, batches) = decode_one("wc/home/vitals", json);
            assert_eq!(o, Outcome::Stored(Table::Vitals), "{line}");
            let b = &batches[0].1;
            let want: serde_json::Value = serde_json::from_slice(json).unwrap();
            for (i, spec) in VITALS.iter().enumerate() {
                let col = b.column(PREFIX + i);
                let v = &want[spec.name];
                match spec.kind {
                    FieldKind::F64 => {
                        let got = col.as_primitive::<Float64Type>();
                        match v.as_f64() {
                            Some(x) => assert_eq!(
                                got.value(0).to_bits(),
                                x.to_bits(),
                                "{} in {line}",
                                spec.name
                            ),
                            None => assert!(got.is_null(0), "{}", spec.name),
                        }
                    }
                    FieldKind::I64 => {
                        let got = col.as_primitive::<Int64Type>();
                        match v.as_i64() {
                            Some(x) => assert_eq!(got.value(0), x, "{}", spec.name),
                            None => assert!(got.is_null(0), "{}", spec.name),
                        }
                    }
                    FieldKind::Bool => {
                        let got = col.as_boolean();
                        match v.as_bool() {
                            Some(x) => assert_eq!(got.value(0), x, "{}", spec.name),
                            None => assert!(got.is_null(0), "{}", spec.name),
                        }
                    }
                    FieldKind::ListI64 => {
                        let got = col.as_any().downcast_ref::<ListArray>().unwrap();
                        let vals: Vec<i64> =
                            got.value(0).as_primitive::<Int64Type>().values().to_vec();
                        let want: Vec<i64> = v
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_i64().unwrap())
                            .collect();
                        assert_eq!(vals, want);
                    }
                    FieldKind::ListText => {
                        let got = col.as_any().downcast_ref::<ListArray>().unwrap();
                        assert_eq!(got.value(0).len(), v.as_array().unwrap().len());
                    }
                    _ => {}
                }
            }
            // No unknown fields in real vitals.
            assert!(b.column_by_name("extra").unwrap().is_null(0));
            lines += 1;
        }
    }
    assert_eq!(lines, 469);
}

const PREFIX: usize = crate::model::PREFIX_COLS;

#[test]
fn envelope_sets_ts_and_seq() {
    let (o, b) = decode_one(
        "wc/a1/vitals",
        br#"{"ts":1767225601234,"seq":7,"data":{"grid_v":241.5,"evse_state":11}}"#,
    );
    assert_eq!(o, Outcome::Stored(Table::Vitals));
    let b = &b[0].1;
    assert_eq!(
        b.column(1)
            .as_primitive::<TimestampMillisecondType>()
            .value(0),
        1_767_225_601_234
    );
    assert_eq!(b.column(3).as_primitive::<UInt64Type>().value(0), 7);
    assert!(b.column(4).is_null(0), "envelopes carry no payload hash");
    let (_, b) = decode_one(
        "wc/a1/vitals",
        br#"{"ts":"2026-01-01T00:00:01.5Z","seq":8,"data":{"grid_v":241.5}}"#,
    );
    assert_eq!(
        b[0].1
            .column(1)
            .as_primitive::<TimestampMillisecondType>()
            .value(0),
        1_767_225_601_500
    );
}

#[test]
fn raw_live_payloads_carry_their_hash() {
    let (_, b) = decode_one("wc/a1/vitals", br#"{"grid_v":241.5}"#);
    assert!(b[0].1.column(4).is_valid(0));
}

#[test]
fn bare_nan_is_null_and_firmware_variants_land() {
    let (o, b) = decode_one(
        "wc/a1/lifetime",
        br#"{"contactor_cycles": 10, "avg_startup_temp": nan, "energy_wh": 5}"#,
    );
    assert_eq!(o, Outcome::Stored(Table::Lifetime));
    let b = &b[0].1;
    assert!(b.column_by_name("avg_startup_temp").unwrap().is_null(0));
    assert_eq!(
        b.column_by_name("contactor_cycles")
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0),
        10
    );
    let (_, b) = decode_one("wc/a1/vitals", br#"{"relay_k1_v":12.0,"relay_k2_v":0.0}"#);
    let b = &b[0].1;
    assert_eq!(
        b.column_by_name("relay_k1_v")
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(0),
        12.0
    );
    assert!(b.column_by_name("relay_coil_v").unwrap().is_null(0));
}

#[test]
fn unknown_fields_are_kept_in_extra() {
    let (o, b) = decode_one(
        "wc/a1/vitals",
        br#"{"grid_v":240.0,"new_sensor":{"a":[1,2]},"odd":nan,"z":"q"}"#,
    );
    assert_eq!(o, Outcome::Stored(Table::Vitals));
    let v = extra_json(&b[0].1);
    assert_eq!(v["new_sensor"]["a"][1], 2);
    assert!(v["odd"].is_null());
    assert_eq!(v["z"], "q");
}

#[test]
fn a_repeated_key_keeps_its_last_value() {
    let (o, b) = decode_one(
        "wc/a1/vitals",
        br#"{"grid_v":1.5,"current_alerts":["a"],"grid_v":2.5,"current_alerts":["b","c"],"evse_not_ready_reasons":[1],"evse_not_ready_reasons":null}"#,
    );
    assert_eq!(o, Outcome::Stored(Table::Vitals));
    let b = &b[0].1;
    assert_eq!(b.num_rows(), 1);
    let grid = b
        .column_by_name("grid_v")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!(grid.value(0), 2.5);
    let alerts = b
        .column_by_name("current_alerts")
        .unwrap()
        .as_any()
        .downcast_ref::<ListArray>()
        .unwrap();
    let first = alerts.value(0);
    let texts = first.as_string::<i32>();
    assert_eq!((texts.len(), texts.value(0), texts.value(1)), (2, "b", "c"));
    assert!(
        b.column_by_name("evse_not_ready_reasons")
            .unwrap()
            .is_null(0)
    );
}

#[test]
fn missing_final_brace_is_repaired_only_after_the_last_field() {
    // The firmware quirk: everything there but the final `}`.
    let mut full = valid_payload();
    assert_eq!(full.pop(), Some(b'}'));
    let (o, _) = decode_one("wc/a1/vitals", &full);
    assert_eq!(o, Outcome::Stored(Table::Vitals));
    let (o, _) = decode_one(
        "wc/a1/vitals",
        br#"{"ts":1767225600000,"seq":1,"data":{"grid_v":240.0}"#,
    );
    assert_eq!(o, Outcome::Stored(Table::Vitals));
    // Cut after an earlier member (maybe inside a number: 11 → 1) or inside `data`: rejected.
    for cut in [
        &br#"{"grid_v":240.0,"evse_state":1"#[..],
        br#"{"ts":1767225600000,"seq":1,"data":{"grid_v":240.0"#,
    ] {
        assert_eq!(
            decode_one("wc/a1/vitals", cut).0,
            Outcome::Dead(ErrorClass::InvalidJson)
        );
    }
}

#[test]
fn invalid_escapes_and_extreme_timestamps_are_rejected_without_panics() {
    for p in [&br#"{"a\q":1}"#[..], br#"{"x":"\u12G4"}"#, br#"{"x":"\"#] {
        assert_eq!(
            decode_one("wc/a1/vitals", p).0,
            Outcome::Dead(ErrorClass::InvalidJson),
            "{}",
            String::from_utf8_lossy(p)
        );
    }
    for p in [
        &br#"{"ts":-9223372036854775808,"seq":1,"data":{}}"#[..],
        br#"{"ts":9223372036854775807,"seq":1,"data":{}}"#,
    ] {
        assert_eq!(
            decode_one("wc/a1/vitals", p).0,
            Outcome::Dead(ErrorClass::TsOutOfWindow)
        );
    }
    // Valid escapes in unknown values keep `extra` valid JSON.
    let (o, b) = decode_one("wc/a1/vitals", br#"{"note":"a\"b\u00e9"}"#);
    assert_eq!(o, Outcome::Stored(Table::Vitals));
    let v = extra_json(&b[0].1);
    assert_eq!(v["note"], "a\"bé");
}

#[test]
fn wifi_and_version() {
    let (o, b) = decode_one(
        "wc/a1/wifi_status",
        br#"{"wifi_ssid":"SG9tZQ==","wifi_signal_strength":65,"wifi_rssi":-58,"wifi_snr":35,"wifi_connected":true,"wifi_infra_ip":"192.0.2.5","internet":true,"wifi_mac":"AA:BB"}"#,
    );
    assert_eq!(o, Outcome::Stored(Table::Wifi));
    assert_eq!(
        b[0].1
            .column_by_name("wifi_rssi")
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(0),
        -58.0
    );
    let (o, b) = decode_one(
        "wc/a1/version",
        br#"{"firmware_version":"25.34.1+gabc","part_number":"1734412-02-D","IEEE1547VfTripsCrc":12345}"#,
    );
    assert_eq!(o, Outcome::Stored(Table::Version));
    assert_eq!(
        b[0].1
            .column_by_name("IEEE1547VfTripsCrc")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "12345"
    );
}

/// Each class of bad input lands in dead_letters with the right class.
#[test]
fn bad_payload_table() {
    let mut big = br#"{"grid_v":240.0,"padding":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 1 << 20));
    big.extend_from_slice(br#""}"#);
    let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
    let cases: Vec<(&str, Vec<u8>, ErrorClass)> = vec![
        (
            "wc/d/vitals",
            br#"{"grid_v": 240.1, "grid_hz""#.to_vec(),
            ErrorClass::InvalidJson,
        ),
        (
            "wc/d/vitals",
            b"not json at all".to_vec(),
            ErrorClass::NotAnObject,
        ),
        ("wc/d/vitals", b"".to_vec(), ErrorClass::InvalidJson),
        (
            "wc/d/vitals",
            b"{\"grid_v\": 240.1,}".to_vec(),
            ErrorClass::InvalidJson,
        ),
        (
            "wc/d/vitals",
            b"{\"grid_v\": 240.1} trailing".to_vec(),
            ErrorClass::InvalidJson,
        ),
        (
            "wc/d/vitals",
            b"\xff\xfe\x00garbage".to_vec(),
            ErrorClass::InvalidUtf8,
        ),
        (
            "wc/d/vitals",
            br#"{"grid_v": "two hundred"}"#.to_vec(),
            ErrorClass::WrongType,
        ),
        (
            "wc/d/vitals",
            br#"{"uptime_s": 5.5}"#.to_vec(),
            ErrorClass::WrongType,
        ),
        (
            "wc/d/vitals",
            br#"{"contactor_closed": 1}"#.to_vec(),
            ErrorClass::WrongType,
        ),
        (
            "wc/d/vitals",
            br#"{"evse_not_ready_reasons": [1, "x"]}"#.to_vec(),
            ErrorClass::WrongType,
        ),
        (
            "wc/d/vitals",
            (b"[".repeat(5000).into_iter().chain(b"]".repeat(5000))).collect(),
            ErrorClass::NotAnObject,
        ),
        ("wc/d/vitals", deep_obj.into_bytes(), ErrorClass::TooDeep),
        ("wc/d/vitals", big, ErrorClass::Oversized),
        (
            "no-such-topic-shape",
            br#"{"grid_v":1}"#.to_vec(),
            ErrorClass::BadTopic,
        ),
        (
            "wc/d/unknownkind",
            br#"{"grid_v":1}"#.to_vec(),
            ErrorClass::BadTopic,
        ),
        (
            "wc/bad id/vitals",
            br#"{"grid_v":1}"#.to_vec(),
            ErrorClass::BadTopic,
        ),
        (
            "wc/d/vitals",
            br#"{"ts":"yesterday","seq":1,"data":{}}"#.to_vec(),
            ErrorClass::BadEnvelope,
        ),
        (
            "wc/d/vitals",
            br#"{"ts":1767225600000,"seq":-1,"data":{}}"#.to_vec(),
            ErrorClass::BadEnvelope,
        ),
        (
            "wc/d/vitals",
            br#"{"ts":1767225600000,"seq":1,"data":5}"#.to_vec(),
            ErrorClass::BadEnvelope,
        ),
        (
            "wc/d/vitals",
            br#"{"ts":1767225600000,"seq":1}"#.to_vec(),
            ErrorClass::BadEnvelope,
        ),
        (
            "wc/d/vitals",
            br#"{"ts":86400000,"seq":1,"data":{}}"#.to_vec(),
            ErrorClass::TsOutOfWindow,
        ),
        (
            "wc/d/vitals",
            br#"{"ts":1767312000000,"seq":1,"data":{}}"#.to_vec(),
            ErrorClass::TsOutOfWindow,
        ),
    ];
    let mut d = Decoder::new(DecodeConfig::default());
    let mut b = TableBuilders::default();
    for (topic, payload, class) in &cases {
        let o = d.decode(&msg(topic, payload), &mut b);
        assert_eq!(
            o,
            Outcome::Dead(*class),
            "{topic} {:?}",
            String::from_utf8_lossy(&payload[..payload.len().min(60)])
        );
    }
    let batches = b.finish_all();
    assert_eq!(batches.len(), 1);
    let (t, dl) = &batches[0];
    assert_eq!(*t, Table::DeadLetters);
    assert_eq!(dl.num_rows(), cases.len());
    let classes = dl.column_by_name("error_class").unwrap().as_string::<i32>();
    for (i, (_, _, class)) in cases.iter().enumerate() {
        assert_eq!(classes.value(i), class.as_str());
    }
    // Payloads are capped; the original size is kept.
    let sizes = dl
        .column_by_name("payload_bytes")
        .unwrap()
        .as_primitive::<UInt64Type>();
    let kept = dl.column_by_name("payload").unwrap().as_binary::<i32>();
    let big_row = cases
        .iter()
        .position(|c| c.2 == ErrorClass::Oversized)
        .unwrap();
    assert!(sizes.value(big_row) > 1 << 20);
    assert_eq!(
        kept.value(big_row).len(),
        DecodeConfig::default().dead_letter_payload_bytes
    );
    // Device id is kept when the topic names one.
    let dev = dl.column_by_name("device_id").unwrap().as_string::<i32>();
    assert_eq!(dev.value(0), "d");
    assert!(
        dev.is_null(
            cases
                .iter()
                .position(|c| c.0 == "no-such-topic-shape")
                .unwrap()
        )
    );
}

/// The `extra` column of the first row, parsed (it must be valid JSON).
fn extra_json(b: &RecordBatch) -> serde_json::Value {
    let extra = b
        .column_by_name("extra")
        .unwrap()
        .as_string::<i32>()
        .value(0);
    serde_json::from_str(extra).unwrap()
}

fn valid_payload() -> Vec<u8> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/real/logs5tt-d-2.txt");
    let text = std::fs::read_to_string(dir).unwrap();
    let line = text.lines().nth(40).unwrap();
    crate::capture::parse_vitals_line(line.as_bytes())
        .unwrap()
        .1
        .to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes never panic, and always yield exactly one row somewhere.
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut d = Decoder::new(DecodeConfig::default());
        let mut b = TableBuilders::default();
        d.decode(&msg("wc/p/vitals", &bytes), &mut b);
        prop_assert_eq!(b.rows(), 1);
    }

    /// A payload with invalid UTF-8 anywhere (a known field, an unknown key or value, a
    /// string, between members) is never stored: it is dead-lettered as `invalid_utf8`,
    /// though the decoder checks UTF-8 only where it keeps text.
    #[test]
    fn invalid_utf8_anywhere_is_dead_lettered_as_such(at in 0usize..800, bad in 0x80u8..=0xff, unknown in any::<bool>()) {
        let mut p = valid_payload();
        if unknown {
            // Unknown members are kept verbatim in `extra`: their bytes must be checked too.
            let member = r#""future_note":"café","future_list":["ø",1],"#.as_bytes();
            p.splice(1..1, member.iter().copied());
        }
        let i = at % p.len();
        p[i] = bad;
        prop_assume!(std::str::from_utf8(&p).is_err());
        let mut d = Decoder::new(DecodeConfig::default());
        let mut b = TableBuilders::default();
        let out = d.decode(&msg("wc/p/vitals", &p), &mut b);
        prop_assert_eq!(out, Outcome::Dead(ErrorClass::InvalidUtf8));
    }

    /// Values go to their columns as they are scanned and a rejected payload is cut back
    /// out: many payloads (valid, mutated, cut short, with unknown members) decoded into one
    /// set of builders give exactly the rows each gives alone.
    #[test]
    fn a_batch_equals_its_payloads_decoded_one_by_one(
        cases in proptest::collection::vec((0usize..800, proptest::collection::vec((0usize..700, any::<u8>()), 0..3), any::<bool>(), any::<bool>()), 1..12)
    ) {
        let mut msgs = Vec::new();
        for (cut, flips, unknown, envelope) in cases {
            let mut p = valid_payload();
            if unknown {
                let member = br#""future_list":["x",1],"#;
                p.splice(1..1, member.iter().copied());
            }
            for (at, v) in flips {
                let i = at % p.len();
                p[i] = v;
            }
            p.truncate(cut.min(p.len()));
            if envelope {
                let mut e = br#"{"ts":1767225600000,"seq":7,"data":"#.to_vec();
                e.extend_from_slice(&p);
                e.push(b'}');
                p = e;
            }
            msgs.push(msg("wc/p/vitals", &p));
        }
        let mut d = Decoder::new(DecodeConfig::default());
        let mut all = TableBuilders::default();
        let mut alone: Vec<Vec<(Table, RecordBatch)>> = Vec::new();
        for m in &msgs {
            d.decode(m, &mut all);
            let mut one = TableBuilders::default();
            Decoder::new(DecodeConfig::default()).decode(m, &mut one);
            alone.push(one.finish_all());
        }
        let together = all.finish_all();
        for (t, batch) in &together {
            let parts: Vec<RecordBatch> = alone
                .iter()
                .flatten()
                .filter(|(u, _)| u == t)
                .map(|(_, b)| b.clone())
                .collect();
            let want = arrow::compute::concat_batches(&t.schema(), &parts).unwrap();
            prop_assert_eq!(batch, &want, "table {}", t.name());
        }
        let rows: usize = together.iter().map(|(_, b)| b.num_rows()).sum();
        prop_assert_eq!(rows, msgs.len());
    }

    /// Mutations of a real payload (truncation, byte flips, insertions) never panic.
    #[test]
    fn never_panics_on_mutated_payloads(cut in 0usize..700, flips in proptest::collection::vec((0usize..700, any::<u8>()), 0..6)) {
        let mut p = valid_payload();
        for (at, v) in flips {
            let i = at % p.len();
            p[i] = v;
        }
        p.truncate(cut.min(p.len()));
        let mut d = Decoder::new(DecodeConfig::default());
        let mut b = TableBuilders::default();
        d.decode(&msg("wc/p/vitals", &p), &mut b);
        prop_assert_eq!(b.rows(), 1);
    }
}

#[test]
fn topic_parser_agrees() {
    assert!(parse_topic("wc/p/vitals").is_ok());
}
