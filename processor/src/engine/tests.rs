use super::*;

const S: u64 = 1_000_000_000;
/// A base time aligned to the 10 s step.
const T0: u64 = 1_700_000_000 * S;

fn sample(
    service: &str,
    cohort: &str,
    instance: &str,
    t_s: f64,
    signal: Signal,
    v: f64,
) -> MemorySample {
    let mut values = SignalValues::default();
    values.set(signal, v);
    MemorySample {
        service: service.into(),
        instance: instance.into(),
        cohort: Some(cohort.into()),
        time_unix_nano: T0 + (t_s * 1e9) as u64,
        trace_id: Some([(v as u8).max(1); 16]),
        span_id: Some([(v as u8).max(1); 8]),
        values,
    }
}

fn cohort_summaries<'a>(w: &'a ClosedWindow, cohort: &str) -> Vec<&'a WindowSummary> {
    w.summaries
        .iter()
        .filter(|s| matches!(&s.key.group.scope, Scope::Cohort(Some(c)) if &**c == cohort))
        .collect()
}

#[test]
fn windows_close_when_the_watermark_passes_their_end() {
    let mut e = Engine::new(EngineConfig::default());
    let samples: Vec<_> = (0..70)
        .map(|i| sample("svc", "a", "i1", i as f64, Signal::RssEnd, i as f64))
        .collect();
    e.ingest(&samples);
    // Watermark = 69 s - 5 s lateness = 64 s: windows ending at 10, 20, ..., 60 s close.
    let closed = e.advance();
    let ends: Vec<u64> = closed.iter().map(|w| (w.end_unix_nano - T0) / S).collect();
    assert_eq!(ends, vec![10, 20, 30, 40, 50, 60]);
    let last = cohort_summaries(&closed[5], "a")[0];
    assert_eq!(last.count, 60);
    assert_eq!(last.mean, 29.5);
    assert_eq!(last.median, 29.5);
    assert_eq!(last.min, 0.0);
    assert_eq!(last.max, 59.0);
    assert_eq!(
        last.newest_pane.map(|p| (p.count, p.min, p.max, p.last)),
        Some((10, 50.0, 59.0, 59.0))
    );
    // The window is [end - 60 s, end): the first holds only the first step.
    assert_eq!(cohort_summaries(&closed[0], "a")[0].count, 10);
    assert_eq!(closed[5].start_unix_nano, T0);
    // Exemplars are the trace ids of the largest values, largest first.
    assert_eq!(last.exemplars[0].trace_id, [59u8; 16]);
    assert_eq!(last.exemplars[0].span_id, Some([59u8; 8]));
    assert_eq!(last.exemplars.len(), 5);
    // Each window holds the cohort series and the instance series.
    assert_eq!(closed[5].summaries.len(), 2);
}

#[test]
fn late_samples_are_counted_and_dropped() {
    let mut e = Engine::new(EngineConfig::default());
    e.ingest(&[sample("svc", "a", "i1", 0.0, Signal::RssEnd, 1.0)]);
    e.ingest(&[sample("svc", "a", "i1", 66.0, Signal::RssEnd, 1.0)]);
    assert_eq!(
        e.advance().last().map(|w| (w.end_unix_nano - T0) / S),
        Some(60)
    );
    // 55 s belongs to the window ending at 60 s, which has closed: late.
    let dropped = e.ingest(&[sample("svc", "a", "i1", 55.0, Signal::RssEnd, 1.0)]);
    assert_eq!(dropped, vec![(DropReason::Late, Signal::RssEnd)]);
    // 61 s is within the allowed lateness: kept.
    let dropped = e.ingest(&[sample("svc", "a", "i1", 61.0, Signal::RssEnd, 1.0)]);
    assert!(dropped.is_empty());
    assert_eq!(e.stats().late_values, 1);
}

