//! `record`: subscribe like `run` and write every message to a capture file, byte-exact, with
//! its receive time.
//!
//! Contract:
//! - A message is acked (QoS 1) only after its line is written and fsynced, so a message the
//!   broker considers delivered is on disk; a crash redelivers the rest (a redelivered message
//!   can appear twice in the capture, as it would on the wire).
//! - Lines are written whole, in receive order. A `kill -9` leaves the file readable up to the
//!   last complete line; a restart appends after it (starting a fresh line if the last one
//!   was cut short, so the torn line stays one malformed line that readers skip and report).
//! - `.zst` output is a sequence of complete zstd frames, one per flush, so a killed recorder
//!   loses at most the frame in progress — and its messages were never acked.
//! - Rotation (by size or age) renames the full file to `<stem>.<UTC start>.<ext>` and starts
//!   a new one at the configured path; the path always holds the newest messages.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::capture::{CaptureRecord, format_rfc3339_ms};
use crate::clock::Clock;
use crate::ingest::{AckSender, AckToken, IngestError, IngestMetrics, MqttConfig, MqttSource};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Mqtt(#[from] IngestError),
    #[error("cannot write the capture {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Record settings.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub mqtt: MqttConfig,
    /// The capture file; `.zst` compresses.
    pub out: PathBuf,
    /// Rotate when the file reaches this many bytes (uncompressed bytes for `.zst`).
    pub rotate_bytes: Option<u64>,
    /// Rotate when the file's first message is this old.
    pub rotate_ms: Option<i64>,
    /// Longest time a message waits before it is written, fsynced and acked.
    pub flush_interval_ms: u64,
}

/// What a recording did.
#[derive(Debug, Clone, Default)]
pub struct RecordReport {
    pub messages: u64,
    /// Capture bytes written (before compression).
    pub bytes: u64,
    /// Files closed by rotation, oldest first (the configured path holds the rest).
    pub rotated: Vec<PathBuf>,
}

/// Records until `stop` turns true; returns once every received message is on disk and
/// acked.
pub async fn record(
    cfg: RecordConfig,
    clock: Arc<dyn Clock>,
    metrics: Arc<IngestMetrics>,
    stop: watch::Receiver<bool>,
) -> Result<RecordReport, RecordError> {
    let (mut source, acks) = MqttSource::start(cfg.mqtt.clone(), metrics.clone(), clock, stop)?;
    let (tx, rx) = std::sync::mpsc::channel::<(CaptureRecord, AckToken)>();
    let writer_cfg = cfg.clone();
    let writer = std::thread::Builder::new()
        .name("record-writer".into())
        .spawn(move || write_loop(writer_cfg, rx, acks, metrics))
        .map_err(|source| RecordError::Io {
            path: cfg.out.clone(),
            source,
        })?;
    while let Some(d) = source.deliveries.recv().await {
        let rec = CaptureRecord {
            ts_ms: d.message.received_at_ms,
            topic: d.message.topic,
            payload: d.message.payload,
        };
        if tx.send((rec, d.ack)).is_err() {
            break; // the writer failed: its error is reported below
        }
    }
    drop(tx);
    let written = writer.join().unwrap_or_else(|_| {
        Err(RecordError::Io {
            path: cfg.out.clone(),
            source: std::io::Error::other("the capture writer panicked"),
        })
    });
    let ended = MqttSource::join(source.task).await;
    let report = written?;
    ended?;
    Ok(report)
}

fn write_loop(
    cfg: RecordConfig,
    rx: std::sync::mpsc::Receiver<(CaptureRecord, AckToken)>,
    acks: AckSender,
    metrics: Arc<IngestMetrics>,
) -> Result<RecordReport, RecordError> {
    let mut report = RecordReport::default();
    let mut seg = Segment::open(&cfg.out)?;
    let interval = Duration::from_millis(cfg.flush_interval_ms.max(1));
    let mut tokens = Vec::new();
    let mut open = true;
    while open {
        // The first message of a batch waits at most one interval for company.
        let first = match rx.recv() {
            Ok(m) => m,
            Err(_) => break,
        };
        let deadline = Instant::now() + interval;
        let mut next = Some(first);
        while let Some((rec, token)) = next.take() {
            if seg.first_ms.is_none() {
                seg.first_ms = Some(rec.ts_ms);
            }
            seg.last_ms = rec.ts_ms;
            let mut line = rec.render();
            line.push('\n');
            seg.write(line.as_bytes())?;
            report.messages += 1;
            report.bytes += line.len() as u64;
            tokens.push(token);
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(m) => next = Some(m),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
        }
        seg.sync()?;
        metrics.rows_durable.add(tokens.len() as u64);
        acks.ack(std::mem::take(&mut tokens));
        let too_big = cfg.rotate_bytes.is_some_and(|b| seg.bytes >= b);
        let too_old = match (cfg.rotate_ms, seg.first_ms) {
            (Some(age), Some(first)) => seg.last_ms - first >= age,
            _ => false,
        };
        if too_big || too_old {
            report.rotated.push(seg.rotate(&cfg.out)?);
        }
    }
    seg.sync()?;
    Ok(report)
}

