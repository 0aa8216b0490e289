//! The spool: a durable, append-only queue of requests on disk, so that a dead endpoint neither
//! grows memory nor loses what was accepted, not even across `kill -9`.
//!
//! A spool directory holds numbered segment files (`<first seq>.seg`) of checksummed records
//! ([`record`]), a `lock` file one process holds while it uses the spool, a `spool.id` naming this spool (the prefix of every idempotency key it hands
//! out), and `acked`, the sequence number below which everything is done. Records are appended
//! whole under one lock; a reader follows behind. Delivered (or dead-lettered) records are
//! acknowledged; a segment whose records are all acknowledged is deleted.
//!
//! On start the segments are scanned: a torn record at the end of the newest segment (a crash
//! mid-write) is cut off; a damaged record (bad checksum, garbled length) is skipped, and the scan
//! goes on at the next sound record, so damage never hides the intact records after it; a
//! damaged segment is rewritten with its sound records only. All of it is logged, and the lost
//! records are counted as dropped. `acked` carries a checksum: a damaged one means every record
//! left is delivered again. Every record from `acked` on is delivered again (at least once;
//! endpoints de-duplicate by the idempotency key). The owner of all this state is [`crate::delivery::queue`].

mod record;

/// Bytes of a record's frame header (its length and checksum), for the tests that damage files.
#[cfg(test)]
pub(crate) const FRAME_HEADER_BYTES: usize = record::FRAME_HEADER;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{FsyncPolicy, FullPolicy, SpoolConfig};
use crate::request::Request;

/// How often, at most, the acknowledged position is written to disk. A crash loses at most this
/// much of it: those records are delivered again after a restart.
const ACK_PERSIST_INTERVAL: Duration = Duration::from_millis(250);
/// Bytes read from a segment at once.
const READ_CHUNK: usize = 256 << 10;

/// Why the spool cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Another process has the spool open: two writers would interleave their records.
    #[error("spool {0}: in use by another mqhook (one process per spool directory)")]
    InUse(PathBuf),
    /// A file or the directory could not be read, written or created.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_path_buf(), source }
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    bytes: u64,
}

/// Where the reader is: a segment (by its first sequence number) and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    segment: u64,
    offset: u64,
}

/// What [`Spool::open`] found on disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct Recovered {
    /// Everything below this is done.
    pub acked: u64,
    /// The next sequence number to hand out.
    pub next_seq: u64,
}

/// Whether a new record got into the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It fits.
    Fits,
    /// It fits now that the oldest segment, with these records, is gone (`drop_oldest`).
    DroppedOldest(Dropped),
    /// The spool is full and refuses it (`reject_new` or `block`, or nothing left to drop).
    Refused,
    /// The record alone is larger than the whole spool (`max_size`): it never fits.
    TooLarge,
}

/// Records dropped to make room, when the spool is full and drops its oldest.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Sequence numbers `[from, to)` of the segment dropped.
    pub from: u64,
    /// End (exclusive).
    pub to: u64,
}

/// The spool's files and positions. Not synchronised: [`crate::delivery::queue`] owns it.
#[derive(Debug)]
pub struct Spool {
    /// Held (locked) while the spool is open; the lock goes with the process, even on `kill -9`.
    _lock: File,
    dir: PathBuf,
    id: String,
    config: SpoolConfig,
    segments: VecDeque<Segment>,
    writer: File,
    reader: Position,
    total_bytes: u64,
    last_sync: Instant,
    acked_persisted: u64,
    last_persist: Instant,
}

