//! Which failed exports to try again, and when: the OTLP specification's rules, plus the Collector's backoff.
//!
//! The rules are kept apart from the transports so every status and code can be checked without a network:
//! - HTTP: 429, 502, 503 and 504 are retryable and `Retry-After` (seconds or an HTTP date) is honoured;
//!   every other status is permanent.
//! - gRPC: UNAVAILABLE, CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE and DATA_LOSS are retryable;
//!   RESOURCE_EXHAUSTED only when the server attached a `google.rpc.RetryInfo` (it means "over quota, come back
//!   later" then; without it, the request itself is too large and would fail again). A RetryInfo delay is
//!   honoured on any retryable code. Everything else is permanent.
//! - A transport error (connection refused, reset, timed out) is retryable: the receiver is down or slow.

use std::time::{Duration, SystemTime};

use prost::Message;
use rand::Rng;
use tonic::Code;

/// What to do about a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Try again, no sooner than `after` when the server said so.
    Retry { after: Option<Duration> },
    /// Never succeeds as sent: count it as failed and move on.
    Permanent,
}

/// The verdict for a non-2xx HTTP response. `retry_after` is the raw header, `now` the clock to read a date
/// against.
pub fn classify_http(status: u16, retry_after: Option<&str>, now: SystemTime) -> Verdict {
    match status {
        429 | 502 | 503 | 504 => Verdict::Retry {
            after: retry_after.and_then(|v| parse_retry_after(v, now)),
        },
        _ => Verdict::Permanent,
    }
}

/// `Retry-After` is either delay-seconds or an HTTP date (RFC 9110 10.2.3); a date in the past means now.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The verdict for a gRPC status; `details` is the status's `grpc-status-details-bin` (a `google.rpc.Status`).
pub fn classify_grpc(code: Code, details: &[u8]) -> Verdict {
    let retry_info = retry_info_delay(details);
    match code {
        Code::Unavailable
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss => Verdict::Retry { after: retry_info },
        Code::ResourceExhausted => match retry_info {
            Some(after) => Verdict::Retry { after: Some(after) },
            None => Verdict::Permanent,
        },
        _ => Verdict::Permanent,
    }
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// `google.rpc.Status`, only the field read here.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The delay of the first RetryInfo in a status's details, if any. A negative delay reads as zero.
fn retry_info_delay(details: &[u8]) -> Option<Duration> {
    if details.is_empty() {
        return None;
    }
    let status = RpcStatus::decode(details).ok()?;
    let any = status
        .details
        .iter()
        .find(|d| d.type_url == RETRY_INFO_TYPE)?;
    let info = RetryInfo::decode(any.value.as_slice()).ok()?;
    let d = info.retry_delay.unwrap_or_default();
    let seconds = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0).min(999_999_999);
    Some(Duration::new(seconds, nanos))
}

/// Exponential backoff, as the Collector's `retry_on_failure` does it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// The first wait. Collector default 5 s.
    pub initial_interval: Duration,
    /// The longest wait between two attempts. Collector default 30 s.
    pub max_interval: Duration,
    /// A batch still failing this long after its first attempt is given up (counted as failed); zero means
    /// never, as in the Collector (with an on-disk queue, that keeps events through an outage of any length).
    /// Collector default 300 s.
    pub max_elapsed_time: Duration,
    /// The longest wait a server's `Retry-After` or RetryInfo may ask for; a longer one is cut to it, so that a
    /// broken or hostile backend (`Retry-After: 3600`, or 2^64-1) cannot park delivery. Default 60 s.
    pub max_server_delay: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(30),
            max_elapsed_time: Duration::from_secs(300),
            max_server_delay: Duration::from_secs(60),
        }
    }
}

/// The Collector's (backoff/v4) growth factor and jitter: each wait is the current interval +-50 %, and the
/// interval grows 1.5x up to the maximum. Jitter keeps many memdrift replicas from retrying in lockstep after a
/// shared backend comes back.
const MULTIPLIER: f64 = 1.5;
const RANDOMIZATION: f64 = 0.5;

/// The waits of one batch's retries.
#[derive(Clone, Debug)]
pub struct Backoff {
    config: RetryConfig,
    interval: Duration,
}

