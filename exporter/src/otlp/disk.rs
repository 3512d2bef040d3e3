//! The on-disk queue: what the exporter accepted survives `kill -9` (and, with the fsync below, a power cut) and
//! is delivered after a restart.
//!
//! Layout of the directory: append-only segment files `00000000000000000007.seg` holding records, an `ack` file
//! naming the first record not yet delivered (segment number and byte offset, 16 bytes), and a `lock` file. A
//! record is `[payload length u32][item count u32][crc32 of count and payload u32]` (little-endian) then the
//! payload, an encoded OTLP export request.
//!
//! Durability: every append is followed by `fsync` of the segment (and of the directory when a segment is
//! created) before `push` returns, so an accepted batch is on disk. The ack file is replaced (write, rename)
//! after each delivery without `fsync`: losing an ack only means a batch is sent again, which at-least-once
//! delivery allows. Fully delivered segments are deleted, and once everything is delivered all segments are
//! removed, so an idle queue keeps only the small `ack` and `lock` files.
//!
//! Recovery: opening reads every segment and sorts its bytes into valid records and bad stretches.
//! - A crash during an append leaves a torn record at the end of the last segment (short, or failing its
//!   checksum). Its `push` never returned, so it was never accepted: it is cut off, warned about and reported
//!   (`truncated_bytes`), not counted as lost.
//! - Anywhere else a record failing its checksum is corruption. When its length leads to a valid record, only it
//!   is skipped. When it does not (the length itself is bad), the bytes after it are searched for the next
//!   position where a whole record verifies, and reading resumes there, so valid records after the damage are
//!   not lost. The search hashes at most `RESYNC_BUDGET_FACTOR` times the segment's bytes (plus
//!   `RESYNC_BUDGET_BASE`), so a segment of garbage costs linear time; it passes over positions followed by a
//!   header whose length is impossible, which is what keeps it cheap (the price: a valid record followed
//!   directly by another one with a corrupt length is skipped with the stretch before it).
//! - What is skipped is counted, never silently lost: records (one per record when the lengths in a bad stretch
//!   still chain from one valid record to the next, else one for the whole stretch, a lower bound) and items (as
//!   a header says when that can be believed, else one per record). The exporter adds the items to
//!   `memdrift_exporter_dropped_total`; one warning per open names the first damaged segment and offset and the
//!   totals.
//!
//! Ack validation: the ack is checked against what the segments hold before anything is deleted on its
//! strength. It must name an existing segment and a record boundary in it, or the segment after the last at
//! offset 0 (everything delivered, a crash before the segments were deleted); one naming a segment before the
//! first is a crash between deleting a delivered segment and moving the ack on, and resumes at the first. An ack
//! inside a record resumes at that record's start; one past the end of its segment, naming any other segment or
//! of the wrong size acknowledges nothing in that segment (or at all): batches are sent again, which
//! at-least-once allows, rather than lost. An invalid ack is warned about with what was wrong, reported
//! (`invalid_ack`), and replaced by the position delivery resumes from.
//!
//! Lock: the queue holds an exclusive advisory lock (`flock`) on the `lock` file for its lifetime, with its
//! process id written in it. A second opener of the directory, in another process or the same one, is refused
//! with an error naming the directory and the holder's pid: two writers of one queue send some batches twice
//! and lose others. The lock is released when the queue is dropped or its process dies, so a crash never leaves
//! the directory locked.
//!
//! Bounds: at most `max_batches` records and `max_bytes` of segment files (a segment is cut at a quarter of that,
//! so delivered-but-not-yet-deleted records waste at most a quarter); a push beyond either is refused and counted
//! by the caller.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

const HEADER: u64 = 12;
/// A payload larger than this is taken for a corrupt length.
const MAX_PAYLOAD: u64 = 64 << 20;
/// No segment this queue writes is longer: a segment is cut at `segment_limit` (at most `MAX_PAYLOAD`) unless it
/// holds a single record. Opening reads no more of a segment; anything beyond is counted as corrupt.
const MAX_SEGMENT: u64 = HEADER + MAX_PAYLOAD;
/// The search for the next valid record after a corrupt length may hash this many times the segment's bytes...
const RESYNC_BUDGET_FACTOR: u64 = 64;
/// ... plus this many.
const RESYNC_BUDGET_BASE: u64 = 64 << 20;
const ACK_FILE: &str = "ack";
const LOCK_FILE: &str = "lock";
const SEGMENT_SUFFIX: &str = ".seg";

/// Why a push was refused.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the on-disk queue is full ({0})")]
    Full(&'static str),
    #[error("cannot write to the on-disk queue: {0}")]
    Io(#[from] io::Error),
}

/// A record's place, kept in memory for every undelivered record.
#[derive(Clone, Copy, Debug)]
struct Entry {
    segment: u64,
    offset: u64,
    len: u64,
    items: u32,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    len: u64,
}

/// What opening found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Undelivered batches from an earlier run.
    pub batches: usize,
    /// Bytes cut off the end of the last segment: a torn append (or anything else past its last valid record).
    pub truncated_bytes: u64,
    /// Records skipped as corrupt (at least this many: a stretch whose record boundaries are lost counts as one).
    pub corrupt_records: u64,
    /// Items in those records (a header's count where it can be believed, else one per record); the exporter
    /// counts them in `memdrift_exporter_dropped_total`.
    pub corrupt_items: u64,
    /// Bytes of those records.
    pub corrupt_bytes: u64,
    /// What was wrong with the ack file, when it was ignored (in part or whole).
    pub invalid_ack: Option<String>,
}

