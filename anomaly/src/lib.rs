//! memdrift's finding, as every part of it shares it: detectors build an [`Anomaly`], the outputs render it
//! (JSON lines, OTLP logs and spans, a one-line summary). Plain data: times are Unix nanoseconds of event time,
//! the evidence is one enum variant per kind of finding, and the [`Episode`] names the finding across its open,
//! update and resolved events. Nothing here reads a clock or knows a wire format; serde derives name the enums'
//! spelling and let a checkpoint keep an open finding's episode.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    SpreadDrift,
    Growth,
    Leak,
    /// Go: the heap size the next collection is due at lies above the memory limit.
    GcGoal,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 4] = [
        AnomalyKind::SpreadDrift,
        AnomalyKind::Growth,
        AnomalyKind::Leak,
        AnomalyKind::GcGoal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::SpreadDrift => "spread_drift",
            AnomalyKind::Growth => "growth",
            AnomalyKind::Leak => "leak",
            AnomalyKind::GcGoal => "gc_goal",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyState {
    Open,
    Update,
    Resolved,
}

impl AnomalyState {
    pub fn name(self) -> &'static str {
        match self {
            AnomalyState::Open => "open",
            AnomalyState::Update => "update",
            AnomalyState::Resolved => "resolved",
        }
    }
}

/// An estimate with its confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// The two cohorts a spread comparison names, so that a wrong baseline guess is visible.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cohorts {
    pub baseline: String,
    pub canary: String,
    pub baseline_samples: u64,
    pub canary_samples: u64,
}

/// A request behind a finding: its trace, and its span where the sender gave one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exemplar {
    pub trace_id: [u8; 16],
    pub span_id: Option<[u8; 8]>,
}

/// The kind of a leak, from the heap figures beside the resident memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeakClass {
    /// Allocator live bytes rise with the floor.
    Heap,
    /// Memory outside the allocator's live data rises (native buffers, mmap, C memory): the heap is flat.
    OffHeap,
    /// Allocator resident or retained bytes rise while live bytes do not.
    Fragmentation,
    /// Go: the goroutine count and goroutine stacks rise together (goroutines that never exit, holding what
    /// else rises).
    Goroutines,
    /// Go: the runtime has released heap memory to the kernel (`memspan.heap.retained`, Go's
    /// `/memory/classes/heap/released:bytes`) and it is released at the pace RSS rises, while live bytes are
    /// flat: pages given back with MADV_FREE (`GODEBUG=madvdontneed=0`) stay counted in RSS until the kernel
    /// needs them. Not a leak of live data: the kernel takes them back under memory pressure.
    ReleasedNotReturned,
    /// No heap figures to tell.
    Unknown,
}

impl LeakClass {
    pub fn name(self) -> &'static str {
        match self {
            LeakClass::Heap => "heap",
            LeakClass::OffHeap => "off_heap",
            LeakClass::Fragmentation => "fragmentation",
            LeakClass::Goroutines => "goroutines",
            LeakClass::ReleasedNotReturned => "released_not_returned",
            LeakClass::Unknown => "unknown",
        }
    }
}

