//! The scenario families. Each draws its parameters from its seed and labels what memdrift must say (and
//! by when), what it may say, and, by leaving it out, what it must not say:
//!
//! | family | data | what is in it | must say |
//! |---|---|---|---|
//! | `calm-noise` | 10 s spans | flat levels under each noise: gaussian, Student-t(3), lognormal, 5x spikes, AR(1) | nothing |
//! | `calm-shapes` | 60 s metrics, in order | flat, warm-up ramp, creep that stops, GC sawtooth, step, restarts, gaps, late start | nothing |
//! | `calm-shapes-spans` | 10 s spans | the same shapes | nothing |
//! | `calm-collector` | 60 s metrics, Collector order | the same shapes, two scrapes of a group of pods per line | nothing |
//! | `leak-spans` | 10 s spans with heap | heap / off-heap leaks 0.1-1.5 MB/s from mid-run to the limit, calm neighbours | growth 15 min before the crossing; leak (and class) within 15 min at >= 1 MB/s |
//! | `leak-metrics` | 60 s metrics, in order | the same leaks in a working-set gauge (or `process.memory.usage`, no limit) | growth where the limit is known; leak at >= 1 MB/s |
//! | `leak-collector` | 60 s metrics, Collector order | the same leaks, two scrapes of a group of pods per line | as `leak-metrics` |
//! | `ab-dense` | spans, 1-2 req/s per cohort | canary request spread x1.6 or x2.6 from mid-run; equal-spread control services | spread x2.6 within 3 min, x1.6 within 10 |
//! | `ab-sparse` | spans, 5-10 per cohort and minute | 30-60 services; 1-3 canaries x2.5 | spread within 10 min |
//! | `ab-calm` | spans, dense | equal spreads, heavy-tailed requests, a canary mean shift, AR(1) RSS | nothing |
//! | `ab-collector` | spans, Collector order | as `ab-dense`, SDK flushes every 5 s, several per line, 2% retried late | as `ab-dense` |
//!
//! Sizes are modest (a scenario replays in well under a second in release mode).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use super::noise::{Noise, NoiseKind};
use super::process::{Creep, LeakSpec, Process};
use super::{
    at, About, Data, Delivery, Expectation, Key, Kind, MetricName, PointRec, Scenario, Source,
    SpanRec, GIB, MB,
};

/// A family: a name, whether it is calm (nothing may be said), and its generator.
pub struct Family {
    pub name: &'static str,
    pub calm: bool,
    pub about: &'static str,
    pub generate: fn(u64) -> Scenario,
}

pub const FAMILIES: &[Family] = &[
    Family {
        name: "calm-noise",
        calm: true,
        about: "10 s spans, flat levels, each noise kind",
        generate: calm_noise,
    },
    Family {
        name: "calm-shapes",
        calm: true,
        about: "60 s metrics in order: ramp, creep, sawtooth, step, restarts, gaps, late start",
        generate: calm_shapes,
    },
    Family {
        name: "calm-shapes-spans",
        calm: true,
        about: "10 s spans: the same shapes",
        generate: calm_shapes_spans,
    },
    Family {
        name: "calm-collector",
        calm: true,
        about: "60 s metrics, Collector order (two scrapes of a pod group per line)",
        generate: calm_collector,
    },
    Family {
        name: "leak-spans",
        calm: false,
        about: "10 s spans with heap: heap/off-heap leaks 0.1-1.5 MB/s to the limit",
        generate: leak_spans,
    },
    Family {
        name: "leak-metrics",
        calm: false,
        about: "60 s metrics in order: the same leaks, class unknown",
        generate: leak_metrics,
    },
    Family {
        name: "leak-collector",
        calm: false,
        about: "60 s metrics, Collector order: the same leaks",
        generate: leak_collector,
    },
    Family {
        name: "ab-dense",
        calm: false,
        about: "A/B spans, 1-2 req/s per cohort: canary sd x1.6 / x2.6, controls",
        generate: ab_dense,
    },
    Family {
        name: "ab-sparse",
        calm: false,
        about: "A/B spans, 5-10 per cohort-minute, 30-60 services: sd x2.5",
        generate: ab_sparse,
    },
    Family {
        name: "ab-calm",
        calm: true,
        about: "A/B spans, equal spreads, heavy tails, a mean shift",
        generate: ab_calm,
    },
    Family {
        name: "ab-collector",
        calm: false,
        about: "A/B spans, Collector order, 2% of flushes retried late",
        generate: ab_collector,
    },
];