#[derive(Debug)]
pub struct DiskQueue {
    dir: PathBuf,
    max_batches: usize,
    max_bytes: u64,
    segment_limit: u64,
    /// Live segments, oldest first; the last one takes appends.
    segments: VecDeque<Segment>,
    writer: Option<File>,
    reader: Option<(u64, File)>,
    pending: VecDeque<Entry>,
    /// Where the next undelivered record would start when `pending` is empty.
    next_seq: u64,
    /// Holds the directory's lock until the queue is dropped.
    _lock: File,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"))
}

fn checksum(items: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&items.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The fixed part of a record.
#[derive(Clone, Copy, Debug)]
struct Header {
    len: u64,
    items: u32,
    crc: u32,
}

impl Header {
    /// The header at `at`, if a whole one is there.
    fn at(data: &[u8], at: usize) -> Option<Header> {
        let b: &[u8; HEADER as usize] = data
            .get(at..at.checked_add(HEADER as usize)?)?
            .try_into()
            .ok()?;
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(Header {
            len: u64::from(word(0)),
            items: word(4),
            crc: word(8),
        })
    }
}

/// The record at `at` and where it ends, when its header describes one that fits in `data` and is no longer than
/// any this queue writes. Its checksum is not checked.
fn plausible(data: &[u8], at: usize) -> Option<(Header, usize)> {
    let h = Header::at(data, at)?;
    if h.len > MAX_PAYLOAD {
        return None;
    }
    let end = at.checked_add(usize::try_from(HEADER + h.len).ok()?)?;
    (end <= data.len()).then_some((h, end))
}

/// The record at `at` and where it ends, when it is whole and passes its checksum.
fn valid(data: &[u8], at: usize) -> Option<(Header, usize)> {
    let (h, end) = plausible(data, at)?;
    let payload = data.get(at + HEADER as usize..end)?;
    (checksum(h.items, payload) == h.crc).then_some((h, end))
}

/// A stretch of a segment holding no valid record, and what it held as far as can be told.
#[derive(Clone, Copy, Debug)]
struct Gap {
    offset: u64,
    len: u64,
    lost: Lost,
}

/// Records and items lost in a gap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Lost {
    records: u64,
    items: u64,
}

/// The item count of a record that failed its checksum, if it can be believed: every item takes at least a
/// byte of an encoded request, so a count of zero or above the payload's length is itself corrupt.
fn believable_items(items: u32, payload_len: u64) -> Option<u64> {
    (items >= 1 && u64::from(items) <= payload_len).then_some(u64::from(items))
}

/// The records in the bad stretch `data[from..to]` and the items of the last one, when the lengths in it still
/// lead from `from` to exactly `to` (say a flipped bit in a payload); `None` when where records began is lost.
fn chain(data: &[u8], from: usize, to: usize) -> Option<(Lost, u64)> {
    let mut lost = Lost::default();
    let mut last = 0;
    let mut at = from;
    while at < to {
        let (h, end) = plausible(data, at).filter(|(_, end)| *end <= to)?;
        last = believable_items(h.items, h.len)?;
        lost.records += 1;
        lost.items += last;
        at = end;
    }
    Some((lost, last))
}

/// What the bad stretch `data[from..to]` held. With `torn_tail` it ends the last segment and its last record is
/// the append a crash interrupted, which was never accepted and is not counted.
fn lost_in(data: &[u8], from: usize, to: usize, torn_tail: bool) -> Lost {
    match chain(data, from, to) {
        Some((mut lost, last)) => {
            if torn_tail && lost.records > 0 {
                lost.records -= 1;
                lost.items -= last;
            }
            lost
        }
        // One torn append whose length no longer fits (a crash within it).
        None if torn_tail => Lost::default(),
        None => {
            let payload_len = ((to - from) as u64).saturating_sub(HEADER);
            let items = Header::at(data, from)
                .and_then(|h| believable_items(h.items, payload_len))
                .unwrap_or(1);
            Lost { records: 1, items }
        }
    }
}

/// Where the first valid record after the bad one at `at` starts, or the end of `data`.
fn resync(data: &[u8], at: usize, budget: &mut u64) -> usize {
    // Only this record is bad (a flipped bit in its payload or count) when its length leads to a valid record.
    if let Some((_, end)) = plausible(data, at) {
        if valid(data, end).is_some() {
            return end;
        }
    }
    // Its length is bad too: try every later position.
    (at + 1..data.len())
        .find(|&p| resumes_at(data, p, budget))
        .unwrap_or(data.len())
}

/// Whether a valid record starts at `p`, during a search. Garbage makes plausible-looking headers at many
/// positions, each costing its length in hashing, so a candidate is hashed only if what follows it could be a
/// record too (the end, a torn header, or a header with a possible length) and while the budget lasts.
fn resumes_at(data: &[u8], p: usize, budget: &mut u64) -> bool {
    let Some((h, end)) = plausible(data, p) else {
        return false;
    };
    let followed_well = data.len() - end < HEADER as usize
        || Header::at(data, end).is_some_and(|next| next.len <= MAX_PAYLOAD);
    if !followed_well || h.len > *budget {
        return false;
    }
    *budget -= h.len;
    valid(data, p).is_some()
}

/// One segment as opening found it: its records and bad stretches cover it from start to end.
#[derive(Debug)]
struct SegmentScan {
    seq: u64,
    /// Bytes in the file.
    len: u64,
    /// Valid records, in order.
    records: Vec<Entry>,
    /// Corrupt stretches, counted as lost.
    gaps: Vec<Gap>,
    /// In the last segment: bad bytes after the last valid record, a torn append, cut before appending again.
    torn: Option<Gap>,
    /// The bytes kept: all but the torn append of the last segment (or anything past the length limit).
    keep: u64,
}

