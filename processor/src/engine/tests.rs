use super::*;
use crate::signal::SignalValues;

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
    // One source: no time is needed to find the service's sources.
    let mut e = Engine::new(EngineConfig {
        source_idle_ns: 10 * S,
        ..EngineConfig::default()
    });
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
    // Each sample opens a cohort series and an instance series: two per service. The value of a sample whose
    // instance cannot be admitted is dropped whole, once.
    let samples: Vec<_> = (0..5)
        .map(|i| sample(&format!("svc{i}"), "a", "i1", 1.0, Signal::RssEnd, 1.0))
        .collect();
    let dropped = e.ingest(&samples);
    assert_eq!(e.live_keys(), 4);
    assert_eq!(dropped.len(), 3);
    assert!(dropped.iter().all(|(r, _)| *r == DropReason::KeyOverflow));
    assert_eq!(e.stats().overflow_values, 3);
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
    // A new service is refused while the old one holds the slots (and has sent within a window, so it is not
    // made to room for)...
    assert_eq!(
        e.ingest(&[sample("new", "a", "i1", 50.0, Signal::RssEnd, 1.0)])
            .len(),
        1
    );
    e.advance();
    assert_eq!(e.live_keys(), 2);
    // ...and admitted once "old" has been idle for longer than the timeout.
    e.tick(T0 + 200 * S);
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
    // The instance's series keeps fewer values (its detectors read extremes), with the same exact moments and
    // extremes: an instance's memory does not grow with its request rate.
    let i = closed[0]
        .summaries
        .iter()
        .find(|s| matches!(&s.key.group.scope, Scope::Instance(id) if &**id == "i1"))
        .expect("the instance's window");
    assert_eq!(i.values.len(), 64);
    assert_eq!((i.count, i.mean, i.min, i.max), (5000, 2499.5, 0.0, 4999.0));
    assert_eq!(i.newest_pane.map(|p| (p.min, p.max)), Some((0.0, 4999.0)));
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

fn ends(w: &[ClosedWindow]) -> Vec<u64> {
    w.iter().map(|w| (w.end_unix_nano - T0) / S).collect()
}

fn instance_keys(w: &ClosedWindow) -> Vec<String> {
    w.summaries
        .iter()
        .filter_map(|s| match &s.key.group.scope {
            Scope::Instance(i) => Some(i.to_string()),
            Scope::Cohort(_) => None,
        })
        .collect()
}

#[test]
fn a_source_ahead_does_not_make_another_late() {
    let mut e = Engine::new(EngineConfig::default());
    let send = |e: &mut Engine, instance: &str, from: u64, to: u64, per_s: u64| {
        for t in from * per_s..=to * per_s {
            let t = t as f64 / per_s as f64;
            let dropped = e.ingest(&[sample("svc", "a", instance, t, Signal::RssEnd, 1.0)]);
            assert!(dropped.is_empty(), "{instance} at {t} s: {dropped:?}");
        }
    };
    // i1 sends up to 100 s; i2, of the same service, then catches up from 0 s: its data is not late (the
    // service's first two windows are for finding its sources).
    send(&mut e, "i1", 0, 100, 1);
    let first = e.advance();
    assert_eq!(ends(&first).last(), Some(&90));
    assert!(first.iter().all(|w| cohort_summaries(w, "a").is_empty()));
    send(&mut e, "i2", 0, 200, 2);
    // Past them, i1 runs 3 minutes ahead and i2 follows, in order on its own.
    send(&mut e, "i1", 101, 600, 1);
    send(&mut e, "i2", 201, 420, 2);
    assert_eq!(e.stats().late_values, 0);
    assert_eq!(e.stats().late_for_cohort_values, 0);
    let closed = e.advance();
    // The cohort's windows wait for the slower source (420 s - 5 s).
    let cohort_ends: Vec<u64> = closed
        .iter()
        .filter(|w| !cohort_summaries(w, "a").is_empty())
        .map(|w| (w.end_unix_nano - T0) / S)
        .collect();
    assert_eq!(cohort_ends.first(), Some(&10));
    assert_eq!(cohort_ends.last(), Some(&410));
    let at_60 = closed
        .iter()
        .find(|w| w.end_unix_nano == T0 + 60 * S)
        .expect("the window ending at 60 s");
    // Both instances' values are in it: 60 of i1 (0-59 s) and 120 of i2 (0-59.5 s, two a second).
    assert_eq!(cohort_summaries(at_60, "a")[0].count, 180);
    assert_eq!(instance_keys(at_60), vec!["i2"]);
}

