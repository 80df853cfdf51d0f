use std::sync::Arc;

use arrow::array::RecordBatch;

use super::*;
use crate::clock::ManualClock;
use crate::decode::{DecodeConfig, Decoder, TableBuilders};
use crate::model::Message;

fn batch(devices: &[&str], seqs: std::ops::Range<u64>, base_ts: i64) -> RecordBatch {
    let mut d = Decoder::new(DecodeConfig {
        max_past_ms: i64::MAX / 4,
        ..DecodeConfig::default()
    });
    let mut b = TableBuilders::default();
    for s in seqs {
        for dev in devices {
            let ts = base_ts + s as i64 * 2000;
            let m = Message {
                topic: format!("wc/{dev}/vitals"),
                payload: format!(
                    r#"{{"ts":{ts},"seq":{s},"data":{{"grid_v":240.5,"uptime_s":{s}}}}}"#
                )
                .into_bytes(),
                received_at_ms: ts + 10,
                recorded: false,
            };
            d.decode(&m, &mut b);
        }
    }
    b.get_mut(Table::Vitals).finish().expect("rows")
}

const T0: i64 = 1_767_225_600_000;

fn open(dir: &Path) -> (Store, OpenReport) {
    Store::open(StoreConfig::new(dir), Arc::new(ManualClock::new(T0))).unwrap()
}

#[test]
fn duplicates_are_dropped_before_and_after_compaction() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = open(d.path());
    s.append(Table::Vitals, &batch(&["a", "b"], 0..100, T0))
        .unwrap();
    // The same rows again, partly overlapping, in one batch with internal duplicates.
    let again = batch(&["a", "b"], 50..150, T0);
    let doubled = arrow::compute::concat_batches(&again.schema(), [&again, &again]).unwrap();
    s.append(Table::Vitals, &doubled).unwrap();
    s.sync().unwrap();
    assert_eq!(s.snapshot().rows(Table::Vitals), 300);
    s.compact().unwrap();
    assert_eq!(s.snapshot().rows(Table::Vitals), 300);
    assert_eq!(s.snapshot().tail.len(), 0);
    assert_eq!(
        s.append(Table::Vitals, &batch(&["a"], 0..150, T0)).unwrap(),
        None
    );
    drop(s);
    // After a restart the index is rebuilt from Parquet on demand.
    let (mut s, _) = open(d.path());
    assert!(
        s.append(Table::Vitals, &batch(&["b"], 140..160, T0))
            .unwrap()
            .is_some()
    );
    s.sync().unwrap();
    assert_eq!(s.snapshot().rows(Table::Vitals), 310);
    // This process saw b 140..150 again.
    assert_eq!(s.stats().duplicates_dropped, 10);
}

#[test]
fn rows_are_durable_after_sync_and_recovered_from_the_wal() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = open(d.path());
    s.append(Table::Vitals, &batch(&["a"], 0..10, T0)).unwrap();
    assert_eq!(
        s.snapshot().rows(Table::Vitals),
        0,
        "not visible before the fsync"
    );
    let lsn = s.sync().unwrap();
    assert_eq!(lsn, 1);
    assert_eq!(s.snapshot().rows(Table::Vitals), 10);
    // Simulate a crash: drop without close (no compaction).
    drop(s);
    let (s, report) = open(d.path());
    assert_eq!(report.tail_rows, 10);
    assert_eq!(s.snapshot().rows(Table::Vitals), 10);
    assert_eq!(Snapshot::load(d.path()).unwrap().rows(Table::Vitals), 10);
}

#[test]
fn torn_tail_is_truncated_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let segs = write_synced_batches(d.path(), 2);
    let (_, last) = segs
        .iter()
        .rfind(|(_, p)| std::fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    for cut in [len - 1, len - 100, len / 2 + 7] {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(d.path(), copy.path());
        let target = copy.path().join("wal").join(last.file_name().unwrap());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        // Later (empty) segments would make this one "not the newest": remove them, as a
        // crash before their creation would have.
        for (_, p) in wal::segments(&copy.path().join("wal")).unwrap() {
            if p != target && p.file_name() > target.file_name() {
                std::fs::remove_file(p).unwrap();
            }
        }
        let (s, report) = open(copy.path());
        assert_eq!(report.recovery.torn_tails, 1, "cut at {cut}");
        assert!(report.recovery.torn_bytes > 0);
        let rows = s.snapshot().rows(Table::Vitals);
        assert!(rows == 10 || rows == 20, "{rows}");
        assert_eq!(s.stats().torn_tails, 1);
    }
}

#[test]
fn corruption_in_an_older_segment_refuses_to_start() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(d.path());
    cfg.wal_segment_bytes = 1; // every sync starts a new segment
    let clock = Arc::new(ManualClock::new(T0));
    let (mut s, _) = Store::open(cfg.clone(), clock.clone()).unwrap();
    for i in 0..3 {
        s.append(Table::Vitals, &batch(&["a"], i * 10..i * 10 + 10, T0))
            .unwrap();
        s.sync().unwrap();
    }
    drop(s);
    let segs = wal::segments(&d.path().join("wal")).unwrap();
    let first = &segs[0].1;
    let mut bytes = std::fs::read(first).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(first, bytes).unwrap();
    let err = Store::open(cfg, clock).err().expect("must refuse");
    let msg = err.to_string();
    assert!(msg.contains("corrupt") && msg.contains(".wal"), "{msg}");
}