impl SegmentScan {
    fn read(dir: &Path, seq: u64, last: bool) -> io::Result<SegmentScan> {
        let path = segment_path(dir, seq);
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        let mut data = Vec::with_capacity(usize::try_from(len.min(MAX_SEGMENT)).unwrap_or(0));
        (&file).take(MAX_SEGMENT).read_to_end(&mut data)?;
        let mut scan = walk(seq, &data, last);
        scan.len = len;
        let read = data.len() as u64;
        if len > read {
            // Longer than any segment this queue writes: what lies beyond is no record of it.
            scan.gaps.push(Gap {
                offset: read,
                len: len - read,
                lost: Lost {
                    records: 1,
                    items: 1,
                },
            });
        }
        // The last segment takes appends, so it is cut after its last valid record.
        scan.keep = match (last, scan.torn) {
            (false, _) => len,
            (true, Some(torn)) => torn.offset,
            (true, None) => read,
        };
        Ok(scan)
    }

    /// The last place at or before `offset` where a record or a bad stretch starts (or the segment ends).
    fn boundary_at_or_before(&self, offset: u64) -> u64 {
        let starts = self.records.iter().map(|r| r.offset);
        let gaps = self.gaps.iter().chain(self.torn.as_ref()).map(|g| g.offset);
        starts
            .chain(gaps)
            .chain([self.len])
            .filter(|&b| b <= offset)
            .max()
            .unwrap_or(0)
    }

    /// Where delivery resumes for an ack naming this segment at `offset`, and what is wrong with it.
    fn check_ack(&self, offset: u64) -> (Position, Option<String>) {
        let seq = self.seq;
        if offset > self.len {
            let problem = format!(
                "offset {offset} is past the end of segment {seq} ({} bytes); sending that segment again",
                self.len
            );
            return (Position { seq, offset: 0 }, Some(problem));
        }
        let boundary = self.boundary_at_or_before(offset);
        let problem = (boundary != offset).then(|| {
            format!(
                "offset {offset} is inside a record of segment {seq}; resuming at that record, offset \
                 {boundary}"
            )
        });
        (
            Position {
                seq,
                offset: boundary,
            },
            problem,
        )
    }
}

/// Sorts `data`, the bytes of segment `seq`, into valid records and the bad stretches between them.
fn walk(seq: u64, data: &[u8], last: bool) -> SegmentScan {
    let mut scan = SegmentScan {
        seq,
        len: data.len() as u64,
        records: Vec::new(),
        gaps: Vec::new(),
        torn: None,
        keep: data.len() as u64,
    };
    let mut budget =
        RESYNC_BUDGET_BASE.saturating_add(RESYNC_BUDGET_FACTOR.saturating_mul(data.len() as u64));
    let mut at = 0;
    while at < data.len() {
        if let Some((h, end)) = valid(data, at) {
            scan.records.push(Entry {
                segment: seq,
                offset: at as u64,
                len: (end - at) as u64,
                items: h.items,
            });
            at = end;
            continue;
        }
        let end = resync(data, at, &mut budget);
        // Bad bytes up to the end of the last segment are what a crash left of the append it interrupted.
        let torn = last && end == data.len();
        let gap = Gap {
            offset: at as u64,
            len: (end - at) as u64,
            lost: lost_in(data, at, end, torn),
        };
        if torn {
            scan.torn = Some(gap);
        } else {
            scan.gaps.push(gap);
        }
        at = end;
    }
    scan
}

/// The first byte not yet delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    seq: u64,
    offset: u64,
}

/// Where delivery resumes, from the ack checked against the segments on disk (oldest first), and what was wrong
/// with the ack when it was not taken as it is.
fn resume_point(
    ack: Result<Option<(u64, u64)>, String>,
    scans: &[SegmentScan],
) -> (Position, Option<String>) {
    let (Some(first), Some(last)) = (scans.first(), scans.last()) else {
        // Nothing on disk to lose: the ack only numbers the next segment.
        return match ack {
            Ok(Some((seq, _))) => (Position { seq, offset: 0 }, None),
            Ok(None) => (Position { seq: 0, offset: 0 }, None),
            Err(problem) => (Position { seq: 0, offset: 0 }, Some(problem)),
        };
    };
    let everything = Position {
        seq: first.seq,
        offset: 0,
    };
    let (seq, offset) = match ack {
        Ok(Some(ack)) => ack,
        Ok(None) => return (everything, None),
        Err(problem) => {
            return (
                everything,
                Some(format!("{problem}; sending everything again")),
            )
        }
    };
    if let Some(scan) = scans.iter().find(|s| s.seq == seq) {
        return scan.check_ack(offset);
    }
    if seq < first.seq {
        // A crash between deleting the delivered segment it names and moving the ack on.
        return (everything, None);
    }
    if offset == 0 && last.seq.checked_add(1) == Some(seq) {
        // Everything delivered; a crash before the segments were deleted.
        return (Position { seq, offset }, None);
    }
    let problem = format!(
        "it names segment {seq} (offset {offset}), but the segments on disk are {} to {}; sending everything again",
        first.seq, last.seq
    );
    (everything, Some(problem))
}

/// What opening skipped as corrupt, gathered for one warning.
#[derive(Debug, Default)]
struct Skipped {
    /// The first damaged segment and offset.
    first: Option<(u64, u64)>,
    /// The segment counted last, and how many were.
    last_seq: Option<u64>,
    segments: usize,
    lost: Lost,
    bytes: u64,
}

