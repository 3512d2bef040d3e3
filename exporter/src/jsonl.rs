//! JSON lines: one anomaly event per line, to a file or stdout, flushed per batch so a tail sees events at once.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::anomaly::{Anomaly, AnomalyRecord};
use crate::output::Output;

/// Where JSON lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    /// Appended to, created if missing.
    File(PathBuf),
}

impl Destination {
    /// "stdout" or "-" means standard output; anything else is a path.
    pub fn parse(s: &str) -> Destination {
        match s {
            "stdout" | "-" => Destination::Stdout,
            path => Destination::File(PathBuf::from(path)),
        }
    }
}

pub struct JsonLinesWriter {
    out: Box<dyn Write + Send>,
    written: u64,
}

impl JsonLinesWriter {
    pub fn open(dest: &Destination) -> io::Result<JsonLinesWriter> {
        let out: Box<dyn Write + Send> = match dest {
            Destination::Stdout => Box::new(BufWriter::new(io::stdout())),
            Destination::File(path) => Box::new(BufWriter::new(open_append(path)?)),
        };
        Ok(JsonLinesWriter { out, written: 0 })
    }

    /// A writer over any sink (tests, in-memory buffers).
    pub fn new(out: Box<dyn Write + Send>) -> JsonLinesWriter {
        JsonLinesWriter { out, written: 0 }
    }

    /// Writes the items, one line each, then flushes.
    pub fn write_all<T: Serialize>(&mut self, items: &[T]) -> io::Result<()> {
        for item in items {
            serde_json::to_writer(&mut self.out, item)?;
            self.out.write_all(b"\n")?;
            self.written += 1;
        }
        self.out.flush()
    }

    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Output for JsonLinesWriter {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    /// One [`AnomalyRecord`] per line.
    fn write(&mut self, events: &[Anomaly]) -> io::Result<()> {
        let records: Vec<AnomalyRecord> = events.iter().map(AnomalyRecord::from).collect();
        self.write_all(&records)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open {} for writing: {e}", path.display()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_object_per_line() {
        let buf = Shared::default();
        let mut w = JsonLinesWriter::new(Box::new(buf.clone()));
        w.write_all(&[
            serde_json::json!({"a": 1}),
            serde_json::json!({"b": "x\ny"}),
        ])
        .expect("writes");
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(text, "{\"a\":1}\n{\"b\":\"x\\ny\"}\n");
        assert_eq!(w.written(), 2);
        assert_eq!(Destination::parse("-"), Destination::Stdout);
    }
}
