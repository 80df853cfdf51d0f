//! The write-ahead log: Arrow IPC records framed with length + CRC32C + LSN.
//!
//! A segment is `wal/{first_lsn:020}.wal`. Each record is a 24-byte header — magic, payload
//! length, CRC32C over (lsn, table, payload), table id, LSN — followed by one Arrow IPC stream
//! (schema + one batch). Appends go through a buffer; [`WalWriter::sync`] flushes and
//! `fdatasync`s, which is the durability point the commit handle reports. A new segment's
//! directory entry is fsynced before any record in it counts as durable.
//!
//! Recovery reads segments in LSN order. A bad record at the end of the newest segment is a torn
//! tail from a crash: the file is truncated there and the event counted. A bad record anywhere
//! else means corruption, and recovery refuses with the file and offset rather than guess.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use crate::model::Table;

const MAGIC: u32 = 0x5753_5731; // "WSW1"
const HEADER: usize = 24;
/// Records larger than this are refused on write and treated as corruption on read.
const MAX_RECORD: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "WAL segment {path} is corrupt at byte {offset} ({why}) and is not the newest segment; refusing to start rather than lose data silently"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        why: String,
    },
    #[error("cannot encode a WAL record: {0}")]
    Encode(#[from] arrow::error::ArrowError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One decoded WAL record.
pub struct WalRecord {
    pub lsn: u64,
    pub table: Table,
    pub batch: RecordBatch,
}

/// What recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    pub torn_tails: u64,
    pub torn_bytes: u64,
    pub last_lsn: u64,
}

pub fn fsync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