impl Skipped {
    fn add(&mut self, seq: u64, offset: u64, lost: Lost, bytes: u64) {
        if lost.records == 0 {
            return;
        }
        self.first.get_or_insert((seq, offset));
        if self.last_seq != Some(seq) {
            self.last_seq = Some(seq);
            self.segments += 1;
        }
        self.lost.records += lost.records;
        self.lost.items += lost.items;
        self.bytes += bytes;
    }

    fn report(&self, dir: &Path, recovered: &mut Recovered) {
        let Some((seq, offset)) = self.first else {
            return;
        };
        tracing::warn!(
            segment = %segment_path(dir, seq).display(),
            offset,
            segments = self.segments,
            records = self.lost.records,
            items = self.lost.items,
            bytes = self.bytes,
            "skipped corrupt records in the on-disk queue (the first one here); their items are counted as dropped"
        );
        recovered.corrupt_records = self.lost.records;
        recovered.corrupt_items = self.lost.items;
        recovered.corrupt_bytes = self.bytes;
    }
}

/// Takes the directory's lock (a `lock` file holding the pid) for this process, or says who holds it; `setting`
/// names the pipeline key that chose the directory, for the message. Released when the file is dropped or the
/// process dies.
pub fn lock_dir(dir: &Path, setting: &str) -> io::Result<File> {
    let path = dir.join(LOCK_FILE);
    // Not truncated when opened: until the lock is taken, the pid in the file is the holder's.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let pid = fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .map_or_else(|| "unknown".to_string(), |pid| pid.to_string());
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "{setting} {} is in use by another memdrift process (pid {pid}); give each instance its own \
                     directory",
                    dir.display()
                ),
            ));
        }
        Err(TryLockError::Error(e)) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot lock {}: {e}", path.display()),
            ))
        }
    }
    file.set_len(0)?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    Ok(file)
}

/// The numbers of the segment files in `dir`, in order.
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            name.to_str()?.strip_suffix(SEGMENT_SUFFIX)?.parse().ok()
        })
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