/// What a finding rests on, one variant per kind of test.
#[derive(Clone, Debug, PartialEq)]
pub enum Evidence {
    /// A canary's spread against its baseline's: Brown-Forsythe per window, a mixture SPRT across windows.
    Spread {
        /// Brown-Forsythe W of the latest window.
        statistic: f64,
        /// The sequential test's always-valid p-value: what the decision reads.
        p_value: f64,
        /// The latest window's own p-value.
        window_p_value: f64,
        /// Lag-1 autocorrelation corrected for (process-level signals).
        autocorrelation: Option<f64>,
        sd_ratio: Interval,
        mad_ratio: Option<f64>,
        cohorts: Cohorts,
    },
    /// A cohort's spread against its own past (CUSUM).
    SpreadChange {
        /// The larger of the two CUSUM sums.
        statistic: f64,
        /// The spread now against the cohort's reference.
        ratio: f64,
        /// `baseline` is the cohort's own past ("<label> (before)").
        cohorts: Cohorts,
    },
    /// An instance's peak memory envelope forecast to reach its limit.
    Growth {
        /// The envelope now plus its scatter: the peak to expect, bytes.
        envelope_bytes: f64,
        growth_bytes_per_s: f64,
        limit_bytes: Option<f64>,
        /// Where the limit was read: `container`, `go.memory.limit` (GOMEMLIMIT, when no container limit is
        /// known) or `configured` (the pipeline's `limit_bytes`).
        limit_source: Option<&'static str>,
        time_to_limit_s: Option<Interval>,
    },
    /// An instance's post-GC floor rising (Mann-Kendall with Hamed-Rao, Theil-Sen slope).
    Leak {
        /// Mann-Kendall Z.
        statistic: f64,
        p_value: f64,
        growth_bytes_per_s: f64,
        classification: LeakClass,
        limit_bytes: Option<f64>,
        /// As for `Growth`.
        limit_source: Option<&'static str>,
    },
    /// A Go process whose next garbage collection is due above its memory limit: the heap may grow past the
    /// limit before the collector runs (GOMEMLIMIT unset, or set above the container's limit).
    GcGoal {
        /// The heap size the next collection is due at (`go.memory.gc.goal`), bytes.
        goal_bytes: f64,
        /// The limit it is above, bytes.
        limit_bytes: f64,
        /// Where that limit comes from: "container" (the cgroup or `memspan.limit`) or "go.memory.limit".
        limit_source: &'static str,
        /// GOMEMLIMIT as the runtime reports it, when set.
        go_memory_limit_bytes: Option<f64>,
        /// The Go heap now (`go.memory.used` other than stacks, or the heap attribute), when known.
        heap_bytes: Option<f64>,
    },
}

/// Which finding an event belongs to. Its open, updates and resolution carry the same episode, so every output
/// can group them (one trace in OTLP) without remembering anything: the id is a hash of the finding's identity
/// and onset, the same on every replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Episode {
    pub id: [u8; 16],
    /// Start of the evidence that opened it.
    pub onset_unix_nano: u64,
    /// When the open event was detected.
    pub opened_unix_nano: u64,
}

/// What makes one finding the same finding from event to event.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    pub kind: AnomalyKind,
    pub service: &'a str,
    pub instance: Option<&'a str>,
    pub signal: &'a str,
    /// The canary cohort for spread findings.
    pub cohort: Option<&'a str>,
}

impl Episode {
    /// The episode of a finding with this identity that opens at `opened_unix_nano` on evidence starting at
    /// `onset_unix_nano` (millisecond precision, as the events print it; never after the opening).
    pub fn new(identity: Identity<'_>, onset_unix_nano: u64, opened_unix_nano: u64) -> Episode {
        let onset = (onset_unix_nano / 1_000_000 * 1_000_000).min(opened_unix_nano);
        let key = [
            identity.kind.name(),
            identity.service,
            identity.instance.unwrap_or(""),
            identity.signal,
            identity.cohort.unwrap_or(""),
        ]
        .join("\u{1f}");
        Episode {
            id: id128(&[key.as_bytes(), &onset.to_be_bytes()]),
            onset_unix_nano: onset,
            opened_unix_nano,
        }
    }
}

/// FNV-1a over the parts (each followed by 0xff), from a given offset basis.
pub fn fnv1a(basis: u64, parts: &[&[u8]]) -> u64 {
    let mut h = basis;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// A 128-bit id from two FNV-1a hashes; never all zero (an invalid trace id).
pub fn id128(parts: &[&[u8]]) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&fnv1a(0xcbf2_9ce4_8422_2325, parts).to_be_bytes());
    id[8..].copy_from_slice(&fnv1a(0x6c62_272e_07bb_0142, parts).to_be_bytes());
    if id == [0; 16] {
        id[15] = 1;
    }
    id
}