#[test]
fn collector_lines_of_pod_groups_over_two_scrapes_lose_nothing() {
    let mut e = Engine::new(EngineConfig::default());
    let pods: Vec<String> = (0..24).map(|i| format!("pod-{i}")).collect();
    let mut closed = Vec::new();
    // A 57 s scrape grid; each line carries 8 pods over two consecutive scrapes, groups in turn.
    for pair in 0..40u64 {
        for group in pods.chunks(8) {
            let line: Vec<_> = [2 * pair, 2 * pair + 1]
                .iter()
                .flat_map(|k| {
                    group.iter().map(move |p| {
                        sample(
                            "svc",
                            "a",
                            p,
                            (*k * 57) as f64,
                            Signal::ContainerWorkingSet,
                            1e9,
                        )
                    })
                })
                .collect();
            assert!(e.ingest(&line).is_empty());
            closed.extend(e.advance());
        }
    }
    assert_eq!(e.stats().late_values, 0);
    assert_eq!(e.stats().late_for_cohort_values, 0);
    // Every pod's every scrape reached its instance windows and the cohort's.
    closed.extend(e.finish());
    let newest: u64 = closed
        .iter()
        .flat_map(|w| &w.summaries)
        .filter(|s| matches!(s.key.group.scope, Scope::Cohort(_)))
        .filter_map(|s| s.newest_pane.map(|p| p.count))
        .sum();
    assert_eq!(newest, 24 * 80);
}

#[test]
fn an_idle_source_stops_holding_the_cohort_back() {
    let mut e = Engine::new(EngineConfig::default());
    e.ingest(&[sample("svc", "a", "stopped", 0.0, Signal::RssEnd, 1.0)]);
    let running: Vec<_> = (0..=400)
        .map(|t| sample("svc", "a", "running", t as f64, Signal::RssEnd, 1.0))
        .collect();
    e.ingest(&running);
    let closed = e.advance();
    let cohort_ends: Vec<u64> = closed
        .iter()
        .filter(|w| !cohort_summaries(w, "a").is_empty())
        .map(|w| (w.end_unix_nano - T0) / S)
        .collect();
    // "stopped" is more than source_idle (300 s) behind: the cohort closes on "running" alone.
    assert_eq!(cohort_ends.last(), Some(&390));
    // A sample of "stopped" behind the cohort's progress still counts for its own windows.
    assert!(e
        .ingest(&[sample("svc", "a", "stopped", 100.0, Signal::RssEnd, 1.0)])
        .iter()
        .all(|(r, _)| *r == DropReason::LateForCohort));
    assert_eq!(e.stats().late_for_cohort_values, 1);
    assert_eq!(e.stats().late_values, 0);
}

#[test]
fn the_timer_closes_quiet_sources_only() {
    let mut e = Engine::new(EngineConfig::default());
    e.ingest(&[
        sample("quiet", "a", "q1", 0.0, Signal::RssEnd, 1.0),
        sample("steady", "a", "s1", 0.0, Signal::RssEnd, 1.0),
    ]);
    assert!(e.advance().is_empty());
    let mut closed = Vec::new();
    // The wall clock runs 15 s ahead of event time; "steady" (a scraper behind a batching Collector) sends a
    // point a minute, 50 s after its time; "quiet" sends nothing more.
    for tick in 1..=20u64 {
        if tick % 6 == 0 {
            let t = (tick - 5) * 10;
            assert!(e
                .ingest(&[sample("steady", "a", "s1", t as f64, Signal::RssEnd, 1.0)])
                .is_empty());
            closed.extend(e.advance());
        }
        closed.extend(e.tick(T0 + tick * 10 * S - 15 * S));
    }
    assert_eq!(e.stats().late_values, 0);
    let services: std::collections::BTreeSet<String> = closed
        .iter()
        .flat_map(|w| &w.summaries)
        .map(|s| s.key.group.service.to_string())
        .collect();
    // "quiet" closed once it had been silent for a window and two steps; "steady" on its own progress.
    assert!(services.contains("quiet"), "{services:?}");
    let quiet_last = closed
        .iter()
        .filter(|w| w.summaries.iter().any(|s| &*s.key.group.service == "quiet"))
        .map(|w| (w.end_unix_nano - T0) / S)
        .max();
    assert_eq!(quiet_last, Some(60));
}