pub fn find(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name)
}

/// A seeded generator per family and seed, so that families do not share draws.
fn rng_for(family: &str, seed: u64) -> StdRng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in family.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    StdRng::seed_from_u64(h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Per-instance data: 10 s spans, or 60 s metrics (a shared 57 s scrape grid).
#[derive(Clone, Copy, PartialEq)]
enum Sampling {
    Spans,
    Metrics(MetricName),
}

/// One instance of a per-instance scenario.
struct Inst {
    source: Source,
    process: Process,
}

const SCRAPE_S: f64 = 57.0;
const SPAN_EVERY_S: f64 = 10.0;

/// Samples every instance; returns the data (and each instance's crossing).
fn sample(
    insts: &[Inst],
    sampling: Sampling,
    rng: &mut StdRng,
    duration_s: f64,
) -> (Data, Vec<Option<f64>>) {
    let grid0 = rng.random_range(0.0..SCRAPE_S);
    let mut spans = Vec::new();
    let mut points = Vec::new();
    let mut crossings = Vec::new();
    for (i, inst) in insts.iter().enumerate() {
        let p = &inst.process;
        let crossing = p.crossing();
        crossings.push(crossing);
        let mut r = StdRng::seed_from_u64(rng.random());
        let mut sampler = p.sampler(&mut r);
        let limit = p.limit.min(8e15) as i64;
        match sampling {
            Sampling::Spans => {
                let mut k = (p.start_s / SPAN_EVERY_S).floor();
                loop {
                    let t = k * SPAN_EVERY_S + r.random_range(0.5..9.5);
                    k += 1.0;
                    if t >= p.end_s.min(duration_s) {
                        break;
                    }
                    if !p.reports(t, crossing) {
                        continue;
                    }
                    let (rss, heap) = p.sample(t, &mut sampler, &mut r);
                    let request: f64 = 4e6 + 5e5 * r.sample::<f64, _>(StandardNormal);
                    spans.push(SpanRec {
                        t_ns: at(t),
                        source: i as u32,
                        rss_start: (rss - r.random_range(0.0..4e6)).max(MB) as i64,
                        rss_end: rss as i64,
                        heap: heap as i64,
                        request: request.max(0.0) as i64,
                        limit,
                    });
                }
            }
            Sampling::Metrics(metric) => {
                let mut k = ((p.start_s - grid0) / SCRAPE_S).ceil().max(0.0);
                loop {
                    let t = grid0 + k * SCRAPE_S;
                    k += 1.0;
                    if t >= p.end_s.min(duration_s) {
                        break;
                    }
                    if !p.reports(t, crossing) {
                        continue;
                    }
                    let (rss, _) = p.sample(t, &mut sampler, &mut r);
                    points.push(PointRec {
                        t_ns: at(t),
                        source: i as u32,
                        value: rss as i64,
                        limit: (metric == MetricName::WorkingSet).then_some(limit),
                    });
                }
            }
        }
    }
    let data = match sampling {
        Sampling::Spans => Data::Spans(spans),
        Sampling::Metrics(metric) => Data::Metrics { metric, points },
    };
    (data, crossings)
}

fn with_saw(p: &mut Process, rng: &mut StdRng) {
    p.saw_amplitude = rng.random_range(0.1..0.4) * p.floor;
    p.saw_period_s = (120.0, 360.0);
}

/// A calm process of shape `shape % 8` over [0, duration).
fn calm_process(shape: usize, duration: f64, rng: &mut StdRng) -> Process {
    let floor = rng.random_range(0.8e9..3e9);
    let frac = |rng: &mut StdRng, a: f64, b: f64| rng.random_range(a..b) * duration;
    let maybe_saw = |p: &mut Process, rng: &mut StdRng| {
        if rng.random::<bool>() {
            with_saw(p, rng);
        }
    };
    let mut p = match shape % 8 {
        0 => Process::flat("flat", 0.0, duration, floor),
        1 => {
            let mut p = Process::flat("warm-up ramp", 0.0, duration, floor);
            p.ramp_tau_s = Some(rng.random_range(300.0..1200.0));
            maybe_saw(&mut p, rng);
            p
        }
        2 => {
            let mut p = Process::flat("creep that stops", 0.0, duration, floor);
            let from_s = frac(rng, 0.2, 0.4);
            let until_s = from_s + rng.random_range(1200.0..3600.0);
            let total = rng.random_range(100.0..400.0) * MB;
            p.creep = Some(Creep {
                from_s,
                until_s,
                bytes_per_s: total / (until_s - from_s),
            });
            maybe_saw(&mut p, rng);
            p
        }
        3 => {
            let mut p = Process::flat("gc sawtooth", 0.0, duration, floor);
            with_saw(&mut p, rng);
            p
        }
        4 => {
            let mut p = Process::flat("one-time step", 0.0, duration, floor);
            p.step = Some((frac(rng, 0.3, 0.7), rng.random_range(200.0..800.0) * MB));
            maybe_saw(&mut p, rng);
            p
        }
        5 => {
            let mut p = Process::flat("restarts", 0.0, duration, floor);
            p.ramp_tau_s = Some(rng.random_range(30.0..120.0));
            let n = rng.random_range(1..=3);
            p.restarts = (0..n).map(|_| frac(rng, 0.15, 0.9)).collect();
            maybe_saw(&mut p, rng);
            p
        }
        6 => {
            let mut p = Process::flat("gaps", 0.0, duration, floor);
            let n = rng.random_range(1..=2);
            p.gaps = (0..n)
                .map(|_| {
                    let a = frac(rng, 0.2, 0.85);
                    (a, a + rng.random_range(180.0..1200.0))
                })
                .collect();
            maybe_saw(&mut p, rng);
            p
        }
        _ => {
            let start = frac(rng, 0.2, 0.6);
            let mut p = Process::flat("starts mid-run", start, duration, floor);
            p.ramp_tau_s = Some(rng.random_range(60.0..600.0));
            maybe_saw(&mut p, rng);
            p
        }
    };
    p.noise = NoiseKind::draw(rng);
    p.noise_scale = rng.random_range(0.005..0.02) * floor;
    p.prepare(rng);
    // Headroom: the peak at 45-80% of the limit (45-70% where the level moves up for good).
    let hi = if p.creep.is_some() || p.step.is_some() {
        0.7
    } else {
        0.8
    };
    p.limit = (p.peak_without_leak() / rng.random_range(0.45..hi)).round();
    p
}

fn pod_name(rng: &mut StdRng) -> String {
    format!("pod-{:06x}", rng.random_range(0..0x100_0000u32))
}

const INSTANCE_SERVICES: [&str; 3] = ["rag-api", "rerank-api", "chat-api"];

/// `n` calm instances over `services` services, shapes cycled so that each appears.
fn calm_instances(n: usize, services: usize, duration: f64, rng: &mut StdRng) -> Vec<Inst> {
    let offset = rng.random_range(0..8);
    (0..n)
        .map(|i| {
            let service = INSTANCE_SERVICES[i % services.clamp(1, 3)];
            Inst {
                source: Source {
                    service: service.into(),
                    version: "3.1.0".into(),
                    instance: pod_name(rng),
                },
                process: calm_process(i + offset, duration, rng),
            }
        })
        .collect()
}

/// For people: what a process does.
fn describe(p: &Process) -> String {
    let mut s = format!(
        "{}, {} noise sd {:.1}%, floor {:.2} GB",
        p.shape,
        p.noise.name(),
        100.0 * p.noise_scale / p.floor.max(1.0),
        p.floor / 1e9
    );
    if p.saw_amplitude > 0.0 {
        let _ = write!(s, ", sawtooth {:.0} MB", p.saw_amplitude / MB);
    }
    if p.start_s > 0.0 {
        let _ = write!(s, ", from {:.0} min", p.start_s / 60.0);
    }
    if let Some(c) = p.creep {
        let _ = write!(
            s,
            ", creeps {:.0} MB over {:.0}-{:.0} min",
            c.bytes_per_s * (c.until_s - c.from_s) / MB,
            c.from_s / 60.0,
            c.until_s / 60.0
        );
    }
    if let Some((at, by)) = p.step {
        let _ = write!(s, ", steps {:.0} MB at {:.0} min", by / MB, at / 60.0);
    }
    if let Some(l) = p.leak {
        let _ = write!(
            s,
            ", {:.2} MB/s from {:.0} min",
            l.bytes_per_s / MB,
            l.from_s / 60.0
        );
    }
    let _ = write!(s, ", limit {:.2} GB", p.limit / 1e9);
    if let Some(c) = p.crossing() {
        let _ = write!(s, ", crosses at {:.0} min", c / 60.0);
    }
    s
}

fn scenario(
    family: &'static str,
    seed: u64,
    duration_s: f64,
    insts: &[Inst],
    data: Data,
    delivery: Delivery,
    truth: Vec<Expectation>,
) -> Scenario {
    // The cohort of a per-instance family is all of a service's instances.
    let cohorts = insts.iter().map(|i| {
        (
            Key::Cohort {
                service: i.source.service.clone(),
                cohort: i.source.version.clone(),
            },
            About {
                shape: "all instances of a service".into(),
                detail: format!("every instance of {}", i.source.service),
            },
        )
    });
    let about = cohorts
        .chain(insts.iter().map(|i| {
            (
                Key::Instance {
                    service: i.source.service.clone(),
                    instance: i.source.instance.clone(),
                },
                About {
                    shape: format!("{} / {}", i.process.shape, i.process.noise.short()),
                    detail: describe(&i.process),
                },
            )
        }))
        .collect();
    Scenario {
        family,
        seed,
        duration_s,
        sources: insts.iter().map(|i| i.source.clone()).collect(),
        data,
        delivery,
        truth,
        about,
    }
}

fn calm_noise(seed: u64) -> Scenario {
    let mut rng = rng_for("calm-noise", seed);
    let duration = 4.0 * 3600.0;
    let n = rng.random_range(6..=10);
    let insts: Vec<Inst> = (0..n)
        .map(|i| {
            let floor = rng.random_range(0.8e9..3e9);
            let mut p = Process::flat("flat", 0.0, duration, floor);
            p.noise = NoiseKind::nth(i, &mut rng);
            p.noise_scale = rng.random_range(0.005..0.03) * floor;
            p.prepare(&mut rng);
            p.limit = (floor / rng.random_range(0.45..0.8)).round();
            Inst {
                source: Source {
                    service: INSTANCE_SERVICES[i % 2].into(),
                    version: "3.1.0".into(),
                    instance: pod_name(&mut rng),
                },
                process: p,
            }
        })
        .collect();
    let (data, _) = sample(&insts, Sampling::Spans, &mut rng, duration);
    scenario(
        "calm-noise",
        seed,
        duration,
        &insts,
        data,
        Delivery::InOrder,
        Vec::new(),
    )
}

fn calm_shapes_with(
    family: &'static str,
    seed: u64,
    sampling: Sampling,
    delivery: Delivery,
) -> Scenario {
    let mut rng = rng_for(family, seed);
    let spans = sampling == Sampling::Spans;
    let duration = if spans { 4.0 } else { 6.0 } * 3600.0;
    let n = if spans {
        rng.random_range(8..=12)
    } else {
        rng.random_range(12..=20)
    };
    let insts = calm_instances(n, 3, duration, &mut rng);
    let (data, _) = sample(&insts, sampling, &mut rng, duration);
    scenario(family, seed, duration, &insts, data, delivery, Vec::new())
}

/// `process.memory.usage` (no limit) for one seed in three, else the working set and its limit.
fn metric_for(seed: u64) -> MetricName {
    if seed % 3 == 2 {
        MetricName::ProcessUsage
    } else {
        MetricName::WorkingSet
    }
}

fn calm_shapes(seed: u64) -> Scenario {
    calm_shapes_with(
        "calm-shapes",
        seed,
        Sampling::Metrics(metric_for(seed)),
        Delivery::InOrder,
    )
}

fn calm_shapes_spans(seed: u64) -> Scenario {
    calm_shapes_with(
        "calm-shapes-spans",
        seed,
        Sampling::Spans,
        Delivery::InOrder,
    )
}

fn collector_metrics(rng: &mut StdRng) -> Delivery {
    Delivery::Collector {
        group: rng.random_range(3..=6),
        retry_share: 0.0,
    }
}

fn calm_collector(seed: u64) -> Scenario {
    let mut rng = rng_for("calm-collector/delivery", seed);
    calm_shapes_with(
        "calm-collector",
        seed,
        Sampling::Metrics(MetricName::WorkingSet),
        collector_metrics(&mut rng),
    )
}

/// Longest leak scenario, seconds.
const LEAK_CAP_S: f64 = 8.0 * 3600.0;

/// Leaking instances (the first at 1-1.5 MB/s, the rest 0.1-1.5 MB/s log-uniform) and calm neighbours.
fn leak_instances(rng: &mut StdRng, class_in_heap: bool) -> Vec<Inst> {
    let leaking = rng.random_range(3..=5);
    let calm = rng.random_range(2..=3);
    let mut insts = Vec::new();
    for i in 0..leaking + calm {
        let floor = rng.random_range(0.8e9..2.5e9);
        let is_leak = i < leaking;
        let mut p = Process::flat(
            if is_leak { "leak" } else { "calm" },
            0.0,
            LEAK_CAP_S,
            floor,
        );
        if rng.random::<f64>() < 0.8 {
            with_saw(&mut p, rng);
        }
        p.noise = NoiseKind::draw(rng);
        p.noise_scale = rng.random_range(0.005..0.015) * floor;
        p.prepare(rng);
        let peak = p.peak_without_leak();
        if is_leak {
            let rate = if i == 0 {
                rng.random_range(1.0..1.5) * MB
            } else {
                (rng.random_range((0.1f64).ln()..(1.5f64).ln())).exp() * MB
            };
            let from_s = rng.random_range(30.0..90.0) * 60.0;
            // Minutes from the onset to the crossing: 35-270, and at most 6 GB of headroom.
            let to_cross = rng.random_range(35.0..270.0f64).min(6e9 / rate / 60.0) * 60.0;
            p.leak = Some(LeakSpec {
                from_s,
                bytes_per_s: rate,
                heap: class_in_heap && rng.random::<bool>(),
            });
            p.shape = match p.leak {
                _ if !class_in_heap => "leak",
                Some(l) if l.heap => "heap leak",
                _ => "off-heap leak",
            };
            p.limit = (peak + rate * to_cross).round();
        } else {
            p.limit = (peak / rng.random_range(0.45..0.8)).round();
        }
        insts.push(Inst {
            source: Source {
                service: INSTANCE_SERVICES[i % 2].into(),
                version: "3.1.0".into(),
                instance: pod_name(rng),
            },
            process: p,
        });
    }
    // The scenario ends 10 minutes after the last crossing (at most LEAK_CAP_S).
    let last = insts
        .iter()
        .filter_map(|i| i.process.crossing())
        .fold(0.0, f64::max);
    let duration = (last + 600.0).min(LEAK_CAP_S);
    for i in &mut insts {
        i.process.end_s = duration;
    }
    insts
}

/// What each leaking instance must or may make memdrift say.
fn leak_truth(
    insts: &[Inst],
    crossings: &[Option<f64>],
    class_known: bool,
    limit_known: bool,
) -> Vec<Expectation> {
    let mut truth = Vec::new();
    for (inst, crossing) in insts.iter().zip(crossings) {
        let Some(leak) = inst.process.leak else {
            continue;
        };
        let key = Key::Instance {
            service: inst.source.service.clone(),
            instance: inst.source.instance.clone(),
        };
        let until_s = crossing.unwrap_or(inst.process.end_s);
        let rate = leak.bytes_per_s / MB;
        let class = if leak.heap { "heap" } else { "off_heap" };
        let what = format!("{} {rate:.2} MB/s", inst.process.shape);
        let required_growth = limit_known && crossing.is_some();
        truth.push(Expectation {
            kind: Kind::Growth,
            key: key.clone(),
            what: what.clone(),
            onset_s: leak.from_s,
            until_s,
            deadline_s: required_growth.then_some(until_s - 900.0),
            class: None,
            crossing_s: *crossing,
        });
        truth.push(Expectation {
            kind: Kind::Leak,
            key,
            what,
            onset_s: leak.from_s,
            until_s,
            deadline_s: (leak.bytes_per_s >= MB).then_some(leak.from_s + 900.0),
            class: class_known.then(|| class.to_string()),
            crossing_s: *crossing,
        });
    }
    truth
}

fn leak_with(family: &'static str, seed: u64, sampling: Sampling, delivery: Delivery) -> Scenario {
    let mut rng = rng_for(family, seed);
    let spans = sampling == Sampling::Spans;
    let insts = leak_instances(&mut rng, spans);
    let duration = insts.first().map_or(0.0, |i| i.process.end_s);
    let (data, crossings) = sample(&insts, sampling, &mut rng, duration);
    let limit_known = match sampling {
        Sampling::Spans => true,
        Sampling::Metrics(m) => m == MetricName::WorkingSet,
    };
    let truth = leak_truth(&insts, &crossings, spans, limit_known);
    scenario(family, seed, duration, &insts, data, delivery, truth)
}

fn leak_spans(seed: u64) -> Scenario {
    leak_with("leak-spans", seed, Sampling::Spans, Delivery::InOrder)
}

fn leak_metrics(seed: u64) -> Scenario {
    leak_with(
        "leak-metrics",
        seed,
        Sampling::Metrics(metric_for(seed)),
        Delivery::InOrder,
    )
}

fn leak_collector(seed: u64) -> Scenario {
    let mut rng = rng_for("leak-collector/delivery", seed);
    leak_with(
        "leak-collector",
        seed,
        Sampling::Metrics(MetricName::WorkingSet),
        collector_metrics(&mut rng),
    )
}

/// One service of an A/B scenario.
struct AbService {
    name: String,
    /// Mean and sd of bytes allocated per request.
    mean: f64,
    sd: f64,
    noise: NoiseKind,
    /// The canary's sd multiplied by `ratio` from `onset_s` on.
    change: Option<(f64, f64)>,
    /// The canary's mean, relative to the baseline's.
    canary_mean: f64,
    /// Every instance's RSS: AR(1) with this phi and scale (the same in both cohorts).
    rss_phi: f64,
    rss_scale: f64,
}

const BASELINE: &str = "1.4.2";
const CANARY: &str = "1.5.0";
const AB_SERVICES: [&str; 6] = [
    "chat-llm",
    "embed-llm",
    "rerank-llm",
    "summarize-llm",
    "code-llm",
    "vision-llm",
];

/// Shape of an A/B scenario.
struct AbShape {
    instances_per_cohort: usize,
    /// Requests per cohort and minute, drawn per cohort in this range.
    per_minute: (f64, f64),
    duration_s: f64,
    /// Must say a x2.6 change within this long, anything smaller within `deadline_small_s`.
    deadline_big_s: f64,
    deadline_small_s: f64,
}

fn ab_scenario(
    family: &'static str,
    seed: u64,
    rng: &mut StdRng,
    services: &[AbService],
    shape: &AbShape,
    delivery: Delivery,
) -> Scenario {
    let mut sources = Vec::new();
    let mut spans = Vec::new();
    for svc in services {
        for (canary, version) in [(false, BASELINE), (true, CANARY)] {
            let per_s = rng.random_range(shape.per_minute.0..shape.per_minute.1) / 60.0;
            let per_instance = per_s / shape.instances_per_cohort as f64;
            for i in 0..shape.instances_per_cohort {
                let source = sources.len() as u32;
                sources.push(Source {
                    service: svc.name.clone(),
                    version: version.into(),
                    instance: format!("{}-{}-{i}", svc.name, version.replace('.', "-")),
                });
                let mut r = StdRng::seed_from_u64(rng.random());
                let base = r.random_range(0.8e9..2.5e9);
                let mut rss_noise =
                    Noise::new(NoiseKind::Ar1 { phi: svc.rss_phi }, svc.rss_scale, &mut r);
                let mut request_noise = Noise::new(svc.noise, 1.0, &mut r);
                let mut last_rss = base + rss_noise.next(&mut r);
                let mut t = 0.0;
                loop {
                    t += -(1.0 - r.random::<f64>()).ln() / per_instance;
                    if t >= shape.duration_s {
                        break;
                    }
                    let ratio = match svc.change {
                        Some((onset, ratio)) if canary && t >= onset => ratio,
                        _ => 1.0,
                    };
                    let mean = if canary {
                        svc.mean * svc.canary_mean
                    } else {
                        svc.mean
                    };
                    let request = mean + svc.sd * ratio * request_noise.next(&mut r);
                    let rss = (base + rss_noise.next(&mut r)).max(MB);
                    let heap = 0.6 * rss + 3.0 * MB * r.sample::<f64, _>(StandardNormal);
                    spans.push(SpanRec {
                        t_ns: at(t),
                        source,
                        rss_start: last_rss as i64,
                        rss_end: rss as i64,
                        heap: heap.clamp(MB, rss) as i64,
                        request: request.max(0.0).round() as i64,
                        limit: (8.0 * GIB) as i64,
                    });
                    last_rss = rss;
                }
            }
        }
    }
    let truth = services
        .iter()
        .filter_map(|svc| {
            let (onset_s, ratio) = svc.change?;
            let within = if ratio >= 2.6 {
                shape.deadline_big_s
            } else {
                shape.deadline_small_s
            };
            Some(Expectation {
                kind: Kind::SpreadDrift,
                key: Key::Cohort {
                    service: svc.name.clone(),
                    cohort: CANARY.into(),
                },
                what: format!("canary request sd x{ratio}"),
                onset_s,
                until_s: shape.duration_s,
                deadline_s: Some(onset_s + within),
                class: None,
                crossing_s: None,
            })
        })
        .collect();
    let mut about = BTreeMap::new();
    for svc in services {
        let common = format!(
            "requests {:.1} MB sd {:.1} MB {}, rss ar(1) phi {:.2} {:.0} MB",
            svc.mean / MB,
            svc.sd / MB,
            svc.noise.name(),
            svc.rss_phi,
            svc.rss_scale / MB
        );
        let mut canary = common.clone();
        if let Some((onset, ratio)) = svc.change {
            let _ = write!(canary, "; sd x{ratio} from {:.1} min", onset / 60.0);
        }
        if svc.canary_mean != 1.0 {
            let _ = write!(canary, "; mean x{:.2}", svc.canary_mean);
        }
        let mut canary_shape = svc.noise.short().to_string();
        if svc.change.is_some() {
            canary_shape.push_str(" + sd change");
        }
        if svc.canary_mean != 1.0 {
            canary_shape.push_str(" + canary mean shift");
        }
        for (cohort, shape, detail) in [
            (BASELINE, svc.noise.short().to_string(), common),
            (CANARY, canary_shape, canary),
        ] {
            about.insert(
                Key::Cohort {
                    service: svc.name.clone(),
                    cohort: cohort.into(),
                },
                About { shape, detail },
            );
        }
    }
    for src in &sources {
        let rss = services
            .iter()
            .find(|s| s.name == src.service)
            .map(|s| format!("rss ar(1) phi {:.2} {:.0} MB", s.rss_phi, s.rss_scale / MB));
        about.insert(
            Key::Instance {
                service: src.service.clone(),
                instance: src.instance.clone(),
            },
            About {
                shape: "a/b instance / ar(1)".into(),
                detail: rss.unwrap_or_default(),
            },
        );
    }
    Scenario {
        family,
        seed,
        duration_s: shape.duration_s,
        sources,
        data: Data::Spans(spans),
        delivery,
        truth,
        about,
    }
}

fn ab_service(name: String, rng: &mut StdRng, heavy: bool) -> AbService {
    let mean = rng.random_range(4.0..16.0) * MB;
    let noise = if heavy {
        NoiseKind::nth(rng.random_range(1..4), rng)
    } else {
        NoiseKind::draw_independent(rng)
    };
    AbService {
        name,
        mean,
        sd: rng.random_range(0.1..0.3) * mean,
        noise,
        change: None,
        canary_mean: 1.0,
        rss_phi: rng.random_range(0.9..0.98),
        rss_scale: rng.random_range(10.0..40.0) * MB,
    }
}

const DENSE: AbShape = AbShape {
    instances_per_cohort: 2,
    per_minute: (60.0, 120.0),
    duration_s: 3600.0,
    deadline_big_s: 180.0,
    deadline_small_s: 600.0,
};

/// 3-5 dense services: the first changes (x1.6 or x2.6), the second is a control, the rest either.
fn dense_services(rng: &mut StdRng) -> Vec<AbService> {
    let n = rng.random_range(3..=5);
    let mut names = AB_SERVICES.to_vec();
    for i in (1..names.len()).rev() {
        names.swap(i, rng.random_range(0..=i));
    }
    names
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, name)| {
            let mut svc = ab_service(name.to_string(), rng, false);
            let changes = i == 0 || (i > 1 && rng.random::<bool>());
            if changes {
                let ratio = if rng.random::<bool>() { 2.6 } else { 1.6 };
                svc.change = Some((rng.random_range(600.0..1500.0), ratio));
            }
            svc
        })
        .collect()
}