#[test]
fn damage_before_intact_records_in_the_newest_segment_refuses_to_start() {
    let d = tempfile::tempdir().unwrap();
    let segs = write_synced_batches(d.path(), 3);
    let (_, seg) = segs
        .iter()
        .find(|(_, p)| std::fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    let mut bytes = std::fs::read(seg).unwrap();
    bytes[40] ^= 0x01; // inside the first record's payload: its CRC fails
    std::fs::write(seg, bytes).unwrap();
    let err = Store::open(StoreConfig::new(d.path()), Arc::new(ManualClock::new(T0)))
        .err()
        .expect("acknowledged records after the damage must not be cut off");
    assert!(err.to_string().contains("intact record follows"), "{err}");
}

#[test]
fn compaction_bounds_files_and_removes_orphans() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(d.path());
    cfg.max_files_per_partition = 3;
    cfg.obsolete_grace_ms = 0;
    let clock = Arc::new(ManualClock::new(T0));
    let (mut s, _) = Store::open(cfg.clone(), clock.clone()).unwrap();
    for i in 0..10u64 {
        s.append(Table::Vitals, &batch(&["a", "b"], i * 10..i * 10 + 10, T0))
            .unwrap();
        s.compact().unwrap();
        let snap = s.snapshot();
        assert!(snap.files_of(Table::Vitals).count() <= 3);
        assert_eq!(snap.rows(Table::Vitals), (i + 1) * 20);
    }
    drop(s);
    // A file that never made it into the manifest, and a temp file, vanish at open.
    let part = d.path().join("vitals/date=2026-01-01/hour=00");
    std::fs::write(part.join("part-9999999999.parquet"), b"junk").unwrap();
    std::fs::write(part.join(".tmp-part-x.parquet"), b"junk").unwrap();
    let (s, report) = Store::open(cfg, clock).unwrap();
    assert_eq!(report.orphan_files_removed, 2);
    let on_disk = std::fs::read_dir(&part).unwrap().count();
    assert_eq!(on_disk, s.snapshot().files_of(Table::Vitals).count());
    assert_eq!(s.snapshot().rows(Table::Vitals), 200);
}

#[test]
fn parquet_files_are_sorted_by_device_and_time() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = open(d.path());
    s.append(Table::Vitals, &batch(&["z", "a", "m"], 0..50, T0))
        .unwrap();
    s.compact().unwrap();
    let snap = s.snapshot();
    let f = snap.files_of(Table::Vitals).next().unwrap();
    let batches = files::read_parquet(&d.path().join(&f.path), None).unwrap();
    use arrow::array::AsArray;
    let b = &batches[0];
    let dev = b.column(0).as_string::<i32>();
    let ts = b
        .column(1)
        .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
    for i in 1..b.num_rows() {
        let prev = (dev.value(i - 1), ts.value(i - 1));
        assert!(prev <= (dev.value(i), ts.value(i)));
    }
}

/// Writes `n` synced 10-row batches for device `a`, stops without compacting (as a crash
/// would), and returns the WAL segments.
fn write_synced_batches(dir: &Path, n: u64) -> Vec<(u64, std::path::PathBuf)> {
    let (mut s, _) = open(dir);
    for i in 0..n {
        s.append(Table::Vitals, &batch(&["a"], i * 10..i * 10 + 10, T0))
            .unwrap();
        s.sync().unwrap();
    }
    drop(s);
    wal::segments(&dir.join("wal")).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let name = e.file_name();
        if name == "LOCK" {
            continue;
        }
        if p.is_dir() {
            std::fs::create_dir_all(to.join(&name)).unwrap();
            copy_dir(&p, &to.join(&name));
        } else {
            std::fs::copy(&p, to.join(&name)).unwrap();
        }
    }
}

/// The commit handle: concurrent submitters each get a ticket that resolves to an LSN that is
/// already durable, the rows are queryable by then, and closing compacts everything.
#[test]
fn commit_handle_group_commits_and_reports_durable_lsns() {
    let d = tempfile::tempdir().unwrap();
    let (store, _) = open(d.path());
    let svc = service::StoreService::start(store, 8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let handle = svc.handle();
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..4u64 {
            let h = handle.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..20u64 {
                    let dev = format!("w{w}");
                    let b = batch(&[dev.as_str()], i * 10..i * 10 + 10, T0);
                    let ticket = h.submit(vec![(Table::Vitals, b)]).await;
                    let lsn = ticket
                        .await
                        .map_err(service::ticket_error)
                        .unwrap()
                        .unwrap();
                    // The fsync covering this LSN has returned before the ticket resolved.
                    assert!(h.durable_lsn() >= lsn);
                    out.push(lsn);
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    assert_eq!(results.len(), 80);
    assert_eq!(handle.snapshot().rows(Table::Vitals), 800);
    // A duplicate submission resolves too, and stores nothing new.
    let again = rt.block_on(async {
        let t = handle
            .submit(vec![(Table::Vitals, batch(&["w0"], 0..10, T0))])
            .await;
        t.await.unwrap()
    });
    assert!(again.is_ok());
    assert_eq!(handle.snapshot().rows(Table::Vitals), 800);
    drop(handle);
    let report = svc.close().unwrap();
    assert_eq!(report.rows, 800);
    let snap = Snapshot::load(d.path()).unwrap();
    assert_eq!(snap.rows(Table::Vitals), 800);
    assert!(snap.tail.is_empty(), "close compacts the whole tail");
}