#[test]
fn a_source_that_stops_has_its_last_windows_closed_as_its_service_moves_on() {
    let mut e = Engine::new(EngineConfig::default());
    let mut closed = Vec::new();
    for t in 0..=900 {
        let mut batch = vec![sample("svc", "a", "running", t as f64, Signal::RssEnd, 1.0)];
        if t <= 100 {
            batch.push(sample("svc", "a", "stopped", t as f64, Signal::RssEnd, 1.0));
        }
        e.ingest(&batch);
        closed.extend(e.advance());
    }
    let last_of = |id: &str| {
        closed
            .iter()
            .filter(|w| instance_keys(w).iter().any(|i| i == id))
            .map(|w| (w.end_unix_nano - T0) / S)
            .max()
    };
    // Every window holding its last sample (at 100 s, ends 110-160 s) closed, once "running" was 5 minutes ahead, before the
    // group could expire (10 minutes).
    assert_eq!(last_of("stopped"), Some(160));
    assert_eq!(e.stats().expired_groups, 1);
}

#[test]
fn a_service_that_goes_quiet_has_its_windows_closed_before_it_expires() {
    let mut e = Engine::new(EngineConfig {
        idle_timeout_ns: 120 * S,
        source_idle_ns: 60 * S,
        ..EngineConfig::default()
    });
    let mut closed = Vec::new();
    e.ingest(&[sample("once", "a", "i1", 0.0, Signal::RssEnd, 7.0)]);
    closed.extend(e.advance());
    for t in 0..=300 {
        e.ingest(&[sample("busy", "a", "i1", t as f64, Signal::RssEnd, 1.0)]);
        closed.extend(e.advance());
    }
    assert_eq!(e.stats().expired_groups, 2);
    // All six windows that held the lone sample closed, for its instance and its cohort.
    let once: Vec<_> = closed
        .iter()
        .flat_map(|w| &w.summaries)
        .filter(|s| &*s.key.group.service == "once")
        .collect();
    assert_eq!(once.len(), 12);
    assert!(once.iter().all(|s| s.count == 1 && s.max == 7.0));
}

#[test]
fn event_times_past_the_latest_are_dropped_and_the_rest_still_close() {
    let mut e = Engine::new(EngineConfig::default());
    let mut far = sample("svc", "a", "i1", 0.0, Signal::RssEnd, 1.0);
    far.time_unix_nano = u64::MAX - 5 * S;
    let mut latest = sample("svc", "a", "i2", 0.0, Signal::RssEnd, 1.0);
    latest.time_unix_nano = LATEST_EVENT_TIME;
    let dropped = e.ingest(&[
        sample("svc", "a", "i1", 0.0, Signal::RssEnd, 1.0),
        far,
        latest,
    ]);
    assert_eq!(dropped, vec![(DropReason::FutureTimestamp, Signal::RssEnd)]);
    // The sample at the latest time and the ordinary one close their windows; nothing loops or wraps.
    let mut closed = e.advance();
    closed.extend(e.tick(u64::MAX));
    closed.extend(e.finish());
    let ends: std::collections::BTreeSet<u64> = closed.iter().map(|w| w.end_unix_nano).collect();
    assert!(ends.iter().any(|t| *t < LATEST_EVENT_TIME / 2), "{ends:?}");
    assert!(ends.iter().any(|t| *t > LATEST_EVENT_TIME), "{ends:?}");
}