fn sync_dir(dir: &Path) {
    // Makes a new segment's name durable; not possible on every platform, and not needed for kill -9.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl DiskQueue {
    /// Opens (creating) the queue in `dir`, locking it, and finds what an earlier run left undelivered.
    pub fn open(
        dir: &Path,
        max_batches: usize,
        max_bytes: u64,
    ) -> io::Result<(DiskQueue, Recovered)> {
        fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
        })?;
        let lock = lock_dir(dir, "queue.directory")?;
        let seqs = list_segments(dir)?;
        let last = seqs.last().copied();
        let scans = seqs
            .iter()
            .map(|&seq| SegmentScan::read(dir, seq, Some(seq) == last))
            .collect::<io::Result<Vec<_>>>()?;
        let (resume, invalid_ack) = resume_point(read_ack(dir), &scans);
        if let Some(problem) = &invalid_ack {
            tracing::warn!(
                ack = %dir.join(ACK_FILE).display(),
                problem = %problem,
                "the on-disk queue's ack is invalid; batches it may have acknowledged are sent again"
            );
        }
        let mut q = DiskQueue {
            dir: dir.to_path_buf(),
            max_batches,
            max_bytes,
            segment_limit: (max_bytes / 4).clamp(HEADER + 1, MAX_PAYLOAD),
            segments: VecDeque::new(),
            writer: None,
            reader: None,
            pending: VecDeque::new(),
            next_seq: resume.seq,
            _lock: lock,
        };
        let mut recovered = Recovered {
            invalid_ack,
            ..Recovered::default()
        };
        let mut skipped = Skipped::default();
        for scan in scans {
            if scan.seq < resume.seq {
                // Delivered, as a checked ack says.
                fs::remove_file(segment_path(dir, scan.seq))?;
                continue;
            }
            let from = if scan.seq == resume.seq {
                resume.offset
            } else {
                0
            };
            q.adopt(scan, from, &mut recovered, &mut skipped)?;
        }
        skipped.report(dir, &mut recovered);
        recovered.batches = q.pending.len();
        let Some(oldest) = q.pending.front().copied() else {
            q.clear()?;
            return Ok((q, recovered));
        };
        q.drop_delivered_segments()?;
        // Ack what was found delivered or skipped, so that a later open neither warns nor counts it again.
        write_ack(dir, oldest.segment, oldest.offset)?;
        if let Some(last) = q.segments.back() {
            q.writer = Some(
                OpenOptions::new()
                    .append(true)
                    .open(segment_path(dir, last.seq))?,
            );
        }
        Ok((q, recovered))
    }

    /// Takes one segment's findings from `from` on: its records join the queue and its corrupt stretches are
    /// counted; a torn append at the end of the last segment is cut so that appends follow valid records.
    fn adopt(
        &mut self,
        scan: SegmentScan,
        from: u64,
        recovered: &mut Recovered,
        skipped: &mut Skipped,
    ) -> io::Result<()> {
        let keep = scan.keep;
        for gap in scan.gaps.iter().filter(|g| g.offset >= from) {
            skipped.add(scan.seq, gap.offset, gap.lost, gap.len);
        }
        if let Some(torn) = scan.torn.filter(|t| t.offset >= from) {
            // Records before the torn one whose lengths still chain (their bytes are in `truncated_bytes`).
            skipped.add(scan.seq, torn.offset, torn.lost, 0);
        }
        if keep < scan.len {
            self.cut(scan.seq, keep, scan.len)?;
            recovered.truncated_bytes += scan.len - keep;
        }
        self.pending
            .extend(scan.records.into_iter().filter(|r| r.offset >= from));
        self.segments.push_back(Segment {
            seq: scan.seq,
            len: keep,
        });
        self.next_seq = scan.seq;
        Ok(())
    }

    /// Cuts segment `seq` from `len` bytes to `keep`.
    fn cut(&self, seq: u64, keep: u64, len: u64) -> io::Result<()> {
        let path = segment_path(&self.dir, seq);
        tracing::warn!(
            segment = %path.display(),
            offset = keep,
            bytes = len - keep,
            "cutting a torn record off the end of the on-disk queue"
        );
        let f = OpenOptions::new().write(true).open(&path)?;
        f.set_len(keep)?;
        f.sync_all()
    }

    /// Undelivered batches.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Bytes of segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Appends one batch and makes it durable.
    pub fn push(&mut self, items: u32, payload: &[u8]) -> Result<(), PushError> {
        let rec = HEADER + payload.len() as u64;
        if self.pending.len() >= self.max_batches {
            return Err(PushError::Full("queue.size batches"));
        }
        if payload.len() as u64 > MAX_PAYLOAD || self.disk_bytes() + rec > self.max_bytes {
            return Err(PushError::Full("queue.max_disk_bytes"));
        }
        let rotate = match self.segments.back() {
            None => true,
            Some(s) => s.len > 0 && s.len + rec > self.segment_limit,
        };
        if rotate || self.writer.is_none() {
            let seq = match self.segments.back() {
                None => self.next_seq,
                // Never reuse a number: opening it truncates the segment.
                Some(s) => s
                    .seq
                    .checked_add(1)
                    .ok_or_else(|| io::Error::other("segment numbers are exhausted"))?,
            };
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(segment_path(&self.dir, seq))?;
            sync_dir(&self.dir);
            self.segments.push_back(Segment { seq, len: 0 });
            self.writer = Some(file);
        }
        let (Some(writer), Some(segment)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            return Err(PushError::Io(io::Error::other("no segment to append to")));
        };
        let mut record = Vec::with_capacity(rec as usize);
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&items.to_le_bytes());
        record.extend_from_slice(&checksum(items, payload).to_le_bytes());
        record.extend_from_slice(payload);
        let written = writer.write_all(&record).and_then(|()| writer.sync_data());
        if let Err(e) = written {
            // Leave no torn record behind for the reader.
            let _ = writer.set_len(segment.len);
            return Err(PushError::Io(e));
        }
        self.pending.push_back(Entry {
            segment: segment.seq,
            offset: segment.len,
            len: rec,
            items,
        });
        segment.len += rec;
        Ok(())
    }

    /// The oldest undelivered batch: its item count and payload. `Err` carries the item count of a record that
    /// can no longer be read (the caller counts it and acks past it).
    pub fn front(&mut self) -> Option<Result<(u32, Bytes), (u32, io::Error)>> {
        let entry = *self.pending.front()?;
        Some(self.read(entry).map_err(|e| (entry.items, e)))
    }

    fn read(&mut self, entry: Entry) -> io::Result<(u32, Bytes)> {
        if self
            .reader
            .as_ref()
            .is_none_or(|(seq, _)| *seq != entry.segment)
        {
            let f = File::open(segment_path(&self.dir, entry.segment))?;
            self.reader = Some((entry.segment, f));
        }
        let Some((_, f)) = self.reader.as_mut() else {
            return Err(io::Error::other("no reader"));
        };
        f.seek(SeekFrom::Start(entry.offset))?;
        let mut record = vec![0u8; usize::try_from(entry.len).map_err(io::Error::other)?];
        f.read_exact(&mut record)?;
        match valid(&record, 0) {
            Some((h, end)) if end == record.len() => {
                Ok((h.items, Bytes::from(record).slice(HEADER as usize..)))
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "record at {} of segment {} fails its checksum",
                    entry.offset, entry.segment
                ),
            )),
        }
    }

    /// Marks the oldest batch delivered (or given up): records the ack and deletes segments no longer needed.
    pub fn ack(&mut self) -> io::Result<()> {
        if self.pending.pop_front().is_none() {
            return Ok(());
        }
        let Some(next) = self.pending.front().copied() else {
            return self.clear();
        };
        self.drop_delivered_segments()?;
        write_ack(&self.dir, next.segment, next.offset)
    }

    /// Deletes the segments before the one holding the oldest undelivered record: nothing in them is needed.
    fn drop_delivered_segments(&mut self) -> io::Result<()> {
        let Some(oldest) = self.pending.front().map(|p| p.segment) else {
            return Ok(());
        };
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.seq < oldest) {
            if let Some(s) = self.segments.pop_front() {
                if self.reader.as_ref().is_some_and(|(seq, _)| *seq == s.seq) {
                    self.reader = None;
                }
                fs::remove_file(segment_path(&self.dir, s.seq))?;
            }
        }
        Ok(())
    }

    /// Everything is delivered: remove the segments and start the next one afresh.
    fn clear(&mut self) -> io::Result<()> {
        self.writer = None;
        self.reader = None;
        // Numbering starts over only when it ran out, with no segment left for a new one to collide with.
        let next = self
            .segments
            .back()
            .map_or(Some(self.next_seq), |s| s.seq.checked_add(1))
            .unwrap_or(0);
        write_ack(&self.dir, next, 0)?;
        for s in self.segments.drain(..) {
            fs::remove_file(segment_path(&self.dir, s.seq))?;
        }
        self.next_seq = next;
        Ok(())
    }
}

