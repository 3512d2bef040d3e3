//! State that survives a restart: the engine's and the detectors' state, written to a directory on an interval
//! and at shutdown, read back at start (`service.checkpoint` in the pipeline).
//!
//! A leak or a growth warning rests on an hour of history; without a checkpoint, every restart or rolling
//! upgrade of memdrift would open a blind window that long. With one, a restarted memdrift carries on where it
//! stopped: the same open panes, tracks, sequential evidence, CUSUM levels and open findings (same episodes, so
//! an open finding is not opened twice).
//!
//! The file, `dir/checkpoint`, is written whole to `checkpoint.tmp`, synced and renamed over the old one, so a
//! crash mid-write leaves the previous checkpoint. Layout (integers little-endian):
//!
//! ```text
//! "memdrift checkpoint\n"  magic, 20 bytes
//! version                  u32 (FORMAT_VERSION)
//! body length              u64
//! body CRC-32              u32
//! body                     sections: name length u16, name, data length u64, data
//! ```
//!
//! The first section, `settings`, is the window and detector settings the state was built under: state from
//! other settings (a changed window, step or lookback) means something else, and is not restored. The others
//! are `engine` and one per detector, each the CBOR of that part's state. A checkpoint that is corrupt (bad
//! checksum, cut short), of another version or from other settings is reported, kept aside as
//! `checkpoint.rejected` for a look, and skipped: memdrift starts fresh, never fails for it.
//!
//! Encoding and decoding here are pure; [`store::Store`] is the only part that touches files, and
//! [`store::Checkpoints`] the part the engine thread drives.

pub mod store;

use std::io;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

const MAGIC: &[u8; 20] = b"memdrift checkpoint\n";
/// Raised whenever the encoding of any part's state changes in a way an older reader would misread. 2: four Go
/// runtime signals (a group's per-signal series array is longer).
pub const FORMAT_VERSION: u32 = 3;
const HEADER_LEN: usize = MAGIC.len() + 4 + 8 + 4;
/// The section that names the settings the state was built under.
pub const SETTINGS: &str = "settings";

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt checkpoint: {0}")]
    Corrupt(String),
    #[error("checkpoint format version {found}, this memdrift reads version {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error(
        "the checkpoint was saved under other window or detector settings; state built under those would \
         mislead, so it is not restored"
    )]
    Settings,
    #[error("cannot encode the {section} state: {message}")]
    Encode { section: String, message: String },
    #[error("cannot decode the {section} state: {message}")]
    Decode { section: String, message: String },
    #[error("the checkpoint has no {0} section")]
    Missing(String),
}

impl CheckpointError {
    /// Whether the file itself is at fault (and is set aside), rather than the disk or this process.
    pub fn rejects_file(&self) -> bool {
        !matches!(
            self,
            CheckpointError::Io { .. } | CheckpointError::Encode { .. }
        )
    }
}

/// Encodes one part's state (CBOR) into `out`, a section being written.
pub fn encode<T: Serialize + ?Sized>(
    section: &str,
    state: &T,
    out: &mut dyn io::Write,
) -> Result<(), CheckpointError> {
    ciborium::into_writer(state, out).map_err(|e| CheckpointError::Encode {
        section: section.to_string(),
        message: e.to_string(),
    })
}

/// Writes a checkpoint section by section straight into `out`, never holding it in memory (a state can be tens
/// of megabytes of reservoir values): each section is encoded twice, once to learn its length and once to
/// write it, which needs the state unchanged between the two (it is: the engine thread is the writer). The
/// header's length and checksum are filled in at the end.
pub struct SnapshotWriter<W: io::Write + io::Seek> {
    out: W,
    crc: crc32fast::Hasher,
    len: u64,
}

/// A section's encoding writes through this: into the file, counted and checksummed.
struct Body<'a, W: io::Write + io::Seek>(&'a mut SnapshotWriter<W>);

impl<W: io::Write + io::Seek> io::Write for Body<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.out.write(buf)?;
        self.0.crc.update(&buf[..n]);
        self.0.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.out.flush()
    }
}

/// Counts what an encoding would write.
struct Count(u64);

impl io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: io::Write + io::Seek> SnapshotWriter<W> {
    /// Starts a checkpoint at the start of `out`.
    pub fn new(mut out: W) -> io::Result<SnapshotWriter<W>> {
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_le_bytes())?;
        out.write_all(&[0; 12])?;
        Ok(SnapshotWriter {
            out,
            crc: crc32fast::Hasher::new(),
            len: 0,
        })
    }

    fn head(&mut self, name: &str, len: u64) -> Result<(), CheckpointError> {
        // Section names are ours and short.
        let name = &name.as_bytes()[..name.len().min(usize::from(u16::MAX))];
        let mut body = Body(self);
        let io = |e: io::Error| CheckpointError::Encode {
            section: String::from_utf8_lossy(name).into_owned(),
            message: e.to_string(),
        };
        io::Write::write_all(&mut body, &(name.len() as u16).to_le_bytes()).map_err(io)?;
        io::Write::write_all(&mut body, name).map_err(io)?;
        io::Write::write_all(&mut body, &len.to_le_bytes()).map_err(io)
    }

    /// A section of bytes as they are.
    pub fn raw(&mut self, name: &str, data: &[u8]) -> Result<(), CheckpointError> {
        self.head(name, data.len() as u64)?;
        io::Write::write_all(&mut Body(self), data).map_err(|e| CheckpointError::Encode {
            section: name.to_string(),
            message: e.to_string(),
        })
    }

    /// A section `encode` writes (it is called twice and must write the same bytes both times).
    pub fn section(
        &mut self,
        name: &str,
        encode: &dyn Fn(&mut dyn io::Write) -> Result<(), CheckpointError>,
    ) -> Result<(), CheckpointError> {
        let mut count = Count(0);
        encode(&mut count)?;
        self.head(name, count.0)?;
        let before = self.len;
        encode(&mut Body(self))?;
        if self.len - before != count.0 {
            return Err(CheckpointError::Encode {
                section: name.to_string(),
                message: "the state changed while it was written".into(),
            });
        }
        Ok(())
    }

    /// Fills in the header; returns `out` and the checkpoint's size in bytes.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.out.flush()?;
        self.out
            .seek(io::SeekFrom::Start((MAGIC.len() + 4) as u64))?;
        self.out.write_all(&self.len.to_le_bytes())?;
        self.out.write_all(&self.crc.finalize().to_le_bytes())?;
        self.out.flush()?;
        Ok((self.out, HEADER_LEN as u64 + self.len))
    }
}