#[test]
fn keys_beyond_the_cap_are_counted_as_overflow() {
    let mut e = Engine::new(EngineConfig {
        max_keys: 4,
        ..EngineConfig::default()
    });
    // Each sample opens a cohort series and an instance series: two per service.
    let samples: Vec<_> = (0..5)
        .map(|i| sample(&format!("svc{i}"), "a", "i1", 1.0, Signal::RssEnd, 1.0))
        .collect();
    let dropped = e.ingest(&samples);
    assert_eq!(e.live_keys(), 4);
    assert_eq!(dropped.len(), 6);
    assert!(dropped.iter().all(|(r, _)| *r == DropReason::KeyOverflow));
    assert_eq!(e.stats().overflow_values, 6);
    assert_eq!(e.live_keys_by_kind(), [("cohort", 2), ("instance", 2)]);
}

#[test]
fn idle_keys_expire_and_free_their_slots() {
    let mut e = Engine::new(EngineConfig {
        max_keys: 2,
        idle_timeout_ns: 120 * S,
        ..EngineConfig::default()
    });
    e.ingest(&[sample("old", "a", "i1", 0.0, Signal::RssEnd, 1.0)]);
    assert_eq!(e.live_keys(), 2);
    // A new service is refused while the old one holds the slots...
    assert_eq!(
        e.ingest(&[sample("new", "a", "i1", 100.0, Signal::RssEnd, 1.0)])
            .len(),
        2
    );
    e.advance();
    assert_eq!(e.live_keys(), 2);
    // ...and admitted once "old" has been idle for longer than the timeout.
    e.advance_to(T0 + 200 * S);
    assert_eq!(e.live_keys(), 0);
    assert_eq!(e.stats().expired_groups, 2);
    assert!(e
        .ingest(&[sample("new", "a", "i1", 300.0, Signal::RssEnd, 1.0)])
        .is_empty());
    assert_eq!(e.live_keys(), 2);
}

#[test]
fn reservoir_bounds_values_but_moments_stay_exact() {
    let mut e = Engine::new(EngineConfig {
        max_samples_per_pane: 100,
        ..EngineConfig::default()
    });
    let samples: Vec<_> = (0..5000)
        .map(|i| {
            sample(
                "svc",
                "a",
                "i1",
                1.0 + i as f64 * 1e-4,
                Signal::RssEnd,
                i as f64,
            )
        })
        .collect();
    e.ingest(&samples);
    let closed = e.finish();
    let s = cohort_summaries(&closed[0], "a")[0];
    assert_eq!(s.count, 5000);
    assert_eq!(s.mean, 2499.5);
    assert_eq!(s.values.len(), 100);
    // A uniform sample of 0..5000 has its median near 2500 (sd of the sample median here is about 250).
    assert!((s.median - 2500.0).abs() < 1000.0, "median {}", s.median);
}

#[test]
fn long_gaps_do_not_close_empty_windows_one_by_one() {
    let mut e = Engine::new(EngineConfig::default());
    e.ingest(&[sample("svc", "a", "i1", 0.0, Signal::RssEnd, 1.0)]);
    e.ingest(&[sample("svc", "a", "i1", 36_000.0, Signal::RssEnd, 1.0)]);
    let closed = e.advance();
    // Six windows hold the first sample; the ten hours between hold nothing and are skipped.
    assert_eq!(closed.len(), 6);
    assert!(closed.iter().all(|w| !w.summaries.is_empty()));
    let rest = e.finish();
    assert_eq!(rest.len(), 6);
}

#[test]
fn same_input_gives_the_same_windows() {
    let run = || {
        let mut e = Engine::new(EngineConfig {
            max_samples_per_pane: 16,
            ..EngineConfig::default()
        });
        let samples: Vec<_> = (0..2000)
            .map(|i| {
                sample(
                    "svc",
                    if i % 2 == 0 { "a" } else { "b" },
                    "i1",
                    i as f64 * 0.05,
                    Signal::RssEnd,
                    (i * 7919 % 1000) as f64,
                )
            })
            .collect();
        e.ingest(&samples);
        let mut all = e.advance();
        all.extend(e.finish());
        all
    };
    assert_eq!(run(), run());
}