impl Backoff {
    pub fn new(config: RetryConfig) -> Backoff {
        Backoff {
            config,
            interval: config.initial_interval,
        }
    }

    /// The wait before the next attempt: the jittered interval, but never less than what the server asked for
    /// (itself at most `max_server_delay`).
    pub fn next_delay(&mut self, server_delay: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let server_delay = server_delay.map(|s| s.min(self.config.max_server_delay));
        let base = self.interval.as_secs_f64();
        let jittered = base * (1.0 - RANDOMIZATION + 2.0 * RANDOMIZATION * rng.random::<f64>());
        let max = self.config.max_interval.as_secs_f64();
        self.interval = Duration::from_secs_f64((base * MULTIPLIER).min(max));
        let delay = Duration::from_secs_f64(jittered.clamp(0.0, max));
        server_delay.map_or(delay, |s| s.max(delay))
    }

    /// Whether waiting `delay` more, after `elapsed` since the first attempt, goes past the give-up time.
    pub fn gives_up(&self, elapsed: Duration, delay: Duration) -> bool {
        !self.config.max_elapsed_time.is_zero()
            && elapsed.saturating_add(delay) > self.config.max_elapsed_time
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const RETRYABLE_HTTP: [u16; 4] = [429, 502, 503, 504];

    #[test]
    fn http_retryable_statuses_honour_retry_after() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for status in RETRYABLE_HTTP {
            assert_eq!(
                classify_http(status, None, now),
                Verdict::Retry { after: None },
                "{status}"
            );
            assert_eq!(
                classify_http(status, Some("2"), now),
                Verdict::Retry {
                    after: Some(Duration::from_secs(2))
                },
                "{status}"
            );
        }
        // An HTTP date 7 s after `now`, and one in the past.
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(
            classify_http(503, Some(&later), now),
            Verdict::Retry {
                after: Some(Duration::from_secs(7))
            }
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(
            classify_http(429, Some(&earlier), now),
            Verdict::Retry {
                after: Some(Duration::ZERO)
            }
        );
        // A header that is neither is ignored, not fatal: the backoff decides.
        assert_eq!(
            classify_http(503, Some("soon"), now),
            Verdict::Retry { after: None }
        );
    }

    #[test]
    fn every_other_http_status_is_permanent() {
        let now = SystemTime::UNIX_EPOCH;
        for status in (300..600).filter(|s| !RETRYABLE_HTTP.contains(s)) {
            assert_eq!(
                classify_http(status, Some("1"), now),
                Verdict::Permanent,
                "{status}"
            );
        }
    }

    fn details_with_retry_info(seconds: i64, nanos: i32) -> Vec<u8> {
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration { seconds, nanos }),
        };
        RpcStatus {
            code: Code::ResourceExhausted as i32,
            message: "over quota".into(),
            details: vec![
                ProtoAny {
                    type_url: "type.googleapis.com/google.rpc.DebugInfo".into(),
                    value: vec![1, 2, 3],
                },
                ProtoAny {
                    type_url: RETRY_INFO_TYPE.into(),
                    value: info.encode_to_vec(),
                },
            ],
        }
        .encode_to_vec()
    }

    #[test]
    fn grpc_retryable_codes() {
        let with_info = details_with_retry_info(3, 500_000_000);
        for code in [
            Code::Unavailable,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::DataLoss,
        ] {
            assert_eq!(
                classify_grpc(code, &[]),
                Verdict::Retry { after: None },
                "{code:?}"
            );
            assert_eq!(
                classify_grpc(code, &with_info),
                Verdict::Retry {
                    after: Some(Duration::from_millis(3500))
                },
                "{code:?}"
            );
        }
    }

    #[test]
    fn grpc_resource_exhausted_is_retried_only_with_retry_info() {
        assert_eq!(
            classify_grpc(Code::ResourceExhausted, &[]),
            Verdict::Permanent
        );
        // Details without a RetryInfo, and bytes that are no Status at all.
        let other = RpcStatus {
            code: 8,
            message: String::new(),
            details: vec![ProtoAny {
                type_url: "type.googleapis.com/google.rpc.QuotaFailure".into(),
                value: vec![],
            }],
        }
        .encode_to_vec();
        assert_eq!(
            classify_grpc(Code::ResourceExhausted, &other),
            Verdict::Permanent
        );
        assert_eq!(
            classify_grpc(Code::ResourceExhausted, &[0xff, 0xff, 0xff]),
            Verdict::Permanent
        );
        assert_eq!(
            classify_grpc(Code::ResourceExhausted, &details_with_retry_info(2, 0)),
            Verdict::Retry {
                after: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(
            classify_grpc(Code::ResourceExhausted, &details_with_retry_info(-5, -1)),
            Verdict::Retry {
                after: Some(Duration::ZERO)
            }
        );
    }

    #[test]
    fn grpc_other_codes_are_permanent() {
        let with_info = details_with_retry_info(1, 0);
        for code in [
            Code::Ok,
            Code::Unknown,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::Unimplemented,
            Code::Internal,
            Code::Unauthenticated,
        ] {
            assert_eq!(classify_grpc(code, &[]), Verdict::Permanent, "{code:?}");
            assert_eq!(
                classify_grpc(code, &with_info),
                Verdict::Permanent,
                "{code:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_with_jitter_to_the_cap_and_respects_the_server() {
        let config = RetryConfig::default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(config);
        let mut interval = 5.0_f64;
        for _ in 0..12 {
            let d = b.next_delay(None, &mut rng).as_secs_f64();
            assert!(
                d >= interval * 0.5 - 1e-9 && d <= (interval * 1.5).min(30.0) + 1e-9,
                "{d} for interval {interval}"
            );
            interval = (interval * 1.5).min(30.0);
        }
        // At the cap, a server's longer delay wins; a shorter one does not shorten the backoff.
        let d = b.next_delay(Some(Duration::from_secs(60)), &mut rng);
        assert_eq!(d, Duration::from_secs(60));
        let d = b.next_delay(Some(Duration::from_millis(1)), &mut rng);
        assert!(d >= Duration::from_secs(15), "{d:?}");

        let waits: Vec<Duration> = (0..50)
            .map(|_| Backoff::new(config).next_delay(None, &mut rng))
            .collect();
        assert!(
            waits.iter().any(|w| *w != waits[0]),
            "waits are jittered: {waits:?}"
        );
    }

    #[test]
    fn a_server_cannot_park_delivery_with_a_huge_retry_after() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut rng = StdRng::seed_from_u64(3);
        let config = RetryConfig::default();
        for header in ["3600", "18446744073709551615"] {
            let Verdict::Retry { after } = classify_http(429, Some(header), now) else {
                panic!("429 is retryable");
            };
            let mut b = Backoff::new(config);
            let d = b.next_delay(after, &mut rng);
            assert_eq!(d, config.max_server_delay, "Retry-After: {header}");
            // With the default give-up time, a long Retry-After no longer gives the batch up at once.
            assert!(!b.gives_up(Duration::ZERO, d), "Retry-After: {header}");
        }
        // Past u64 seconds the header does not parse: the backoff decides.
        assert_eq!(
            classify_http(429, Some("184467440737095516150"), now),
            Verdict::Retry { after: None }
        );
        // The cap is the configured one.
        let short = RetryConfig {
            max_server_delay: Duration::from_secs(7),
            ..config
        };
        // (the first wait is the 5 s interval +-50 %, so it may itself exceed the cut 7 s, to 7.5 s).
        let d = Backoff::new(short).next_delay(Some(Duration::from_secs(3600)), &mut rng);
        assert!(
            d >= Duration::from_secs(7) && d <= Duration::from_millis(7500),
            "{d:?}"
        );
    }

    #[test]
    fn backoff_gives_up_after_max_elapsed() {
        let b = Backoff::new(RetryConfig::default());
        assert!(!b.gives_up(Duration::from_secs(290), Duration::from_secs(10)));
        assert!(b.gives_up(Duration::from_secs(290), Duration::from_secs(11)));
        assert!(b.gives_up(Duration::MAX, Duration::from_secs(1)));
        let forever = Backoff::new(RetryConfig {
            max_elapsed_time: Duration::ZERO,
            ..RetryConfig::default()
        });
        assert!(!forever.gives_up(Duration::MAX, Duration::from_secs(1)));
    }
}
