//! The checkpoint directory, and the engine thread's use of it: restore at start, save on an interval and at
//! the end.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::sync::Arc;

use super::{CheckpointError, Snapshot, SnapshotWriter};
use crate::core::Core;
use crate::detect::Configured;
use crate::engine::EngineConfig;
use crate::telemetry::Telemetry;

const FILE: &str = "checkpoint";
const TEMP: &str = "checkpoint.tmp";
const REJECTED: &str = "checkpoint.rejected";

/// The settings state is built under, as the checkpoint's [`SETTINGS`] section holds them: the engine's and every
/// enabled detector's, in full.
pub fn settings(
    engine: &EngineConfig,
    detectors: &[(&'static str, Arc<dyn Configured>)],
) -> String {
    format!("{engine:#?}\n{detectors:#?}")
}

/// The checkpoint directory, locked against a second memdrift for as long as the store lives.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

impl Store {
    /// Opens (creating) `dir` and takes its lock.
    pub fn open(dir: &Path) -> Result<Store, CheckpointError> {
        let io_err = |source| CheckpointError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        let lock = memdrift_exporter::otlp::disk::lock_dir(dir, "service.checkpoint.directory")
            .map_err(io_err)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The checkpoint in the directory; `None` when there is none.
    pub fn load(&self) -> Result<Option<Snapshot>, CheckpointError> {
        let path = self.path();
        match fs::read(&path) {
            Ok(bytes) => Snapshot::from_bytes(&bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CheckpointError::Io { path, source }),
        }
    }

    /// Sets a checkpoint that cannot be used aside (as `checkpoint.rejected`), so the next save does not
    /// overwrite what an operator may want to look at.
    pub fn reject(&self) -> Result<(), CheckpointError> {
        let to = self.dir.join(REJECTED);
        fs::rename(self.path(), &to).map_err(|source| CheckpointError::Io { path: to, source })
    }

    /// Writes a checkpoint to `checkpoint.tmp` (`write` fills it, e.g. with [`Core::save`]). Buffered writes
    /// into the page cache: [`Store::commit`] makes it durable and puts it in place.
    pub fn write(
        &self,
        write: impl FnOnce(&mut SnapshotWriter<BufWriter<File>>) -> Result<(), CheckpointError>,
    ) -> Result<Written, CheckpointError> {
        let temp = self.dir.join(TEMP);
        let io = |source| CheckpointError::Io {
            path: temp.clone(),
            source,
        };
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(io)?;
        let mut w = SnapshotWriter::new(BufWriter::with_capacity(1 << 16, file)).map_err(io)?;
        write(&mut w)?;
        let (out, bytes) = w.finish().map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        Ok(Written { file, bytes })
    }

    /// Syncs a checkpoint [`Store::write`] wrote and renames it over the previous one. Returns its size.
    pub fn commit(&self, written: Written) -> Result<u64, CheckpointError> {
        let temp = self.dir.join(TEMP);
        let io_at = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckpointError::Io { path, source }
        };
        written.file.sync_all().map_err(io_at(&temp))?;
        drop(written.file);
        fs::rename(&temp, self.path()).map_err(io_at(&self.path()))?;
        // The rename itself is durable once the directory is synced.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(written.bytes)
    }
}

/// A checkpoint written to the temporary file, not yet synced or in place.
pub struct Written {
    file: File,
    bytes: u64,
}

/// What the engine thread does with the checkpoint directory: restores the core once at start, then saves it
/// every `interval` and at the end. Failures are logged and counted, never fatal.
pub struct Checkpoints {
    store: Arc<Store>,
    /// What [`settings`] gives for the running pipeline.
    settings: String,
    /// `None`: only at the end.
    interval: Option<Duration>,
    last: Instant,
    telemetry: Telemetry,
    /// The sync and rename of the last interval's checkpoint, done off the engine thread so that it does not
    /// wait on the disk.
    writing: Option<JoinHandle<Result<u64, CheckpointError>>>,
}

impl Checkpoints {
    /// Opens (and locks) `dir`. An error here is the operator's to fix (a directory memdrift cannot create, or
    /// another memdrift using it), so the caller stops with it.
    pub fn open(
        dir: &Path,
        settings: String,
        interval: Duration,
        telemetry: Telemetry,
    ) -> Result<Checkpoints, CheckpointError> {
        Ok(Checkpoints {
            store: Arc::new(Store::open(dir)?),
            settings,
            interval: (!interval.is_zero()).then_some(interval),
            last: Instant::now(),
            telemetry,
            writing: None,
        })
    }

    /// Carries `core` on from the directory's checkpoint, if there is a usable one. One that cannot be used
    /// (corrupt, another version, other settings) is set aside as `checkpoint.rejected`, and `core` starts
    /// fresh.
    pub fn restore(&self, core: &mut Core) {
        let path = self.store.path();
        let loaded = self
            .store
            .load()
            .and_then(|s| s.map(|s| core.restore(&s, &self.settings)).transpose());
        match loaded {
            Ok(None) => tracing::info!(path = %path.display(), "no checkpoint yet; starting fresh"),
            Ok(Some(())) => tracing::info!(
                path = %path.display(),
                sources = core.engine().live_sources(),
                series = core.engine().live_keys(),
                "state restored from the checkpoint"
            ),
            Err(e) => {
                self.telemetry
                    .checkpoint_failures
                    .with_label_values(&["restore"])
                    .inc();
                let aside = e.rejects_file() && self.store.reject().is_ok();
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    set_aside_as = aside.then_some(REJECTED),
                    "checkpoint not restored; starting fresh"
                );
            }
        }
    }

    /// Saves when the interval has passed since the last save: writes the state into the temporary file here
    /// (buffered, into the page cache, no copy of it in memory) and syncs and renames it on a thread of its
    /// own. While the last one is still being synced, the save waits for the next tick.
    pub fn save_if_due(&mut self, core: &Core) {
        if self.interval.is_none_or(|i| self.last.elapsed() < i) {
            return;
        }
        if self.writing.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        self.collect();
        self.last = Instant::now();
        match self.store.write(|w| core.save(&self.settings, w)) {
            Ok(written) => {
                let store = Arc::clone(&self.store);
                let spawned = std::thread::Builder::new()
                    .name("memdrift-checkpoint".into())
                    .spawn(move || store.commit(written));
                match spawned {
                    Ok(w) => self.writing = Some(w),
                    Err(e) => self.record(Err(CheckpointError::Io {
                        path: self.store.path(),
                        source: e,
                    })),
                }
            }
            Err(e) => self.record(Err(e)),
        }
    }

    /// The last save, at shutdown: waits for a write in progress, then writes here.
    pub fn save(&mut self, core: &Core) {
        self.collect();
        self.last = Instant::now();
        let written = (self.store)
            .write(|w| core.save(&self.settings, w))
            .and_then(|w| self.store.commit(w));
        self.record(written);
    }

    /// Waits for the write in progress, if any, and records how it went.
    fn collect(&mut self) {
        if let Some(w) = self.writing.take() {
            let written = w.join().unwrap_or_else(|_| {
                Err(CheckpointError::Io {
                    path: self.store.path(),
                    source: io::Error::other("the checkpoint writer panicked"),
                })
            });
            self.record(written);
        }
    }

    fn record(&self, written: Result<u64, CheckpointError>) {
        match written {
            Ok(bytes) => {
                self.telemetry.checkpoints.inc();
                self.telemetry
                    .checkpoint_bytes
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
                tracing::debug!(bytes, "checkpoint written");
            }
            Err(e) => {
                self.telemetry
                    .checkpoint_failures
                    .with_label_values(&["save"])
                    .inc();
                tracing::warn!(error = %e, "checkpoint not written");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tests::snapshot;

    #[test]
    fn the_store_saves_loads_rejects_and_locks() {
        let dir = std::env::temp_dir().join(format!("memdrift-ckpt-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.load().unwrap(), None);
        let written = store
            .write(|w| {
                for (name, data) in &snapshot().sections {
                    w.raw(name, data)?;
                }
                Ok(())
            })
            .unwrap();
        store.commit(written).unwrap();
        assert_eq!(store.load().unwrap(), Some(snapshot()));
        let second = Store::open(&dir).err().expect("the directory is locked");
        assert!(
            second.to_string().contains("in use by another memdrift"),
            "{second}"
        );
        fs::write(store.path(), b"memdrift checkpoint\ngarbage").unwrap();
        assert!(store.load().unwrap_err().rejects_file());
        store.reject().unwrap();
        assert_eq!(store.load().unwrap(), None);
        assert!(dir.join(REJECTED).exists());
        drop(store);
        Store::open(&dir).unwrap();
        let _ = fs::remove_dir_all(&dir);
    }
}