fn ab_dense(seed: u64) -> Scenario {
    let mut rng = rng_for("ab-dense", seed);
    let services = dense_services(&mut rng);
    ab_scenario(
        "ab-dense",
        seed,
        &mut rng,
        &services,
        &DENSE,
        Delivery::InOrder,
    )
}

fn ab_collector(seed: u64) -> Scenario {
    let mut rng = rng_for("ab-collector", seed);
    let services = dense_services(&mut rng);
    ab_scenario(
        "ab-collector",
        seed,
        &mut rng,
        &services,
        &DENSE,
        Delivery::Collector {
            group: 0,
            retry_share: 0.02,
        },
    )
}

fn ab_sparse(seed: u64) -> Scenario {
    let mut rng = rng_for("ab-sparse", seed);
    let n = rng.random_range(30..=60);
    let changed = rng.random_range(1..=3);
    let services: Vec<AbService> = (0..n)
        .map(|i| {
            let mut svc = ab_service(format!("svc-{i:02}"), &mut rng, false);
            if i < changed {
                svc.change = Some((rng.random_range(600.0..1500.0), 2.5));
            }
            svc
        })
        .collect();
    let shape = AbShape {
        instances_per_cohort: 1,
        per_minute: (5.0, 10.0),
        duration_s: 3600.0,
        deadline_big_s: 600.0,
        deadline_small_s: 600.0,
    };
    ab_scenario(
        "ab-sparse",
        seed,
        &mut rng,
        &services,
        &shape,
        Delivery::InOrder,
    )
}