/// One part's state back from [`encode`].
pub fn decode<T: DeserializeOwned>(section: &str, data: &[u8]) -> Result<T, CheckpointError> {
    ciborium::from_reader(data).map_err(|e| CheckpointError::Decode {
        section: section.to_string(),
        message: e.to_string(),
    })
}

/// A whole checkpoint: named sections, the first being [`SETTINGS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub sections: Vec<(String, Vec<u8>)>,
}

impl Snapshot {
    pub fn section(&self, name: &str) -> Result<&[u8], CheckpointError> {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_slice())
            .ok_or_else(|| CheckpointError::Missing(name.to_string()))
    }

    /// Checks the settings the state was saved under against `settings`.
    pub fn check_settings(&self, settings: &str) -> Result<(), CheckpointError> {
        if self.section(SETTINGS)? == settings.as_bytes() {
            Ok(())
        } else {
            Err(CheckpointError::Settings)
        }
    }

    /// Reads the file's bytes, checking magic, version, length and checksum.
    pub fn from_bytes(bytes: &[u8]) -> Result<Snapshot, CheckpointError> {
        let corrupt = |what: &str| CheckpointError::Corrupt(what.to_string());
        if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt("not a memdrift checkpoint (no header)"));
        }
        let mut r = Reader(&bytes[MAGIC.len()..]);
        let version = u32::from_le_bytes(r.array().ok_or_else(|| corrupt("cut short"))?);
        if version != FORMAT_VERSION {
            return Err(CheckpointError::Version { found: version });
        }
        let len = u64::from_le_bytes(r.array().ok_or_else(|| corrupt("cut short"))?);
        let crc = u32::from_le_bytes(r.array().ok_or_else(|| corrupt("cut short"))?);
        if len != r.0.len() as u64 {
            return Err(CheckpointError::Corrupt(format!(
                "body of {} bytes where the header says {len}",
                r.0.len()
            )));
        }
        if crc32fast::hash(r.0) != crc {
            return Err(corrupt("checksum mismatch"));
        }
        let mut sections = Vec::new();
        while !r.0.is_empty() {
            let cut = || corrupt("a section is cut short");
            let name_len = u16::from_le_bytes(r.array().ok_or_else(cut)?);
            let name = r.take(u64::from(name_len)).ok_or_else(cut)?;
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| corrupt("a section name is not UTF-8"))?;
            let data_len = u64::from_le_bytes(r.array().ok_or_else(cut)?);
            let data = r.take(data_len).ok_or_else(cut)?;
            sections.push((name, data.to_vec()));
        }
        Ok(Snapshot { sections })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let n = usize::try_from(n).ok().filter(|&n| n <= self.0.len())?;
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N as u64)?.try_into().ok()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    impl Snapshot {
        /// The file's bytes, as [`SnapshotWriter`] writes them.
        fn to_bytes(&self) -> Vec<u8> {
            let (c, _) = (SnapshotWriter::new(io::Cursor::new(Vec::new())))
                .and_then(|mut w| {
                    for (name, data) in &self.sections {
                        w.raw(name, data).map_err(io::Error::other)?;
                    }
                    w.finish()
                })
                .expect("writing into memory");
            c.into_inner()
        }
    }

    pub(crate) fn snapshot() -> Snapshot {
        Snapshot {
            sections: vec![
                (SETTINGS.into(), b"window 60s".to_vec()),
                ("engine".into(), {
                    let mut b = Vec::new();
                    encode("engine", &vec![1.5f64, f64::NAN], &mut b).unwrap();
                    b
                }),
            ],
        }
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let s = snapshot();
        let back = Snapshot::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back, s);
        let v: Vec<f64> = decode("engine", back.section("engine").unwrap()).unwrap();
        assert_eq!(v[0], 1.5);
        assert!(v[1].is_nan());
        back.check_settings("window 60s").unwrap();
        assert!(matches!(
            back.check_settings("window 30s"),
            Err(CheckpointError::Settings)
        ));
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_refused() {
        let bytes = snapshot().to_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            let r = Snapshot::from_bytes(&b);
            assert!(
                matches!(
                    r,
                    Err(CheckpointError::Corrupt(_) | CheckpointError::Version { .. })
                ),
                "byte {i} flipped: {r:?}"
            );
            assert!(Snapshot::from_bytes(&bytes[..i]).is_err(), "cut at {i}");
        }
    }

    #[test]
    fn another_version_is_named() {
        let mut b = snapshot().to_bytes();
        b[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&7u32.to_le_bytes());
        let e = Snapshot::from_bytes(&b).unwrap_err();
        assert!(e.to_string().contains("version 7"), "{e}");
    }
}