/// The ack file's position: `Ok(None)` when there is none (nothing delivered yet), `Err` saying what is wrong.
fn read_ack(dir: &Path) -> Result<Option<(u64, u64)>, String> {
    let b = match fs::read(dir.join(ACK_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("it cannot be read ({e})")),
    };
    let Ok(b) = <[u8; 16]>::try_from(b.as_slice()) else {
        return Err(format!("it is {} bytes long, not 16", b.len()));
    };
    let mut seq = [0u8; 8];
    let mut offset = [0u8; 8];
    seq.copy_from_slice(&b[..8]);
    offset.copy_from_slice(&b[8..]);
    Ok(Some((u64::from_le_bytes(seq), u64::from_le_bytes(offset))))
}

fn write_ack(dir: &Path, seq: u64, offset: u64) -> io::Result<()> {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..].copy_from_slice(&offset.to_le_bytes());
    let tmp = dir.join("ack.tmp");
    fs::write(&tmp, b)?;
    fs::rename(tmp, dir.join(ACK_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> TempDir {
            let p =
                std::env::temp_dir().join(format!("memdrift-diskq-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn payload(i: u32) -> Vec<u8> {
        format!("batch-{i}").into_bytes()
    }

    fn segments(dir: &Path) -> usize {
        fs::read_dir(dir)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(SEGMENT_SUFFIX))
                })
                .count()
            })
            .unwrap_or(0)
    }

    #[test]
    fn batches_survive_reopening_in_order_and_acks_persist() {
        let tmp = TempDir::new("reopen");
        {
            let (mut q, rec) = DiskQueue::open(&tmp.0, 100, 1 << 20).expect("opens");
            assert_eq!(rec, Recovered::default());
            for i in 0..5 {
                q.push(i + 1, &payload(i)).expect("pushes");
            }
            let (items, p) = q.front().expect("some").expect("reads");
            assert_eq!((items, p.as_ref()), (1, payload(0).as_slice()));
            q.ack().expect("acks");
            q.ack().expect("acks");
            // Dropped without any shutdown, as a kill would.
        }
        let (mut q, rec) = DiskQueue::open(&tmp.0, 100, 1 << 20).expect("reopens");
        assert_eq!(rec.batches, 3);
        for i in 2..5 {
            let (items, p) = q.front().expect("some").expect("reads");
            assert_eq!((items, p.as_ref()), (i + 1, payload(i).as_slice()));
            q.ack().expect("acks");
        }
        assert!(q.front().is_none());
        assert_eq!(segments(&tmp.0), 0, "an empty queue keeps no segment");
        // New batches after a full drain go to a fresh segment and are found again.
        q.push(9, b"late").expect("pushes");
        drop(q);
        let (mut q, rec) = DiskQueue::open(&tmp.0, 100, 1 << 20).expect("reopens");
        assert_eq!(rec.batches, 1);
        assert_eq!(q.front().expect("some").expect("reads").1.as_ref(), b"late");
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_records_before_it_kept() {
        let tmp = TempDir::new("torn");
        {
            let (mut q, _) = DiskQueue::open(&tmp.0, 100, 1 << 20).expect("opens");
            q.push(1, &payload(0)).expect("pushes");
            q.push(1, &payload(1)).expect("pushes");
        }
        let seg = segment_path(&tmp.0, 0);
        let len = fs::metadata(&seg).expect("segment").len();
        // A crash in the middle of the second append.
        let f = OpenOptions::new().write(true).open(&seg).expect("opens");
        f.set_len(len - 3).expect("truncates");
        drop(f);
        let (mut q, rec) = DiskQueue::open(&tmp.0, 100, 1 << 20).expect("reopens");
        assert_eq!(rec.batches, 1);
        assert_eq!(rec.truncated_bytes, HEADER + payload(1).len() as u64 - 3);
        q.push(2, b"after").expect("appends after the cut");
        drop(q);

        // A flipped payload byte fails the checksum the same way.
        let mut bytes = fs::read(&seg).expect("reads");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&seg, bytes).expect("writes");
        let (mut q, rec) = DiskQueue::open(&tmp.0, 100, 1 << 20).expect("reopens");
        assert_eq!(rec.batches, 1);
        assert_eq!(
            q.front().expect("some").expect("reads").1.as_ref(),
            payload(0)
        );
    }

    #[test]
    fn bounds_refuse_pushes_and_segments_rotate_and_go() {
        let tmp = TempDir::new("bounds");
        let (mut q, _) = DiskQueue::open(&tmp.0, 3, 1 << 20).expect("opens");
        for i in 0..3 {
            q.push(1, &payload(i)).expect("pushes");
        }
        assert!(matches!(q.push(1, b"x"), Err(PushError::Full(_))));
        drop(q);
        let tmp = TempDir::new("bytes");
        // 400 bytes at most: segments are cut at 100 bytes, so each 60-byte record gets its own.
        let (mut q, _) = DiskQueue::open(&tmp.0, 100, 400).expect("opens");
        let big = vec![7u8; 48];
        for _ in 0..6 {
            q.push(1, &big).expect("pushes");
        }
        assert!(matches!(q.push(1, &big), Err(PushError::Full(_))));
        assert_eq!(segments(&tmp.0), 6);
        q.ack().expect("acks");
        q.ack().expect("acks");
        assert_eq!(segments(&tmp.0), 4, "delivered segments are deleted");
        q.push(1, &big).expect("room again");
        drop(q);
        let (q, rec) = DiskQueue::open(&tmp.0, 100, 400).expect("reopens");
        assert_eq!(rec.batches, 5);
        assert_eq!(q.len(), 5);
    }

    /// Pushes batches 0..n (batch `i` has `i + 1` items and `payload(i)`) into a fresh queue and closes it.
    fn fill(dir: &Path, n: u32, max_bytes: u64) {
        let (mut q, _) = DiskQueue::open(dir, 100, max_bytes).expect("opens");
        for i in 0..n {
            q.push(i + 1, &payload(i)).expect("pushes");
        }
    }

    /// Where batch `i` starts when batches 0.. share one segment.
    fn offset_of(i: u32) -> usize {
        (0..i).map(|j| HEADER as usize + payload(j).len()).sum()
    }

    fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = fs::read(path).expect("reads");
        f(&mut bytes);
        fs::write(path, bytes).expect("writes");
    }

    /// Delivers everything left: the payloads in order.
    fn drain(q: &mut DiskQueue) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(batch) = q.front() {
            out.push(batch.expect("reads").1.to_vec());
            q.ack().expect("acks");
        }
        out
    }

    fn payloads(batches: &[u32]) -> Vec<Vec<u8>> {
        batches.iter().map(|&i| payload(i)).collect()
    }

    fn record(items: u32, payload: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        r.extend_from_slice(&items.to_le_bytes());
        r.extend_from_slice(&checksum(items, payload).to_le_bytes());
        r.extend_from_slice(payload);
        r
    }

    fn set_ack(dir: &Path, bytes: &[u8]) {
        fs::write(dir.join(ACK_FILE), bytes).expect("writes the ack");
    }

    fn ack_bytes(seq: u64, offset: u64) -> Vec<u8> {
        [seq.to_le_bytes(), offset.to_le_bytes()].concat()
    }

    #[test]
    fn a_flipped_byte_in_a_middle_record_skips_only_that_record() {
        let tmp = TempDir::new("flip");
        fill(&tmp.0, 4, 1 << 20);
        edit(&segment_path(&tmp.0, 0), |b| {
            b[offset_of(1) + HEADER as usize + 2] ^= 0x40
        });
        let (mut q, rec) = DiskQueue::open(&tmp.0, 100, 1 << 20).expect("reopens");
        assert_eq!(
            rec,
            Recovered {
                batches: 3,
                corrupt_records: 1,
                corrupt_items: 2,
                corrupt_bytes: HEADER + payload(1).len() as u64,
                ..Recovered::default()
            }
        );
        assert_eq!(drain(&mut q), payloads(&[0, 2, 3]));
    }

    #[test]
    fn a_corrupt_length_is_passed_by_searching_for_the_next_valid_record() {
        let true_len = payload(1).len() as u32;
        // Larger than any record, landing inside the next record, and zero.
        for bad_len in [0xffff_ff00, true_len + 5, 0] {
            let tmp = TempDir::new(&format!("length-{bad_len}"));
            fill(&tmp.0, 4, 1 << 20);
            let at = offset_of(1);
            edit(&segment_path(&tmp.0, 0), |b| {
                b[at..at + 4].copy_from_slice(&bad_len.to_le_bytes())
            });
            let (mut q, rec) = DiskQueue::open(&tmp.0, 100, 1 << 20).expect("reopens");
            // Records 1, 3 and 4 recovered; record 2 (its 2 items, as its header says) counted.
            assert_eq!(
                rec,
                Recovered {
                    batches: 3,
                    corrupt_records: 1,
                    corrupt_items: 2,
                    corrupt_bytes: HEADER + u64::from(true_len),
                    ..Recovered::default()
                },
                "length {bad_len}"
            );
            assert_eq!(drain(&mut q), payloads(&[0, 2, 3]), "length {bad_len}");
        }
    }

    #[test]
    fn a_zeroed_stretch_over_two_records_counts_as_one_a_lower_bound() {
        let tmp = TempDir::new("zeroed");
        fill(&tmp.0, 5, 1 << 20);
        // From record 2's item count to the middle of record 3's header: where record 3 began is lost.
        let (from, to) = (offset_of(1) + 4, offset_of(2) + 8);
        edit(&segment_path(&tmp.0, 0), |b| b[from..to].fill(0));
        let (mut q, rec) = DiskQueue::open(&tmp.0, 100, 1 << 20).expect("reopens");
        assert_eq!(
            rec,
            Recovered {
                batches: 3,
                corrupt_records: 1,
                // The count in record 2's header was zeroed too: one per record.
                corrupt_items: 1,
                corrupt_bytes: (offset_of(3) - offset_of(1)) as u64,
                ..Recovered::default()
            }
        );
        assert_eq!(drain(&mut q), payloads(&[0, 3, 4]));
    }

    #[test]
    fn records_after_a_stretch_of_garbage_are_found_again() {
        let tmp = TempDir::new("garbage");
        fs::create_dir_all(&tmp.0).expect("creates");
        // 64 KiB of xorshift noise between two valid records, and one after.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let garbage: Vec<u8> = (0..1 << 16)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let bytes = [
            record(1, &payload(0)),
            garbage.clone(),
            record(2, &payload(1)),
            record(3, &payload(2)),
        ]
        .concat();
        fs::write(segment_path(&tmp.0, 0), bytes).expect("writes");
        let (mut q, rec) = DiskQueue::open(&tmp.0, 100, 1 << 20).expect("opens");
        assert_eq!(rec.batches, 3);
        assert_eq!(
            (rec.corrupt_records, rec.corrupt_bytes),
            (1, garbage.len() as u64)
        );
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(drain(&mut q), payloads(&[0, 1, 2]));
    }

    #[test]
    fn corruption_in_an_earlier_segment_is_counted_and_a_torn_tail_is_not() {
        let tmp = TempDir::new("segments");
        // 400 bytes at most: segments are cut at 100 bytes, so each 60-byte record gets its own.
        let (mut q, _) = DiskQueue::open(&tmp.0, 100, 400).expect("opens");
        for i in 0..4 {
            q.push(i + 1, &[i as u8; 48]).expect("pushes");
        }
        drop(q);
        // The only record of segment 1, and the last (torn) one of segment 3.
        edit(&segment_path(&tmp.0, 1), |b| b[20] ^= 1);
        edit(&segment_path(&tmp.0, 3), |b| b[20] ^= 1);
        let (mut q, rec) = DiskQueue::open(&tmp.0, 100, 400).expect("reopens");
        assert_eq!(
            rec,
            Recovered {
                batches: 2,
                truncated_bytes: 60,
                corrupt_records: 1,
                corrupt_items: 2,
                corrupt_bytes: 60,
                ..Recovered::default()
            }
        );
        assert_eq!(drain(&mut q), vec![vec![0u8; 48], vec![2u8; 48]]);
    }

    #[test]
    fn an_ack_naming_a_missing_segment_deletes_nothing_and_everything_is_sent_again() {
        let tmp = TempDir::new("ack999");
        // Five 19-byte records per 100-byte segment: two segments.
        fill(&tmp.0, 8, 400);
        assert_eq!(segments(&tmp.0), 2);
        set_ack(&tmp.0, &ack_bytes(999, 0));
        let (q, rec) = DiskQueue::open(&tmp.0, 100, 400).expect("reopens");
        assert_eq!(rec.batches, 8);
        let problem = rec.invalid_ack.expect("reported");
        assert!(problem.contains("segment 999"), "{problem}");
        assert_eq!(segments(&tmp.0), 2, "nothing deleted");
        drop(q);
        // The ack was replaced by where delivery resumes: no second warning.
        let (mut q, rec) = DiskQueue::open(&tmp.0, 100, 400).expect("reopens");
        assert_eq!(
            rec,
            Recovered {
                batches: 8,
                ..Recovered::default()
            }
        );
        assert_eq!(drain(&mut q), payloads(&[0, 1, 2, 3, 4, 5, 6, 7]));
    }

    #[test]
    fn an_ack_inside_a_record_resumes_at_that_record() {
        let tmp = TempDir::new("ackmid");
        fill(&tmp.0, 3, 1 << 20);
        set_ack(&tmp.0, &ack_bytes(0, offset_of(1) as u64 + 5));
        let (mut q, rec) = DiskQueue::open(&tmp.0, 100, 1 << 20).expect("reopens");
        assert_eq!(rec.batches, 2);
        assert_eq!(
            rec.invalid_ack.as_deref(),
            Some(
                format!(
                    "offset {} is inside a record of segment 0; resuming at that record, offset {}",
                    offset_of(1) + 5,
                    offset_of(1)
                )
                .as_str()
            )
        );
        assert_eq!(drain(&mut q), payloads(&[1, 2]));
    }

    #[test]
    fn acks_are_checked_against_the_segments() {
        let len = offset_of(3) as u64;
        // (ack file, batches then delivered, whether the ack is reported as invalid)
        let cases: [(Vec<u8>, usize, bool); 6] = [
            // A record boundary: valid.
            (ack_bytes(0, offset_of(2) as u64), 1, false),
            // The end of the segment: everything in it delivered.
            (ack_bytes(0, len), 0, false),
            // The segment after the last at 0: everything delivered, a crash before the segments went.
            (ack_bytes(1, 0), 0, false),
            // A missing segment, other than the one after the last at 0.
            (ack_bytes(1, 5), 3, true),
            // Past the end of its segment: nothing in it acknowledged.
            (ack_bytes(0, len + 1), 3, true),
            // Not 16 bytes.
            (vec![1, 2, 3], 3, true),
        ];
        for (i, (ack, batches, invalid)) in cases.into_iter().enumerate() {
            let tmp = TempDir::new(&format!("acks-{i}"));
            fill(&tmp.0, 3, 1 << 20);
            set_ack(&tmp.0, &ack);
            let (_, rec) = DiskQueue::open(&tmp.0, 100, 1 << 20).expect("reopens");
            assert_eq!(
                (rec.batches, rec.invalid_ack.is_some()),
                (batches, invalid),
                "case {i}: {:?}",
                rec.invalid_ack
            );
        }
        // Before the first segment, with segments 5 on: all of them delivered again.
        let scans = [walk(5, &record(1, b"x"), false), walk(6, &[], true)];
        let (resume, problem) = resume_point(Ok(Some((3, 40))), &scans);
        assert_eq!((resume, problem), (Position { seq: 5, offset: 0 }, None));
    }

    #[test]
    fn a_second_open_of_a_locked_directory_is_refused_until_the_first_is_dropped() {
        let tmp = TempDir::new("lock");
        let (first, _) = DiskQueue::open(&tmp.0, 100, 1 << 20).expect("opens");
        let err = DiskQueue::open(&tmp.0, 100, 1 << 20).expect_err("the directory is locked");
        let pid = std::process::id();
        assert_eq!(
            fs::read_to_string(tmp.0.join(LOCK_FILE)).expect("lock file"),
            format!("{pid}\n")
        );
        assert_eq!(err.kind(), io::ErrorKind::ResourceBusy);
        assert_eq!(
            err.to_string(),
            format!(
                "queue.directory {} is in use by another memdrift process (pid {pid}); give each instance its \
                 own directory",
                tmp.0.display()
            )
        );
        drop(first);
        DiskQueue::open(&tmp.0, 100, 1 << 20).expect("opens once the first is gone");
    }
}
