//! Export failures, logged at most once per interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry_sdk::error::OTelSdkResult;

/// A `tracing_subscriber::EnvFilter` directive that silences the OpenTelemetry crates' own per-failure logs.
/// memspan does not enable their `internal-logs` feature, but another dependency of the service may; then every
/// failed export batch is logged by the SDK as well. Appending this to the service's filter (e.g.
/// `format!("info,{OTEL_INTERNAL_LOGS_OFF}")`) leaves memspan's own line, at most one per [`ERROR_LOG_INTERVAL`].
pub const OTEL_INTERNAL_LOGS_OFF: &str =
    "opentelemetry=off,opentelemetry_sdk=off,opentelemetry-otlp=off,opentelemetry-http=off";

/// Export errors are logged at most once per this interval (with the count of those not logged).
pub const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Logs export failures at most once per interval, with the number it kept quiet about, so a service whose
/// collector is down gets one line a minute instead of one per batch.
#[derive(Debug)]
pub(super) struct ErrorLog {
    interval: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
    total: AtomicU64,
}

impl ErrorLog {
    pub(super) fn new(interval: Duration) -> ErrorLog {
        ErrorLog {
            interval,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// Returns whether this failure was logged (for tests).
    pub(super) fn observe(&self, signal: &str, r: &OTelSdkResult, now: Instant) -> bool {
        let Err(e) = r else { return false };
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.saturating_duration_since(t) < self.interval) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *last = Some(now);
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(signal, error = %e, suppressed, "memspan: OTLP export failed; telemetry is dropped while the collector is unreachable");
        true
    }

    /// Failures observed so far, logged or not.
    pub(super) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::error::OTelSdkError;

    #[test]
    fn export_errors_are_logged_once_per_interval() {
        let log = ErrorLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let err: OTelSdkResult = Err(OTelSdkError::InternalFailure("connection refused".into()));
        assert!(!log.observe("traces", &Ok(()), t0));
        assert!(log.observe("traces", &err, t0));
        assert!(!log.observe("traces", &err, t0 + Duration::from_secs(1)));
        assert!(!log.observe("metrics", &err, t0 + Duration::from_secs(59)));
        assert_eq!(log.suppressed.load(Ordering::Relaxed), 2);
        assert!(log.observe("traces", &err, t0 + Duration::from_secs(61)));
        assert_eq!(log.suppressed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_quiet_directive_parses_as_an_env_filter() {
        let filter =
            tracing_subscriber::EnvFilter::try_new(format!("info,{OTEL_INTERNAL_LOGS_OFF}"));
        assert!(filter.is_ok(), "{filter:?}");
    }
}