/// The file being written.
struct Segment {
    path: PathBuf,
    sink: Sink,
    /// Bytes written to this file (before compression).
    bytes: u64,
    /// Receive time of its first and its latest message.
    first_ms: Option<i64>,
    last_ms: i64,
}

enum Sink {
    Plain(BufWriter<File>),
    /// A zstd frame in progress (`None` between frames).
    Zstd(
        Option<zstd::stream::write::Encoder<'static, BufWriter<File>>>,
        Option<BufWriter<File>>,
    ),
}

impl Segment {
    fn open(path: &Path) -> Result<Segment, RecordError> {
        let io = |source| RecordError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        let zst = is_zstd(path);
        if len > 0 && !zst {
            // A torn last line (killed mid-write) stays a line of its own.
            let mut last = [0u8; 1];
            f.seek(SeekFrom::Start(len - 1)).map_err(io)?;
            f.read_exact(&mut last).map_err(io)?;
            if last[0] != b'\n' {
                f.write_all(b"\n").map_err(io)?;
            }
        }
        let w = BufWriter::with_capacity(1 << 20, f);
        Ok(Segment {
            path: path.to_path_buf(),
            sink: if zst {
                Sink::Zstd(None, Some(w))
            } else {
                Sink::Plain(w)
            },
            bytes: 0,
            first_ms: None,
            last_ms: 0,
        })
    }

    fn io(&self, source: std::io::Error) -> RecordError {
        RecordError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn write(&mut self, b: &[u8]) -> Result<(), RecordError> {
        self.bytes += b.len() as u64;
        let r = match &mut self.sink {
            Sink::Plain(w) => w.write_all(b),
            Sink::Zstd(enc, file) => {
                if enc.is_none() {
                    let w = file.take().ok_or_else(|| std::io::Error::other("no file"));
                    match w.and_then(|w| zstd::stream::write::Encoder::new(w, 3)) {
                        Ok(e) => *enc = Some(e),
                        Err(e) => return Err(self.io(e)),
                    }
                }
                match enc {
                    Some(e) => e.write_all(b),
                    None => Ok(()),
                }
            }
        };
        r.map_err(|e| self.io(e))
    }

    /// Flushes what is written to disk (closing the zstd frame in progress) and fsyncs.
    fn sync(&mut self) -> Result<(), RecordError> {
        let r = match &mut self.sink {
            Sink::Plain(w) => w.flush().and_then(|_| w.get_ref().sync_data()),
            Sink::Zstd(enc, file) => match enc.take() {
                Some(e) => e.finish().and_then(|mut w| {
                    w.flush()?;
                    w.get_ref().sync_data()?;
                    *file = Some(w);
                    Ok(())
                }),
                None => Ok(()),
            },
        };
        r.map_err(|e| self.io(e))
    }

    /// Closes this file under its rotated name and opens a fresh one at `path`.
    fn rotate(&mut self, path: &Path) -> Result<PathBuf, RecordError> {
        self.sync()?;
        let stamp = format_rfc3339_ms(self.first_ms.unwrap_or(self.last_ms))
            .replace([':', '-'], "")
            .replace(".000", "");
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_else(|| "capture.jsonl".into());
        let (stem, ext) = split_ext(&name);
        let mut to = path.with_file_name(format!("{stem}.{stamp}{ext}"));
        let mut n = 1;
        while to.exists() {
            to = path.with_file_name(format!("{stem}.{stamp}-{n}{ext}"));
            n += 1;
        }
        std::fs::rename(path, &to).map_err(|e| self.io(e))?;
        // The rename is durable only once the directory is.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e))?;
        *self = Segment::open(path)?;
        Ok(to)
    }
}

fn is_zstd(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "zst")
}

/// `rec.jsonl.zst` → (`rec`, `.jsonl.zst`); `rec.jsonl` → (`rec`, `.jsonl`).
fn split_ext(name: &str) -> (&str, &str) {
    match name.find('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_compound_extensions() {
        assert_eq!(split_ext("rec.jsonl.zst"), ("rec", ".jsonl.zst"));
        assert_eq!(split_ext("rec.jsonl"), ("rec", ".jsonl"));
        assert_eq!(split_ext("rec"), ("rec", ""));
    }

    #[test]
    fn a_torn_last_line_stays_its_own_line_after_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("rec.jsonl");
        std::fs::write(
            &p,
            "{\"ts\":1,\"topic\":\"wc/a/vitals\",\"payload\":{}}\n{\"ts\":2,\"top",
        )
        .unwrap();
        let mut s = Segment::open(&p).unwrap();
        s.write(b"{\"ts\":3,\"topic\":\"wc/a/vitals\",\"payload\":{}}\n")
            .unwrap();
        s.sync().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[1], "{\"ts\":2,\"top");
        assert!(lines[2].starts_with("{\"ts\":3"));
    }

    #[test]
    fn zstd_output_is_complete_frames_after_every_sync() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("rec.jsonl.zst");
        let mut s = Segment::open(&p).unwrap();
        s.write(b"line one\n").unwrap();
        s.sync().unwrap();
        s.write(b"line two\n").unwrap();
        s.sync().unwrap();
        // Readable without closing the writer: what a reader sees after a kill.
        let got = zstd::stream::decode_all(File::open(&p).unwrap()).unwrap();
        assert_eq!(got, b"line one\nline two\n");
        drop(s);
    }
}
