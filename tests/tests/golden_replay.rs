//! The project's own inputs replayed through `memdrift replay`, compared byte for byte with the JSON lines in
//! `tests/fixtures/golden/`: the Collector-file fixture (events and window summaries), the A/B spread scenario,
//! and a per-instance memory scenario with a heap leak, an off-heap leak, a one-time step and a calm sawtooth
//! (growth, leak and their resolutions). A refactoring must leave every byte as it was; a change of behaviour
//! shows here as a diff. A deliberate change is recorded with
//! `MEMDRIFT_BLESS=1 cargo test -p memdrift-e2e --test golden_replay` and explained in its commit.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memdrift::config::Pipeline;
use memdrift::replay::{replay, ReplayOptions};
use memdrift_e2e::scenario::{Cohort, Scenario, Service, SpreadChange};
use memdrift_e2e::{int, repo_root, resource, span};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, TracesData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

const T0: u64 = 1_800_000_000_000_000_000;

fn golden_dir() -> PathBuf {
    repo_root().join("tests/fixtures/golden")
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memdrift-golden-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Replays `inputs` through `pipeline`; compares (or, with MEMDRIFT_BLESS=1, records) the anomaly events and,
/// when asked, the window summaries.
fn check(name: &str, pipeline: &Pipeline, inputs: Vec<PathBuf>, summaries: bool) {
    let dir = tempdir(name);
    let opts = ReplayOptions {
        inputs,
        output: dir.join("anomalies.jsonl"),
        summaries: summaries.then(|| dir.join("summaries.jsonl")),
        progress: false,
    };
    replay(pipeline, &opts).expect("replay");
    let mut outputs = vec![("anomalies", dir.join("anomalies.jsonl"))];
    if summaries {
        outputs.push(("summaries", dir.join("summaries.jsonl")));
    }
    let bless = std::env::var_os("MEMDRIFT_BLESS").is_some();
    for (what, path) in outputs {
        let got = std::fs::read(&path).expect("output");
        let golden = golden_dir().join(format!("{name}.{what}.jsonl"));
        if bless {
            std::fs::create_dir_all(golden_dir()).expect("golden dir");
            std::fs::write(&golden, &got).expect("golden written");
            continue;
        }
        let want = std::fs::read(&golden).unwrap_or_else(|e| {
            panic!("{}: {e}; record it with MEMDRIFT_BLESS=1", golden.display())
        });
        if got != want {
            let (got, want) = (
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
            );
            let first = got
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(got.lines().count().min(want.lines().count()));
            panic!(
                "{name}.{what}: replay output differs from {} ({} lines now, {} recorded); first difference at \
                 line {}:\n  now:      {}\n  recorded: {}",
                golden.display(),
                got.lines().count(),
                want.lines().count(),
                first + 1,
                got.lines().nth(first).unwrap_or("<none>"),
                want.lines().nth(first).unwrap_or("<none>"),
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn pipeline(file: &str) -> Pipeline {
    Pipeline::load(&repo_root().join("pipelines").join(file)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_collector_file_fixture_replays_as_recorded() {
    let input = repo_root().join("tests/fixtures/collector-file.jsonl");
    check("fixture", &pipeline("default.yaml"), vec![input], true);
}

fn ab_scenario() -> Scenario {
    let cohort = |version, change| Cohort {
        version,
        instances: 2,
        per_minute: 120,
        mean_bytes: 8e6,
        sd_bytes: 1e6,
        change,
    };
    Scenario {
        services: vec![
            Service {
                name: "checkout-llm",
                cohorts: vec![
                    cohort("1.4.2", None),
                    cohort(
                        "1.5.0",
                        Some(SpreadChange {
                            from_minute: 10.0,
                            until_minute: 30.0,
                            ratio: 2.5,
                        }),
                    ),
                ],
            },
            Service {
                name: "embed-llm",
                cohorts: vec![cohort("2.0.0", None), cohort("2.1.0", None)],
            },
        ],
        minutes: 45,
        seed: 7,
        start_unix_nano: T0,
    }
}

#[test]
fn the_ab_scenario_replays_as_recorded() {
    let dir = tempdir("ab-input");
    let input = dir.join("traces.jsonl");
    ab_scenario().write(&input).expect("scenario written");
    check("ab", &pipeline("default.yaml"), vec![input.clone()], false);
    check("ab-canary", &pipeline("canary.yaml"), vec![input], false);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cohort_whose_spread_changes_late_replays_as_recorded() {
    // Past the CUSUM's warm-up: the canary's spread over time, and the comparison with its baseline.
    let mut s = ab_scenario();
    s.minutes = 75;
    s.services.truncate(1);
    s.services[0].cohorts[1].change = Some(SpreadChange {
        from_minute: 35.0,
        until_minute: 55.0,
        ratio: 3.0,
    });
    let dir = tempdir("late-input");
    let input = dir.join("traces.jsonl");
    s.write(&input).expect("scenario written");
    check("late-change", &pipeline("default.yaml"), vec![input], false);
    let _ = std::fs::remove_dir_all(&dir);
}

/// How one instance's memory moves.
#[derive(Clone, Copy)]
enum Shape {
    /// Live heap grows by this many bytes per second from `from_minute`, and RSS with it.
    HeapLeak {
        from_minute: f64,
        bytes_per_s: f64,
    },
    /// RSS grows from `from_minute`; the live heap stays flat.
    OffHeapLeak {
        from_minute: f64,
        bytes_per_s: f64,
    },
    /// A one-time rise of `bytes` at `at_minute`, flat before and after.
    Step {
        at_minute: f64,
        bytes: f64,
    },
    Calm,
}

/// Per-instance memory: a GC sawtooth (4-minute cycles, 300 MB) over a 1.2 GB floor, a 4 GiB limit, one span
/// every 5 s, and a restart when the sawtooth's top crosses the limit. One line per instance and 30 s.
fn write_instances(path: &Path) -> std::io::Result<()> {
    let instances = [
        (
            "rag-api",
            "pod-heap",
            Shape::HeapLeak {
                from_minute: 20.0,
                bytes_per_s: 1.5e6,
            },
        ),
        ("rag-api", "pod-calm", Shape::Calm),
        (
            "rerank-api",
            "pod-offheap",
            Shape::OffHeapLeak {
                from_minute: 15.0,
                bytes_per_s: 1e6,
            },
        ),
        (
            "rerank-api",
            "pod-step",
            Shape::Step {
                at_minute: 30.0,
                bytes: 5e8,
            },
        ),
        // Leaks fast and goes quiet at minute 40 while warned about: its findings resolve when it expires.
        (
            "rerank-api",
            "pod-gone",
            Shape::HeapLeak {
                from_minute: 10.0,
                bytes_per_s: 2.5e6,
            },
        ),
    ];
    let limit: i64 = 4 << 30;
    let mut rng = StdRng::seed_from_u64(11);
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    let mut n = 0u64;
    // Each instance's restart offset: event time at which its process last started.
    let mut started = [0f64; 5];
    let minutes = 90u64;
    for line in 0..minutes * 2 {
        for (k, (service, instance, shape)) in instances.iter().enumerate() {
            if *instance == "pod-gone" && line >= 80 {
                continue;
            }
            let mut spans = Vec::new();
            for j in 0..6u64 {
                n += 1;
                let t_s = (line * 30 + j * 5) as f64 + rng.random_range(0.0..1.0);
                let up = t_s - started[k];
                let minute = t_s / 60.0;
                let leak_from = |from: f64| ((minute - from).max(0.0) * 60.0).min(up);
                let (heap_extra, rss_extra) = match *shape {
                    Shape::HeapLeak {
                        from_minute,
                        bytes_per_s,
                    } => {
                        let b = leak_from(from_minute) * bytes_per_s;
                        (b, b)
                    }
                    Shape::OffHeapLeak {
                        from_minute,
                        bytes_per_s,
                    } => (0.0, leak_from(from_minute) * bytes_per_s),
                    Shape::Step { at_minute, bytes } => {
                        (0.0, if minute >= at_minute { bytes } else { 0.0 })
                    }
                    Shape::Calm => (0.0, 0.0),
                };
                let saw = 3e8 * ((up / 240.0).fract());
                let noise: f64 = rng.sample(StandardNormal);
                let heap = 6e8 + heap_extra + saw + 5e6 * noise;
                let rss = 1.2e9 + rss_extra + saw + 1e7 * noise;
                if rss + 3e8 > limit as f64 {
                    started[k] = t_s;
                }
                let allocated: f64 = rng.sample(StandardNormal);
                spans.push(span(
                    n,
                    T0 + (t_s * 1e9) as u64,
                    vec![
                        int("memspan.rss.start", (rss - 2e6) as i64),
                        int("memspan.rss.end", rss as i64),
                        int("memspan.heap.allocated", heap as i64),
                        int(
                            "memspan.request.allocated",
                            (4e6 + 5e5 * allocated).max(0.0) as i64,
                        ),
                        int("memspan.limit", limit),
                    ],
                ));
            }
            let data = TracesData {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource(service, "3.1.0", instance)),
                    scope_spans: vec![ScopeSpans {
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            serde_json::to_writer(&mut out, &data)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()
}

#[test]
fn the_instance_scenario_replays_as_recorded() {
    let dir = tempdir("instances-input");
    let input = dir.join("traces.jsonl");
    write_instances(&input).expect("scenario written");
    check("instances", &pipeline("default.yaml"), vec![input], false);
    let _ = std::fs::remove_dir_all(&dir);
}