/// Lists segment files sorted by first LSN.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io(dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_suffix(".wal")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn encode(table: Table, batch: &RecordBatch, lsn: u64, buf: &mut Vec<u8>) -> Result<(), WalError> {
    buf.clear();
    buf.resize(HEADER, 0);
    {
        let mut w = StreamWriter::try_new(&mut *buf, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    let len = buf.len() - HEADER;
    let mut crc = crc32c::crc32c(&lsn.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &[table.index() as u8]);
    crc = crc32c::crc32c_append(crc, &buf[HEADER..]);
    buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    buf[12] = table.index() as u8;
    buf[16..24].copy_from_slice(&lsn.to_le_bytes());
    Ok(())
}

/// Reads records from one segment; stops at the first bad record and reports where.
pub struct SegmentReader {
    path: PathBuf,
    data: Vec<u8>,
    pos: usize,
}

pub enum Next {
    Record(WalRecord),
    End,
    /// A bad record at `offset`; everything from there on is unreadable.
    Bad {
        offset: u64,
        why: String,
    },
}

impl SegmentReader {
    pub fn open(path: &Path) -> Result<Self, WalError> {
        let mut data = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(io(path))?;
        Ok(SegmentReader {
            path: path.to_path_buf(),
            data,
            pos: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Offset of an intact record starting after `offset`, if any (used to tell a torn tail
    /// from corruption in the middle of a segment).
    pub fn valid_record_after(&self, offset: u64) -> Option<u64> {
        let magic = MAGIC.to_le_bytes();
        let mut from = offset as usize + 1;
        while let Some(i) = memchr::memmem::find(self.data.get(from..)?, &magic) {
            let at = from + i;
            let mut probe = SegmentReader {
                path: self.path.clone(),
                data: Vec::new(),
                pos: 0,
            };
            probe.data = self.data[at..].to_vec();
            if let Next::Record(_) = probe.next_record() {
                return Some(at as u64);
            }
            from = at + 1;
        }
        None
    }

    pub fn next_record(&mut self) -> Next {
        let start = self.pos;
        let rest = &self.data[start..];
        if rest.is_empty() {
            return Next::End;
        }
        let bad = |why: &str| Next::Bad {
            offset: start as u64,
            why: why.to_string(),
        };
        if rest.len() < HEADER {
            return bad("short header");
        }
        let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        if word(0) != MAGIC {
            return bad("bad magic");
        }
        let len = word(4) as usize;
        if len > MAX_RECORD || rest.len() < HEADER + len {
            return bad("record runs past the end of the file");
        }
        let crc = word(8);
        let table_id = rest[12] as usize;
        let mut lsn_bytes = [0u8; 8];
        lsn_bytes.copy_from_slice(&rest[16..24]);
        let lsn = u64::from_le_bytes(lsn_bytes);
        let payload = &rest[HEADER..HEADER + len];
        let mut c = crc32c::crc32c(&lsn_bytes);
        c = crc32c::crc32c_append(c, &[table_id as u8]);
        c = crc32c::crc32c_append(c, payload);
        if c != crc {
            return bad("CRC mismatch");
        }
        let Some(&table) = Table::ALL.get(table_id) else {
            return bad("unknown table id");
        };
        let batch = match StreamReader::try_new(std::io::Cursor::new(payload), None)
            .map_err(|e| e.to_string())
            .and_then(|mut r| match r.next() {
                Some(Ok(b)) => Ok(b),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("no batch in record".into()),
            }) {
            Ok(b) => b,
            Err(e) => return bad(&format!("undecodable Arrow IPC: {e}")),
        };
        if batch.schema().fields() != table.schema().fields() {
            return bad("record schema does not match its table");
        }
        self.pos = start + HEADER + len;
        Next::Record(WalRecord { lsn, table, batch })
    }
}

/// Appends records to the newest segment.
pub struct WalWriter {
    dir: PathBuf,
    path: PathBuf,
    out: BufWriter<File>,
    bytes: u64,
    next_lsn: u64,
    synced_lsn: u64,
    buf: Vec<u8>,
    segment_bytes: u64,
    /// Off only for scratch stores whose data never outlives the process.
    fsync: bool,
}

impl WalWriter {
    /// Turns fsync off (scratch stores: `diagnose` on files, rule test cases) or back on.
    pub fn set_fsync(&mut self, on: bool) {
        self.fsync = on;
    }

    /// Recovers `dir` (truncating a torn tail of the newest segment), calls `sink` for every
    /// record with an LSN above `skip_through`, and opens a fresh segment for appends.
    pub fn recover(
        dir: &Path,
        skip_through: u64,
        segment_bytes: u64,
        mut sink: impl FnMut(WalRecord) -> Result<(), WalError>,
    ) -> Result<(Self, RecoveryReport), WalError> {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(io(dir))?;
            if let Some(parent) = dir.parent() {
                fsync_dir(parent)?;
            }
        }
        let segs = segments(dir)?;
        let mut report = RecoveryReport {
            segments: segs.len(),
            last_lsn: skip_through,
            ..Default::default()
        };
        for (i, (_, path)) in segs.iter().enumerate() {
            let newest = i + 1 == segs.len();
            let mut r = SegmentReader::open(path)?;
            loop {
                match r.next_record() {
                    Next::Record(rec) => {
                        report.records += 1;
                        report.last_lsn = report.last_lsn.max(rec.lsn);
                        if rec.lsn > skip_through {
                            sink(rec)?;
                        }
                    }
                    Next::End => break,
                    Next::Bad { offset, why } => {
                        if !newest {
                            return Err(WalError::Corrupt {
                                path: path.clone(),
                                offset,
                                why,
                            });
                        }
                        if let Some(at) = r.valid_record_after(offset) {
                            // Intact records after the bad one: not a torn tail but damage in
                            // the middle of acknowledged data. Cutting would lose them.
                            return Err(WalError::Corrupt {
                                path: path.clone(),
                                offset,
                                why: format!("{why}; an intact record follows at byte {at}"),
                            });
                        }
                        let len = r.data.len() as u64;
                        tracing::warn!(
                            segment = %path.display(), offset, bytes = len - offset, %why,
                            "truncating torn WAL tail"
                        );
                        let f = OpenOptions::new()
                            .write(true)
                            .open(path)
                            .map_err(io(path))?;
                        f.set_len(offset).map_err(io(path))?;
                        f.sync_all().map_err(io(path))?;
                        report.torn_tails += 1;
                        report.torn_bytes += len - offset;
                        break;
                    }
                }
            }
        }
        let next_lsn = report.last_lsn + 1;
        let w = Self::create_segment(dir, next_lsn, segment_bytes)?;
        Ok((w, report))
    }

    fn create_segment(dir: &Path, first_lsn: u64, segment_bytes: u64) -> Result<Self, WalError> {
        let path = dir.join(format!("{first_lsn:020}.wal"));
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
        // The new name must survive a crash before any record in it is called durable.
        fsync_dir(dir)?;
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            path,
            out: BufWriter::with_capacity(1 << 20, f),
            bytes: 0,
            next_lsn: first_lsn,
            synced_lsn: first_lsn - 1,
            buf: Vec::new(),
            segment_bytes,
            fsync: true,
        })
    }

    /// Appends one record (buffered, not yet durable); returns its LSN.
    pub fn append(&mut self, table: Table, batch: &RecordBatch) -> Result<u64, WalError> {
        let lsn = self.next_lsn;
        encode(table, batch, lsn, &mut self.buf)?;
        if self.buf.len() - HEADER > MAX_RECORD {
            return Err(WalError::Encode(
                arrow::error::ArrowError::InvalidArgumentError(format!(
                    "WAL record of {} bytes is too large",
                    self.buf.len()
                )),
            ));
        }
        self.out.write_all(&self.buf).map_err(io(&self.path))?;
        self.bytes += self.buf.len() as u64;
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// Makes every appended record durable; returns the highest durable LSN. An fsync error
    /// is returned as is: the caller must treat the store as failed (no retry on the same
    /// descriptor — the "fsyncgate" lesson).
    pub fn sync(&mut self) -> Result<u64, WalError> {
        if self.synced_lsn + 1 == self.next_lsn {
            return Ok(self.synced_lsn);
        }
        self.out.flush().map_err(io(&self.path))?;
        if self.fsync {
            self.out.get_ref().sync_data().map_err(io(&self.path))?;
        }
        self.synced_lsn = self.next_lsn - 1;
        if self.bytes >= self.segment_bytes {
            self.rotate()?;
        }
        Ok(self.synced_lsn)
    }

    /// Starts a new segment (after syncing the current one); returns the last LSN of the old.
    pub fn rotate(&mut self) -> Result<u64, WalError> {
        let last = self.next_lsn - 1;
        if self.bytes == 0 {
            return Ok(last);
        }
        self.out.flush().map_err(io(&self.path))?;
        if self.fsync {
            self.out.get_ref().sync_data().map_err(io(&self.path))?;
        }
        self.synced_lsn = last;
        let fsync = self.fsync;
        *self = Self::create_segment(&self.dir, self.next_lsn, self.segment_bytes)?;
        self.fsync = fsync;
        Ok(last)
    }

    pub fn durable_lsn(&self) -> u64 {
        self.synced_lsn
    }

    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Deletes whole segments whose records all have LSN ≤ `through` (never the open one).
    pub fn delete_through(&self, through: u64) -> Result<usize, WalError> {
        let segs = segments(&self.dir)?;
        let mut deleted = 0;
        for (i, (first, path)) in segs.iter().enumerate() {
            let next_first = segs.get(i + 1).map(|s| s.0);
            // A segment's last LSN is one below the next segment's first.
            let Some(next_first) = next_first else { break };
            if *path == self.path || next_first - 1 > through || *first > through + 1 {
                continue;
            }
            fs::remove_file(path).map_err(io(path))?;
            deleted += 1;
        }
        if deleted > 0 {
            fsync_dir(&self.dir)?;
        }
        Ok(deleted)
    }
}

/// Reads every intact record above `skip_through` without modifying anything (for readers
/// in other processes while a writer runs: a torn tail is simply where reading stops).
pub fn read_all(dir: &Path, skip_through: u64) -> Result<Vec<WalRecord>, WalError> {
    let mut out = Vec::new();
    for (_, path) in segments(dir)? {
        let mut r = match SegmentReader::open(&path) {
            Ok(r) => r,
            // Deleted by a concurrent compaction: the caller re-checks the manifest.
            Err(WalError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                continue;
            }
            Err(e) => return Err(e),
        };
        while let Next::Record(rec) = r.next_record() {
            if rec.lsn > skip_through {
                out.push(rec);
            }
        }
    }
    Ok(out)
}