impl Spool {
    /// Opens (or creates) the spool in `config.dir` and recovers what it holds.
    pub fn open(config: &SpoolConfig) -> Result<(Spool, Recovered), SpoolError> {
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let lock_path = dir.join("lock");
        let lock =
            File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::InUse(dir)),
            Err(fs::TryLockError::Error(error)) => return Err(io_error(&lock_path)(error)),
        }
        let id = read_or_create_id(&dir)?;
        let acked_path = dir.join("acked");
        let acked = match fs::read(&acked_path) {
            Ok(text) => parse_acked(&String::from_utf8_lossy(&text)).unwrap_or_else(|| {
                tracing::error!(file = %acked_path.display(), "The acknowledged position is damaged; every record left is delivered again.");
                0
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
            Err(error) => return Err(io_error(&acked_path)(error)),
        };
        let mut recovered = Recovered { acked, next_seq: acked };
        let mut segments = VecDeque::new();
        let mut found = segment_files(&dir)?;
        found.sort();
        let newest = found.last().map(|(first, _)| *first);
        for (first_seq, path) in found {
            let scan = scan_segment(&path, first_seq, Some(first_seq) == newest)?;
            if let Some(last) = scan.last_seq {
                recovered.next_seq = recovered.next_seq.max(last + 1);
            }
            recovered.next_seq = recovered.next_seq.max(first_seq);
            segments.push_back(Segment { first_seq, path, bytes: scan.valid_bytes });
        }
        // Segments wholly below `acked` are done; the newest is kept to append to.
        while segments.len() > 1 && segments[1].first_seq <= acked {
            let done = segments.pop_front().expect("two segments");
            fs::remove_file(&done.path).map_err(io_error(&done.path))?;
        }
        if segments.is_empty() {
            let first_seq = recovered.next_seq;
            let path = segment_path(&dir, first_seq);
            File::create(&path).map_err(io_error(&path))?;
            segments.push_back(Segment { first_seq, path, bytes: 0 });
        }
        let active = segments.back().expect("one segment");
        let writer = File::options().append(true).open(&active.path).map_err(io_error(&active.path))?;
        let reader = Position { segment: segments[0].first_seq, offset: 0 };
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let spool = Spool {
            _lock: lock,
            dir,
            id,
            config: config.clone(),
            segments,
            writer,
            reader,
            total_bytes,
            last_sync: Instant::now(),
            acked_persisted: acked,
            last_persist: Instant::now(),
        };
        Ok((spool, recovered))
    }

    /// This spool's name, the prefix of the idempotency keys it hands out.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Bytes on disk now.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Appends one record to `batch` for writing with [`Spool::write`], unless the spool is full
    /// and its policy refuses it; with `drop_oldest` it first makes room.
    pub fn frame(&mut self, seq: u64, request: &Request, batch: &mut Vec<u8>) -> Admission {
        let start = batch.len();
        record::encode(seq, request, batch);
        let needed = self.total_bytes + batch.len() as u64;
        if needed <= self.config.max_size.get() {
            return Admission::Fits;
        }
        if (batch.len() - start) as u64 > self.config.max_size.get() {
            batch.truncate(start);
            return Admission::TooLarge;
        }
        if self.config.on_full == FullPolicy::DropOldest && self.segments.len() > 1 {
            match self.drop_oldest() {
                Ok(dropped) => return Admission::DroppedOldest(dropped),
                Err(error) => tracing::error!("Cannot drop the spool's oldest segment: {error}."),
            }
        }
        batch.truncate(start);
        Admission::Refused
    }

    /// Writes framed records (one `write` call, so a crash leaves at most one torn record) and
    /// syncs them as the fsync policy says. Rolls over to a new segment first when the active
    /// one is full; `next_seq` is the sequence number of the batch's first record.
    pub fn write(&mut self, batch: &[u8], next_seq: u64) -> Result<(), SpoolError> {
        if batch.is_empty() {
            return Ok(());
        }
        let active = self.segments.back().expect("one segment");
        if active.bytes >= self.config.segment_size.get() && active.first_seq < next_seq {
            let path = segment_path(&self.dir, next_seq);
            self.writer = File::options().create(true).append(true).open(&path).map_err(io_error(&path))?;
            self.segments.push_back(Segment { first_seq: next_seq, path, bytes: 0 });
        }
        let active = self.segments.back_mut().expect("one segment");
        self.writer.write_all(batch).map_err(io_error(&active.path))?;
        active.bytes += batch.len() as u64;
        self.total_bytes += batch.len() as u64;
        let due = match self.config.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(every) => self.last_sync.elapsed() >= every,
            FsyncPolicy::Never => false,
        };
        if due {
            self.sync()?;
        }
        Ok(())
    }

    /// Puts the reader at the end of what is written: every record so far is being delivered
    /// from memory, so it need not be read back.
    pub fn skip_to_end(&mut self) {
        let active = self.segments.back().expect("one segment");
        self.reader = Position { segment: active.first_seq, offset: active.bytes };
    }

    /// Reads up to `max` records, or until their bodies reach `max_bytes`, from the reader's
    /// position on, skipping those below `from` (already handed out). Records with a bad checksum
    /// are skipped and counted in `corrupt`.
    pub fn read(
        &mut self,
        from: u64,
        max: usize,
        max_bytes: usize,
        corrupt: &mut u64,
    ) -> Result<Vec<(u64, Request)>, SpoolError> {
        let mut records = Vec::new();
        let mut bytes = 0;
        while records.len() < max && bytes < max_bytes {
            let Some(index) = self.segments.iter().position(|s| s.first_seq == self.reader.segment) else {
                // The reader's segment was dropped; go on with the oldest left.
                self.reader = Position { segment: self.segments[0].first_seq, offset: 0 };
                continue;
            };
            let segment = &self.segments[index];
            if self.reader.offset >= segment.bytes {
                match self.segments.get(index + 1) {
                    Some(next) => {
                        self.reader = Position { segment: next.first_seq, offset: 0 };
                        continue;
                    }
                    None => break,
                }
            }
            let file = File::open(&segment.path).map_err(io_error(&segment.path))?;
            let end = segment.bytes;
            let mut offset = self.reader.offset;
            let length = READ_CHUNK.min((end - offset) as usize);
            let mut chunk = vec![0; length];
            file.read_exact_at(&mut chunk, offset).map_err(io_error(&segment.path))?;
            let mut at = 0;
            while records.len() < max && bytes < max_bytes && at + record::FRAME_HEADER <= chunk.len() {
                let (size, checksum) =
                    record::frame_header(chunk[at..at + record::FRAME_HEADER].try_into().expect("8 bytes"));
                let frame_end = at + record::FRAME_HEADER + size;
                let payload = if frame_end <= chunk.len() {
                    chunk[at + record::FRAME_HEADER..frame_end].to_vec()
                } else if at == 0 {
                    // A record larger than the chunk: read it whole.
                    let mut whole = vec![0; size];
                    file.read_exact_at(&mut whole, offset + record::FRAME_HEADER as u64)
                        .map_err(io_error(&segment.path))?;
                    whole
                } else {
                    break;
                };
                at = frame_end;
                match (crc32fast::hash(&payload) == checksum).then(|| record::decode(&payload)).flatten() {
                    Some((seq, request)) if seq >= from => {
                        bytes += request.body.len();
                        records.push((seq, request));
                    }
                    Some(_) => {}
                    None => *corrupt += 1,
                }
            }
            offset += at as u64;
            self.reader.offset = offset;
            if at == 0 {
                // Not even one frame fits in what is left: the segment's tail is unreadable.
                self.reader.offset = end;
            }
        }
        Ok(records)
    }

    /// Whether [`Spool::release`] would write anything for `acked` now.
    pub fn release_due(&self, acked: u64) -> bool {
        acked != self.acked_persisted && self.last_persist.elapsed() >= ACK_PERSIST_INTERVAL
    }

    /// Everything below `acked` is done: deletes the segments that hold nothing else, and writes
    /// the position down (at most every [`ACK_PERSIST_INTERVAL`], or now with `force`).
    pub fn release(&mut self, acked: u64, force: bool) -> Result<(), SpoolError> {
        if acked == self.acked_persisted || (!force && self.last_persist.elapsed() < ACK_PERSIST_INTERVAL) {
            return Ok(());
        }
        let path = self.dir.join("acked");
        let temporary = self.dir.join("acked.tmp");
        fs::write(&temporary, format_acked(acked)).map_err(io_error(&temporary))?;
        fs::rename(&temporary, &path).map_err(io_error(&path))?;
        self.acked_persisted = acked;
        self.last_persist = Instant::now();
        while self.segments.len() > 1
            && self.segments[1].first_seq <= acked
            && self.segments[0].first_seq != self.reader.segment
        {
            let done = self.segments.pop_front().expect("two segments");
            self.total_bytes -= done.bytes;
            fs::remove_file(&done.path).map_err(io_error(&done.path))?;
        }
        Ok(())
    }

    /// Flushes written records to the disk itself.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.last_sync = Instant::now();
        let active = self.segments.back().expect("one segment");
        self.writer.sync_data().map_err(io_error(&active.path))
    }

    /// Deletes the oldest segment to make room; its records are lost (the caller counts them).
    fn drop_oldest(&mut self) -> Result<Dropped, SpoolError> {
        let oldest = self.segments.pop_front().expect("more than one segment");
        let to = self.segments[0].first_seq;
        self.total_bytes -= oldest.bytes;
        fs::remove_file(&oldest.path).map_err(io_error(&oldest.path))?;
        if self.reader.segment == oldest.first_seq {
            self.reader = Position { segment: to, offset: 0 };
        }
        Ok(Dropped { from: oldest.first_seq, to })
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

/// The `acked` file: the position and a CRC-32 of its digits, so that a damaged file is noticed
/// (and everything delivered again) instead of skipping records that were never delivered.
fn format_acked(acked: u64) -> String {
    let digits = acked.to_string();
    format!("{digits} {:08x}\n", crc32fast::hash(digits.as_bytes()))
}

/// Reads an `acked` file; `None` when it is damaged. A bare number without its checksum (as
/// versions before the checksum wrote it) counts as damaged too: damage can leave a file that
/// looks like one, and trusting it could skip undelivered records, while distrusting it only
/// delivers again (with the same idempotency keys) what was delivered.
fn parse_acked(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let digits = parts.next()?;
    let acked = digits.parse::<u64>().ok()?;
    match (parts.next(), parts.next()) {
        (Some(checksum), None) if u32::from_str_radix(checksum, 16).ok()? == crc32fast::hash(digits.as_bytes()) => {
            Some(acked)
        }
        _ => None,
    }
}

fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        let first = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".seg"))
            .and_then(|stem| stem.parse::<u64>().ok());
        if let Some(first) = first {
            found.push((first, path));
        }
    }
    Ok(found)
}

