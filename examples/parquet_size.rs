//! Bytes per stored row: simulates a fleet day, stores it, and reports Parquet size per row
//! for each table (target for `vitals`: ≤ 10 bytes/row; raw JSON is ~590).
//!
//! `cargo run --release --example parquet_size -- [devices] [hours] [poll_s]`
//! (default 1000 devices, 24 h, 10 s polls).

use std::sync::Arc;
use std::time::Instant;

use wallscope::clock::SystemClock;
use wallscope::decode::{DecodeConfig, Decoder, TableBuilders};
use wallscope::model::{Message, Table};
use wallscope::sim::{SimConfig, Simulator};
use wallscope::store::{Store, StoreConfig};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let devices: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let hours: i64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(24);
    let poll_s: i64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir()?;
    let mut cfg = StoreConfig::new(dir.path());
    cfg.compact_after_rows = usize::MAX;
    let (mut store, _) = Store::open(cfg, Arc::new(SystemClock))?;
    let mut sim = Simulator::new(SimConfig {
        devices,
        duration_ms: hours * 3_600_000,
        poll_interval_ms: poll_s * 1000,
        seed: 7,
        fault_rate: 0.05,
        ..SimConfig::default()
    })?;
    let mut dec = Decoder::new(DecodeConfig::default());
    let mut out = TableBuilders::default();
    let mut json_bytes = [0u64; 5];
    let started = Instant::now();
    let mut pending = 0usize;
    let mut err: Option<anyhow::Error> = None;
    sim.run(&mut |rec| {
        let m = Message {
            topic: rec.topic,
            payload: rec.payload,
            received_at_ms: rec.ts_ms,
            recorded: true,
        };
        if let wallscope::decode::Outcome::Stored(t) = dec.decode(&m, &mut out) {
            json_bytes[t.index()] += m.payload.len() as u64;
        }
        pending += 1;
        if pending >= 1 << 18 {
            pending = 0;
            for (t, b) in out.finish_all() {
                if let Err(e) = store.append(t, &b) {
                    err = Some(e.into());
                }
            }
        }
        Ok(())
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    for (t, b) in out.finish_all() {
        store.append(t, &b)?;
    }
    store.sync()?;
    let ingest_s = started.elapsed().as_secs_f64();
    let t = Instant::now();
    store.compact()?;
    let compact_s = t.elapsed().as_secs_f64();
    let snap = store.snapshot();
    println!(
        "{devices} devices × {hours} h at {poll_s} s polls: simulated + decoded + WAL in {ingest_s:.1} s, compacted in {compact_s:.1} s"
    );
    println!(
        "{:<14} {:>12} {:>14} {:>12} {:>14}",
        "table", "rows", "parquet bytes", "bytes/row", "JSON bytes/row"
    );
    for table in Table::ALL {
        let rows = snap.rows(table);
        if rows == 0 {
            continue;
        }
        let bytes: u64 = snap.files_of(table).map(|f| f.bytes).sum();
        println!(
            "{:<14} {:>12} {:>14} {:>12.2} {:>14.1}",
            table.name(),
            rows,
            bytes,
            bytes as f64 / rows as f64,
            json_bytes[table.index()] as f64 / rows as f64
        );
    }
    // Where the vitals bytes go, per column (compressed column-chunk sizes).
    let mut per_col: Vec<(String, i64)> = Vec::new();
    for f in snap.files_of(Table::Vitals) {
        let file = std::fs::File::open(snap.dir.join(&f.path))?;
        let reader = parquet::file::reader::SerializedFileReader::new(file)?;
        use parquet::file::reader::FileReader;
        for rg in reader.metadata().row_groups() {
            for (i, col) in rg.columns().iter().enumerate() {
                let name = col.column_path().string();
                if per_col.len() <= i {
                    per_col.push((name, 0));
                }
                per_col[i].1 += col.compressed_size();
            }
        }
    }
    let rows = snap.rows(Table::Vitals).max(1) as f64;
    per_col.sort_by_key(|(_, b)| -b);
    println!("vitals bytes/row by column (largest first):");
    for (name, b) in per_col.iter().take(12) {
        println!("  {name:<28} {:>6.2}", *b as f64 / rows);
    }
    Ok(())
}
