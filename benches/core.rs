//! Core throughput benchmarks (criterion).
//!
//! - `decode/*`: payload bytes → Arrow builders on one core, for real Wall Connector vitals
//!   payloads (fixtures/real), raw and in a bridge envelope, against arrow-json's Decoder on
//!   the same bytes. Target: ≥ 1,000,000 vitals messages/s/core.
//! - `wal/group_commit`: append + fsync of decoded batches, rows/s by batch size (fsync-bound).
//! - `compact/vitals`: sort + encode + zstd + fsync of a simulated hour into Parquet.
//!
//! Run: `cargo bench --bench core`. Bytes per stored row: `cargo run --release --example parquet_size`.

use std::hint::black_box;

/// The binary's allocator (src/main.rs), so the figures are the product's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wallscope::clock::SystemClock;
use wallscope::decode::{DecodeConfig, Decoder, TableBuilders};
use wallscope::model::{Message, Table, VITALS};
use wallscope::store::{Store, StoreConfig};

fn real_payloads() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/real");
    let mut out = Vec::new();
    for f in [
        "logs.txt",
        "logs3-d-2.txt",
        "logs5tt-d-2.txt",
        "logs8-d-2.after-factory-reset.txt",
    ] {
        let text = std::fs::read_to_string(dir.join(f)).expect("fixtures");
        for line in text.lines() {
            let (_, p) = wallscope::capture::parse_vitals_line(line.as_bytes()).expect("line");
            out.push(p.to_vec());
        }
    }
    out
}

/// About 64 Ki messages (the real payloads repeated), the size of one ingest batch.
fn messages(enveloped: bool) -> Vec<Message> {
    let real = real_payloads();
    let n = real.len();
    real.into_iter()
        .cycle()
        .take(n * 140)
        .enumerate()
        .map(|(i, p)| {
            let ts = 1_767_225_600_000 + i as i64 * 2000;
            let payload = if enveloped {
                let mut v = format!(r#"{{"ts":{ts},"seq":{i},"data":"#).into_bytes();
                v.extend_from_slice(&p);
                v.push(b'}');
                v
            } else {
                p
            };
            Message {
                topic: format!("wc/wc{:04}/vitals", i % 200),
                payload,
                received_at_ms: ts + 15,
                recorded: true,
            }
        })
        .collect()
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (name, enveloped) in [("vitals_raw", false), ("vitals_envelope", true)] {
        let msgs = messages(enveloped);
        let bytes: usize = msgs.iter().map(|m| m.payload.len()).sum();
        // The same run reported twice: as messages/s and as bytes/s.
        for (unit, throughput) in [
            ("msgs", Throughput::Elements(msgs.len() as u64)),
            ("bytes", Throughput::Bytes(bytes as u64)),
        ] {
            g.throughput(throughput);
            g.bench_function(BenchmarkId::new(name, unit), |b| {
                let mut d = Decoder::new(DecodeConfig::default());
                let mut out = TableBuilders::default();
                b.iter(|| {
                    for m in &msgs {
                        d.decode(m, &mut out);
                    }
                    black_box(out.get_mut(Table::Vitals).finish());
                })
            });
        }
    }
    // Baseline: arrow-json's Decoder on the same raw payloads, payload fields only.
    let payloads = real_payloads();
    let schema = Arc::new(arrow::datatypes::Schema::new(
        Table::Vitals.schema().fields()
            [wallscope::model::PREFIX_COLS..wallscope::model::PREFIX_COLS + VITALS.len()]
            .to_vec(),
    ));
    let joined: Vec<u8> = payloads
        .iter()
        .flat_map(|p| p.iter().copied().chain([b'\n']))
        .collect();
    g.throughput(Throughput::Elements(payloads.len() as u64));
    g.bench_function(BenchmarkId::new("arrow_json_baseline", "msgs"), |b| {
        b.iter(|| {
            let mut dec = arrow::json::ReaderBuilder::new(schema.clone())
                .with_batch_size(1 << 16)
                .build_decoder()
                .expect("decoder");
            let mut rest = &joined[..];
            while !rest.is_empty() {
                let n = dec.decode(rest).expect("decode");
                if n == 0 {
                    break;
                }
                rest = &rest[n..];
            }
            black_box(dec.flush().expect("flush"));
        })
    });
    g.finish();
}

fn decoded_batch(rows: usize) -> arrow::array::RecordBatch {
    let msgs = messages(true);
    let mut d = Decoder::new(DecodeConfig {
        max_past_ms: i64::MAX / 4,
        ..DecodeConfig::default()
    });
    let mut out = TableBuilders::default();
    for i in 0..rows {
        let mut m = msgs[i % msgs.len()].clone();
        // Distinct keys: a fresh seq per row.
        let ts = 1_767_225_600_000 + (i as i64) * 2000;
        let body = String::from_utf8_lossy(&m.payload).into_owned();
        let data = body.split_once(r#""data":"#).map(|x| x.1).unwrap_or("{}");
        m.payload = format!(r#"{{"ts":{ts},"seq":{i},"data":{data}"#).into_bytes();
        m.received_at_ms = ts;
        d.decode(&m, &mut out);
    }
    out.get_mut(Table::Vitals).finish().expect("rows")
}

fn bench_wal(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal");
    g.sample_size(20);
    for rows in [1_000usize, 16_384] {
        let batch = decoded_batch(rows);
        g.throughput(Throughput::Elements(rows as u64));
        g.bench_function(BenchmarkId::new("group_commit_rows", rows), |b| {
            let dir = tempfile::tempdir().expect("tmp");
            let (mut store, _) =
                Store::open(StoreConfig::new(dir.path()), Arc::new(SystemClock)).expect("open");
            let mut n = 0u64;
            b.iter(|| {
                // Shift keys so every append stores new rows (dedup would drop repeats).
                n += 1;
                let ts = arrow::array::TimestampMillisecondArray::from(
                    (0..rows as i64)
                        .map(|i| 1_767_225_600_000 + (n as i64) * 10_000_000 + i)
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC");
                let mut cols = batch.columns().to_vec();
                cols[1] = Arc::new(ts);
                let b2 = arrow::array::RecordBatch::try_new(batch.schema(), cols).expect("batch");
                store.append(Table::Vitals, &b2).expect("append");
                black_box(store.sync().expect("sync"));
            })
        });
    }
    g.finish();
}

fn bench_compact(c: &mut Criterion) {
    let mut g = c.benchmark_group("compact");
    g.sample_size(10);
    let rows = 200_000;
    let batch = decoded_batch(rows);
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function("vitals_parquet_rows", |b| {
        let dir = tempfile::tempdir().expect("tmp");
        let mut i = 0;
        b.iter(|| {
            i += 1;
            let path = dir.path().join(format!("p{i}.parquet"));
            black_box(
                wallscope::store::files::write_parquet(
                    Table::Vitals,
                    std::slice::from_ref(&batch),
                    &path,
                )
                .expect("write"),
            );
        })
    });
    g.finish();
}

criterion_group!(benches, bench_decode, bench_wal, bench_compact);
criterion_main!(benches);