#[test]
fn at_the_key_cap_idle_services_make_room_for_a_newcomer() {
    let mut e = Engine::new(EngineConfig {
        max_keys: 10,
        ..EngineConfig::default()
    });
    // Five services fill the cap (a cohort and an instance series each), then go quiet.
    for k in 0..5 {
        e.ingest(&[sample(
            &format!("junk-{k}"),
            "a",
            "p",
            0.0,
            Signal::RssEnd,
            1.0,
        )]);
    }
    e.advance();
    assert_eq!(e.live_keys(), 10);
    // Two windows later a new service arrives: its first sample is refused, room is made at the next advance,
    // and its next sample is taken.
    let newcomer = |t: f64| sample("real", "a", "p", t, Signal::RssEnd, 2.0);
    assert_eq!(e.ingest(&[newcomer(120.0)]).len(), 1);
    let closed = e.advance();
    assert!(
        closed.iter().any(|w| !w.summaries.is_empty()),
        "the evicted services' last windows are closed, not lost"
    );
    assert!(e.stats().evicted_services >= 1);
    assert!(e.ingest(&[newcomer(121.0)]).is_empty());
    assert!(e.live_keys() <= 10);

    // When every service is still sending, nobody is evicted: the newcomer waits (counted as overflow).
    let mut busy = Engine::new(EngineConfig {
        max_keys: 10,
        ..EngineConfig::default()
    });
    for t in [0.0, 30.0, 60.0, 90.0, 120.0] {
        for k in 0..5 {
            busy.ingest(&[sample(
                &format!("svc-{k}"),
                "a",
                "p",
                t,
                Signal::RssEnd,
                1.0,
            )]);
        }
        busy.advance();
    }
    let late_comer = |t: f64| sample("new", "a", "p", t, Signal::RssEnd, 2.0);
    assert_eq!(busy.ingest(&[late_comer(120.0)]).len(), 1);
    busy.advance();
    assert_eq!(busy.ingest(&[late_comer(121.0)]).len(), 1);
    assert_eq!(busy.stats().evicted_services, 0);
}

/// The engine's saved state (what it holds) after four minutes (past the services' two minutes of finding their
/// sources) of 4 services x 2 cohorts x 2 instances sending 3 signals at `per_s` samples a second per instance.
fn state_bytes_at(per_s: usize) -> usize {
    let mut e = Engine::new(EngineConfig::default());
    let signals = [
        Signal::RssEnd,
        Signal::HeapAllocated,
        Signal::RequestAllocated,
    ];
    let mut k = 0u64;
    for tick in 0..(240 * per_s) {
        let t = tick as f64 / per_s as f64;
        let mut batch = Vec::new();
        for svc in ["a", "b", "c", "d"] {
            for (cohort, inst) in [("1.0", "i1"), ("1.0", "i2"), ("1.1", "i3"), ("1.1", "i4")] {
                k = k
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = 1e9 + (k >> 40) as f64;
                for s in signals {
                    batch.push(sample(svc, cohort, inst, t, s, v));
                }
            }
        }
        e.ingest(&batch);
        e.advance();
    }
    let mut out = Vec::new();
    crate::checkpoint::encode("engine", &e.state(), &mut out).expect("encodes");
    out.len()
}

#[test]
fn memory_for_a_fixed_set_of_series_does_not_grow_with_the_rate() {
    // 30 and 300 samples a second per instance: both fill every reservoir (512 values per cohort pane, 64 per
    // instance pane); what is held then is the same.
    let (slow, fast) = (state_bytes_at(30), state_bytes_at(300));
    let ratio = fast as f64 / slow as f64;
    assert!(
        (0.95..1.05).contains(&ratio),
        "{slow} bytes at 30/s, {fast} at 300/s"
    );
    // And it is what the README's table says: 4 x 2 cohorts x 3 signals at most 45 KiB each, 4 x 4 instances x
    // 3 signals at most 7 KiB each, in memory; in CBOR a value and its tag take 14 bytes, not 12.
    let table = 4 * 2 * 3 * 45 * 1024 + 4 * 4 * 3 * 7 * 1024;
    assert!(fast * 12 < table * 14, "{fast} bytes");
}