fn ab_calm(seed: u64) -> Scenario {
    let mut rng = rng_for("ab-calm", seed);
    let n = rng.random_range(3..=5);
    let services: Vec<AbService> = (0..n)
        .map(|i| {
            let mut svc = ab_service(AB_SERVICES[i].to_string(), &mut rng, true);
            // One service in three: the canary allocates 30-50% more per request, with the same spread.
            if i % 3 == 0 {
                svc.canary_mean = rng.random_range(1.3..1.5);
            }
            svc
        })
        .collect();
    let shape = AbShape {
        duration_s: 5400.0,
        ..DENSE
    };
    ab_scenario(
        "ab-calm",
        seed,
        &mut rng,
        &services,
        &shape,
        Delivery::InOrder,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_are_seeded_and_labelled() {
        for f in FAMILIES {
            let a = (f.generate)(3);
            let b = (f.generate)(3);
            assert_eq!(a.truth, b.truth, "{}", f.name);
            assert_eq!(a.sources, b.sources, "{}", f.name);
            assert_eq!(f.calm, a.truth.is_empty(), "{}", f.name);
            assert!(a.instance_hours() > 1.0, "{}", f.name);
        }
    }

    #[test]
    fn every_leak_must_be_forecast_before_its_crossing() {
        let s = leak_spans(1);
        let growth: Vec<_> = s
            .truth
            .iter()
            .filter(|e| e.kind == Kind::Growth && e.deadline_s.is_some())
            .collect();
        assert!(!growth.is_empty());
        for e in growth {
            let crossing = e.crossing_s.expect("a crossing");
            assert!(crossing - e.onset_s >= 30.0 * 60.0, "{e:?}");
        }
        assert!(s
            .truth
            .iter()
            .any(|e| e.kind == Kind::Leak && e.deadline_s.is_some()));
    }
}
