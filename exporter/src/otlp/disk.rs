//! The on-disk queue: what the exporter accepted survives `kill -9` (and, with the fsync below, a power cut) and
//! is delivered after a restart.
//!
//! Layout of the directory: append-only segment files `00000000000000000007.seg` holding records, and an `ack`
//! file naming the first record not yet delivered (segment number and byte offset, 16 bytes). A record is
//! `[payload length u32][item count u32][crc32 of count and payload u32]` (little-endian) then the payload, an
//! encoded OTLP export request.
//!
//! Durability: every append is followed by `fsync` of the segment (and of the directory when a segment is
//! created) before `push` returns, so an accepted batch is on disk. The ack file is replaced (write, rename)
//! after each delivery without `fsync`: losing an ack only means a batch is sent again, which at-least-once
//! delivery allows. A crash during an append leaves a torn record at the tail; opening the queue finds it (short
//! or failing its checksum), truncates the segment there and reports the bytes lost. Fully delivered segments are
//! deleted, and once everything is delivered the files are removed, so an idle queue takes no space.
//!
//! Bounds: at most `max_batches` records and `max_bytes` of segment files (a segment is cut at a quarter of that,
//! so delivered-but-not-yet-deleted records waste at most a quarter); a push beyond either is refused and counted
//! by the caller.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

const HEADER: u64 = 12;
/// A payload larger than this is taken for a corrupt length.
const MAX_PAYLOAD: u64 = 64 << 20;
const ACK_FILE: &str = "ack";
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Undelivered batches from an earlier run.
    pub batches: usize,
    /// Bytes of torn or corrupt records cut off.
    pub truncated_bytes: u64,
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

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

/// Reads the record at the reader's position: `Ok(None)` when the bytes there are no whole, valid record.
fn read_record(r: &mut impl Read, room: u64) -> io::Result<Option<(u32, Vec<u8>)>> {
    if room < HEADER {
        return Ok(None);
    }
    let mut header = [0u8; HEADER as usize];
    r.read_exact(&mut header)?;
    let len = u64::from(u32_at(&header, 0));
    let items = u32_at(&header, 4);
    let crc = u32_at(&header, 8);
    if len > MAX_PAYLOAD || HEADER + len > room {
        return Ok(None);
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok((checksum(items, &payload) == crc).then_some((items, payload)))
}

fn sync_dir(dir: &Path) {
    // Makes a new segment's name durable; not possible on every platform, and not needed for kill -9.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl DiskQueue {
    /// Opens (creating) the queue in `dir` and finds what an earlier run left undelivered.
    pub fn open(
        dir: &Path,
        max_batches: usize,
        max_bytes: u64,
    ) -> io::Result<(DiskQueue, Recovered)> {
        fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
        })?;
        let mut seqs: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?.strip_suffix(SEGMENT_SUFFIX)?.parse().ok()
            })
            .collect();
        seqs.sort_unstable();
        let (ack_seq, ack_offset) = read_ack(dir).unwrap_or((0, 0));
        let mut q = DiskQueue {
            dir: dir.to_path_buf(),
            max_batches,
            max_bytes,
            segment_limit: (max_bytes / 4).clamp(HEADER + 1, MAX_PAYLOAD),
            segments: VecDeque::new(),
            writer: None,
            reader: None,
            pending: VecDeque::new(),
            next_seq: ack_seq,
        };
        let mut recovered = Recovered::default();
        for seq in seqs {
            let path = segment_path(dir, seq);
            if seq < ack_seq {
                fs::remove_file(&path)?;
                continue;
            }
            let start = if seq == ack_seq { ack_offset } else { 0 };
            let (len, cut) = q.scan(seq, start)?;
            recovered.truncated_bytes += cut;
            q.segments.push_back(Segment { seq, len });
            q.next_seq = seq;
        }
        if q.pending.is_empty() {
            q.clear()?;
        } else if let Some(last) = q.segments.back() {
            q.writer = Some(
                OpenOptions::new()
                    .append(true)
                    .open(segment_path(dir, last.seq))?,
            );
        }
        recovered.batches = q.pending.len();
        Ok((q, recovered))
    }

    /// Indexes the records of one segment from `start`; cuts the file at the first bad one. Returns the segment's
    /// length after the cut and the bytes cut.
    fn scan(&mut self, seq: u64, start: u64) -> io::Result<(u64, u64)> {
        let path = segment_path(&self.dir, seq);
        let mut f = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = f.metadata()?.len();
        let mut at = start.min(len);
        f.seek(SeekFrom::Start(at))?;
        let mut r = io::BufReader::new(&mut f);
        while at < len {
            match read_record(&mut r, len - at) {
                Ok(Some((items, payload))) => {
                    let rec = HEADER + payload.len() as u64;
                    self.pending.push_back(Entry {
                        segment: seq,
                        offset: at,
                        len: rec,
                        items,
                    });
                    at += rec;
                }
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        drop(r);
        if at < len {
            tracing::warn!(
                segment = %path.display(),
                offset = at,
                bytes = len - at,
                "cutting a torn or corrupt record off the on-disk queue"
            );
            f.set_len(at)?;
            f.sync_all()?;
        }
        Ok((at, len - at))
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
            let seq = self
                .segments
                .back()
                .map_or(self.next_seq, |s| s.seq.saturating_add(1));
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
        match read_record(f, entry.len)? {
            Some((items, payload)) => Ok((items, Bytes::from(payload))),
            None => Err(io::Error::new(
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
        let Some(done) = self.pending.pop_front() else {
            return Ok(());
        };
        if self.pending.is_empty() {
            return self.clear();
        }
        while self.segments.len() > 1
            && self
                .segments
                .front()
                .is_some_and(|s| self.pending.front().is_some_and(|p| p.segment > s.seq))
        {
            if let Some(s) = self.segments.pop_front() {
                if self.reader.as_ref().is_some_and(|(seq, _)| *seq == s.seq) {
                    self.reader = None;
                }
                fs::remove_file(segment_path(&self.dir, s.seq))?;
            }
        }
        let (seq, offset) = self
            .pending
            .front()
            .map_or((done.segment, done.offset + done.len), |p| {
                (p.segment, p.offset)
            });
        write_ack(&self.dir, seq, offset)
    }

    /// Everything is delivered: remove the segments and start the next one afresh.
    fn clear(&mut self) -> io::Result<()> {
        self.writer = None;
        self.reader = None;
        let next = self
            .segments
            .back()
            .map_or(self.next_seq, |s| s.seq.saturating_add(1));
        write_ack(&self.dir, next, 0)?;
        for s in self.segments.drain(..) {
            fs::remove_file(segment_path(&self.dir, s.seq))?;
        }
        self.next_seq = next;
        Ok(())
    }
}

fn read_ack(dir: &Path) -> Option<(u64, u64)> {
    let b = fs::read(dir.join(ACK_FILE)).ok()?;
    if b.len() != 16 {
        return None;
    }
    let mut seq = [0u8; 8];
    let mut offset = [0u8; 8];
    seq.copy_from_slice(&b[..8]);
    offset.copy_from_slice(&b[8..]);
    Some((u64::from_le_bytes(seq), u64::from_le_bytes(offset)))
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
}