fn read_or_create_id(dir: &Path) -> Result<String, SpoolError> {
    let path = dir.join("spool.id");
    match fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        Ok(_) => write_new_id(&path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => write_new_id(&path),
        Err(error) => Err(io_error(&path)(error)),
    }
}

fn write_new_id(path: &Path) -> Result<String, SpoolError> {
    let id = format!("{:016x}", fastrand::u64(..));
    fs::write(path, &id).map_err(io_error(path))?;
    Ok(id)
}

/// What a segment holds, found by reading it through.
struct Scan {
    last_seq: Option<u64>,
    valid_bytes: u64,
    corrupt: u64,
}

/// Reads a segment through, checking every checksum. Damage is skipped, not followed: after a
/// record that does not check out (a flipped byte, a garbled length), the scan looks for the next
/// offset where a sound record starts, so one damaged record never hides the intact ones after
/// it. A damaged segment is rewritten with its sound records only (to a temporary file, then
/// renamed), so that the reader never meets the damage again; the records lost are those the
/// reader then finds missing (counted as dropped). In the newest segment a torn tail (a crash
/// mid-write) is simply cut off.
fn scan_segment(path: &Path, first_seq: u64, newest: bool) -> Result<Scan, SpoolError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    let mut scan = Scan { last_seq: None, valid_bytes: 0, corrupt: 0 };
    let mut sound: Vec<std::ops::Range<usize>> = Vec::new();
    let mut at = 0;
    while at + record::FRAME_HEADER <= bytes.len() {
        if let Some((end, seq)) = sound_frame(&bytes, at, None) {
            sound.push(at..end);
            scan.last_seq = Some(seq);
            at = end;
            continue;
        }
        // Damage: resume at the next sound record, if there is one.
        let lowest = scan.last_seq.map_or(first_seq, |last| last + 1);
        match (at + 1..=bytes.len() - record::FRAME_HEADER).find(|&o| sound_frame(&bytes, o, Some(lowest)).is_some()) {
            Some(next) => {
                scan.corrupt += 1;
                at = next;
            }
            None => break,
        }
    }
    let tail = bytes.len() - sound.last().map_or(0, |r| r.end);
    if scan.corrupt == 0 && (tail == 0 || newest) {
        scan.valid_bytes = (bytes.len() - tail) as u64;
        if tail > 0 {
            tracing::warn!(segment = %path.display(), "Cutting off {tail} bytes of a record torn by a crash mid-write.");
            let file = File::options().write(true).open(path).map_err(io_error(path))?;
            file.set_len(scan.valid_bytes).map_err(io_error(path))?;
        }
        return Ok(scan);
    }
    tracing::error!(
        segment = %path.display(),
        "Damaged records found ({} damaged stretches, {tail} unreadable bytes at the end); the segment keeps its {} sound records.",
        scan.corrupt,
        sound.len()
    );
    let repaired: Vec<u8> = sound.iter().flat_map(|range| bytes[range.clone()].iter().copied()).collect();
    let temporary = path.with_extension("seg.repair");
    fs::write(&temporary, &repaired).map_err(io_error(&temporary))?;
    fs::rename(&temporary, path).map_err(io_error(path))?;
    scan.valid_bytes = repaired.len() as u64;
    Ok(scan)
}

