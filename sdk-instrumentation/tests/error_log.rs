//! A collector that is down is reported once per interval, not once per failed batch. Its own binary: it installs
//! the global `tracing` subscriber and sets the export timeout in the environment.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memspan::{Builder, Protocol};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn repeated_export_failures_log_one_line_per_interval() {
    // Edition 2021: set_var is safe; this binary's only test, so no other thread reads the environment.
    std::env::set_var("OTEL_EXPORTER_OTLP_TIMEOUT", "100");
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber");

    let m = Builder::from_env()
        .endpoint("http://127.0.0.1:1")
        .protocol(Protocol::HttpProtobuf)
        .metrics_interval(Duration::from_millis(20))
        .build()
        .expect("build");
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        m.request("chat", "m").finish();
        std::thread::sleep(Duration::from_millis(5));
    }
    let failures = m.export_failures();
    let _ = m.shutdown();
    assert!(
        failures >= 3,
        "only {failures} failed exports: the test needs repeated failures"
    );
    let text = captured
        .0
        .lock()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    let lines = text
        .lines()
        .filter(|l| l.contains("OTLP export failed"))
        .count();
    assert_eq!(lines, 1, "log:\n{text}");
}