/// Runs of samples from one source are looked up once: the windows, the drops and the counters are the same as
/// when every sample is added alone, with late samples, samples late for their cohort only, and the key cap
/// reached within a run.
#[test]
fn a_batch_of_runs_gives_what_its_samples_give_one_by_one() {
    // Sources 0-5 from the start; 6 (a new instance of svc0) from halfway, each run's first sample on time and
    // the rest 60 s behind: late for its cohort's windows, not (at first) for its own.
    let names: Vec<[Arc<str>; 3]> = (0..7)
        .map(|k| {
            [
                Arc::from(format!("svc{}", k % 2)),
                Arc::from(format!("i{}", if k < 6 { k % 3 } else { 9 })),
                Arc::from(format!("c{}", k % 2)),
            ]
        })
        .collect();
    let mut x = 12345u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut samples = Vec::new();
    for b in 0..400u64 {
        let k = (next() % if b < 200 { 6 } else { 7 }) as usize;
        let [service, instance, cohort] = &names[k];
        // Runs of 1 to 8 samples from one source, times moving forward with some jitter backwards (late).
        for j in 0..1 + next() % 8 {
            let mut values = SignalValues::default();
            values.set(Signal::RssEnd, (next() % 1000) as f64);
            if next() % 3 == 0 {
                values.set(Signal::HeapAllocated, (next() % 1000) as f64);
            }
            let back = match k {
                6 if j > 0 => 60 * S,
                _ if next() % 10 == 0 => 40 * S,
                _ => 0,
            };
            samples.push(MemorySample {
                service: service.clone(),
                instance: instance.clone(),
                cohort: Some(cohort.clone()),
                // Now and then an event time past the latest the engine takes (extraction drops these).
                time_unix_nano: match next() % 50 {
                    0 => u64::MAX,
                    _ => (T0 + b * S / 2 + next() % S).saturating_sub(back),
                },
                trace_id: None,
                span_id: None,
                values,
            });
        }
    }
    let config = EngineConfig {
        max_keys: 17,
        ..EngineConfig::default()
    };
    let (mut together, mut alone) = (Engine::new(config.clone()), Engine::new(config));
    let (mut got, mut want) = (Vec::new(), Vec::new());
    for chunk in samples.chunks(37) {
        got.push((together.ingest(chunk), together.advance()));
        let mut dropped = Vec::new();
        for s in chunk {
            dropped.extend(alone.ingest(std::slice::from_ref(s)));
        }
        want.push((dropped, alone.advance()));
    }
    got.push((Vec::new(), together.finish()));
    want.push((Vec::new(), alone.finish()));
    assert_eq!(got, want);
    assert_eq!(together.stats(), alone.stats());
    let stats = together.stats();
    assert!(
        stats.late_values > 0 && stats.late_for_cohort_values > 0 && stats.overflow_values > 0,
        "{stats:?}"
    );
}

/// A sample past the latest event time is dropped before it makes a source (an empty one would hold its
/// service's cohort windows back).
#[test]
fn an_event_time_past_the_latest_makes_no_source() {
    let mut e = Engine::new(EngineConfig::default());
    let mut s = sample("svc", "a", "i1", 0.0, Signal::RssEnd, 1.0);
    s.time_unix_nano = u64::MAX;
    let dropped = e.ingest(&[s]);
    assert_eq!(dropped, vec![(DropReason::FutureTimestamp, Signal::RssEnd)]);
    assert_eq!((e.live_sources(), e.stats().rejected_samples), (0, 1));
}

/// An instance keeps series of `instance_signals` only (what its detectors read); its cohort keeps them all, and
/// the key count holds the series kept.
#[test]
fn an_instance_keeps_the_signals_its_detectors_read_only() {
    let mut instance_signals = [false; Signal::COUNT];
    instance_signals[Signal::RssEnd as usize] = true;
    let mut e = Engine::new(EngineConfig {
        source_idle_ns: 10 * S,
        instance_signals,
        ..EngineConfig::default()
    });
    let samples: Vec<_> = (0..70)
        .map(|i| {
            let mut s = sample("svc", "a", "i1", i as f64, Signal::RssEnd, 1e9);
            s.values.set(Signal::RssStart, 1e9);
            s.values.set(Signal::RequestAllocated, 1e6 + i as f64);
            s
        })
        .collect();
    assert!(e.ingest(&samples).is_empty());
    let closed = e.advance();
    let last = closed.last().expect("windows closed");
    let mut scopes: Vec<(&str, Signal)> = (last.summaries.iter())
        .map(|s| (s.key.group.scope.kind(), s.key.signal))
        .collect();
    scopes.sort();
    assert_eq!(
        scopes,
        vec![
            ("cohort", Signal::RssStart),
            ("cohort", Signal::RssEnd),
            ("cohort", Signal::RequestAllocated),
            ("instance", Signal::RssEnd),
        ]
    );
    assert_eq!(e.live_keys_by_kind(), [("cohort", 3), ("instance", 1)]);
}