/// The end and sequence number of a sound record starting at `at` in `bytes`: its length fits,
/// its checksum matches and it decodes. When resynchronising after damage, `lowest` is the
/// smallest number the next record can have, and a candidate must be at or just above it (a cheap
/// check before the checksum that rules out almost every garbage offset).
fn sound_frame(bytes: &[u8], at: usize, lowest: Option<u64>) -> Option<(usize, u64)> {
    let header: &[u8; record::FRAME_HEADER] = bytes.get(at..at + record::FRAME_HEADER)?.try_into().ok()?;
    let (size, checksum) = record::frame_header(header);
    let end = at + record::FRAME_HEADER + size;
    if size > record::MAX_PAYLOAD || end > bytes.len() {
        return None;
    }
    let payload = &bytes[at + record::FRAME_HEADER..end];
    if let Some(lowest) = lowest {
        let seq = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
        if seq < lowest || seq - lowest > MAX_RESYNC_GAP {
            return None;
        }
    }
    if crc32fast::hash(payload) != checksum {
        return None;
    }
    record::decode(payload).map(|(seq, _)| (end, seq))
}

/// After damage, a record more than this many numbers past the last sound one is taken for a
/// coincidence in the garbage rather than a record.
const MAX_RESYNC_GAP: u64 = 1 << 32;