/// A 64-bit id; never zero (an invalid span id).
pub fn id64(parts: &[&[u8]]) -> [u8; 8] {
    fnv1a(0x8422_2325_cbf2_9ce4, parts).max(1).to_be_bytes()
}

impl Evidence {
    /// The kind of finding this evidence makes.
    pub fn kind(&self) -> AnomalyKind {
        match self {
            Evidence::Spread { .. } | Evidence::SpreadChange { .. } => AnomalyKind::SpreadDrift,
            Evidence::Growth { .. } => AnomalyKind::Growth,
            Evidence::Leak { .. } => AnomalyKind::Leak,
            Evidence::GcGoal { .. } => AnomalyKind::GcGoal,
        }
    }
}

/// One event of a finding. Its kind is its evidence's ([`Anomaly::kind`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    pub state: AnomalyState,
    pub episode: Episode,
    pub service: String,
    /// For per-instance kinds.
    pub instance: Option<String>,
    pub signal: String,
    /// Event time of this event.
    pub detected_unix_nano: u64,
    /// The stretch of event time the evidence covers.
    pub window: Option<(u64, u64)>,
    /// How the finding was reached, e.g. "brown_forsythe+msprt", "cusum", "theil_sen_envelope".
    pub method: &'static str,
    pub evidence: Evidence,
    /// The most extreme requests behind the finding.
    pub exemplars: Vec<Exemplar>,
}

impl Anomaly {
    /// An event with the fields every event has, whose finding opened at `detected_unix_nano` on evidence
    /// starting then: no instance, window or exemplars yet (set them on the value).
    pub fn new(
        state: AnomalyState,
        service: &str,
        signal: &str,
        detected_unix_nano: u64,
        method: &'static str,
        evidence: Evidence,
    ) -> Anomaly {
        let identity = Identity {
            kind: evidence.kind(),
            service,
            instance: None,
            signal,
            cohort: match &evidence {
                Evidence::Spread { cohorts, .. } | Evidence::SpreadChange { cohorts, .. } => {
                    Some(cohorts.canary.as_str())
                }
                _ => None,
            },
        };
        Anomaly {
            state,
            episode: Episode::new(identity, detected_unix_nano, detected_unix_nano),
            service: service.to_string(),
            instance: None,
            signal: signal.to_string(),
            detected_unix_nano,
            window: None,
            method,
            evidence,
            exemplars: Vec::new(),
        }
    }

    pub fn kind(&self) -> AnomalyKind {
        self.evidence.kind()
    }

    /// The cohorts, for spread findings.
    pub fn cohorts(&self) -> Option<&Cohorts> {
        match &self.evidence {
            Evidence::Spread { cohorts, .. } | Evidence::SpreadChange { cohorts, .. } => {
                Some(cohorts)
            }
            _ => None,
        }
    }

    /// The identity of this event's finding.
    pub fn identity(&self) -> Identity<'_> {
        Identity {
            kind: self.kind(),
            service: &self.service,
            instance: self.instance.as_deref(),
            signal: &self.signal,
            cohort: self.cohorts().map(|c| c.canary.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_is_its_identity_and_onset() {
        let id = Identity {
            kind: AnomalyKind::Growth,
            service: "rag",
            instance: Some("pod-1"),
            signal: "memspan.rss.end",
            cohort: None,
        };
        let a = Episode::new(id, 1_000_123_456, 2_000_000_000);
        assert_eq!(
            a,
            Episode::new(id, 1_000_999_999, 2_000_000_000),
            "ms precision"
        );
        assert_eq!(a.onset_unix_nano, 1_000_000_000);
        let other = Identity {
            instance: Some("pod-2"),
            ..id
        };
        assert_ne!(a.id, Episode::new(other, 1_000_123_456, 2_000_000_000).id);
        assert_ne!(a.id, Episode::new(id, 9_000_000_000, 9_000_000_000).id);
        // The onset never follows the opening.
        assert_eq!(
            Episode::new(id, 5_000_000_000, 3_000_000_000).onset_unix_nano,
            3_000_000_000
        );
    }
}
