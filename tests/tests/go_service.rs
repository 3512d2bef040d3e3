//! A real Go service (`sdk-instrumentation/go/example`, built with the Go toolchain `scripts/test-env.sh`
//! installs) sends its spans and Go runtime metrics to a running memdrift over OTLP/HTTP, one process per
//! failure switch, all at once, against the default detectors on a time scale of seconds
//! (`pipelines/demo.yaml`'s, with an OTLP/HTTP receiver and `gc_goal`). Each switch must be named with its
//! kind, class and evidence within [`DEADLINE`], and the clean service must stay silent over the same time:
//!
//! | service | switches | finding |
//! |---|---|---|
//! | `llm-go-goroutines` | `-goroutine-leak` | `leak`, class `goroutines` |
//! | `llm-go-cgo` | `-cgo-weights` (16 KiB of C memory a request) | `leak`, class `off_heap` |
//! | `llm-go-cache` | `-cache-grow -gomemlimit 256MiB` | `leak`, class `heap`; `growth` against `go.memory.limit` |
//! | `llm-go-capped` | `-cache-grow -gomemlimit 16MiB` | `gc_goal`: goal, limit (`go.memory.limit`), heap |
//! | `llm-go-ab` | cohorts `baseline`, `pool-no-reset` (`-pool-no-reset`), `draft-scratch` (`-draft-scratch`) | `spread_drift` on `memspan.request.allocated` for each canary |
//! | `llm-go-clean` | `-gomemlimit 512MiB`, two instances as cohorts `baseline` and `canary` | nothing |
//! | `llm-go-warmup` | `-warmup-burst` | nothing |
//!
//! The test prints each finding's time from the start; the README's table of Go failures is taken from it.
//! Without `.venv/bin/go` the test is skipped, unless `CI=true`, where it fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use memdrift::config::Pipeline;
use memdrift::topology::Service;
use memdrift::{Anomaly, AnomalyState, Evidence, LeakClass};
use memdrift_e2e::{go_command, repo_root, venv_go};

fn build_example(go: &Path, out: &Path) {
    let status = go_command(go, &repo_root().join("sdk-instrumentation/go/example"))
        .args(["build", "-o"])
        .arg(out)
        .arg(".")
        .status()
        .expect("go runs");
    assert!(status.success(), "go build of the example failed");
}

/// Kills the child when dropped, so a failing assertion leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &Path, endpoint: &str, service: &str, args: &[&str]) -> Running {
    let child = Command::new(bin)
        .args(["-listen", "127.0.0.1:0"])
        .args(args)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_SERVICE_NAME", service)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "1000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the example starts");
    Running(child)
}

/// How long every switch has to be named, from the start of the services.
const DEADLINE: Duration = Duration::from_secs(150);

/// `pipelines/demo.yaml`'s detectors with an OTLP/HTTP receiver and `gc_goal`. The fast leak test names a
/// rise from 100 kB/s (500 kB/s by default: in ten real minutes a slower rise cannot be told from a cache
/// filling up; here the whole run lasts two and a half minutes).
fn pipeline() -> Pipeline {
    let demo = std::fs::read_to_string(repo_root().join("pipelines/demo.yaml")).expect("demo.yaml");
    let text = demo
        .replace(
            "      grpc:\n        endpoint: 127.0.0.1:0",
            "      http:\n        endpoint: 127.0.0.1:0",
        )
        .replace(
            "    warmup: 15s\n\nexporters:",
            "    warmup: 15s\n    fast_min_slope_bytes_per_s: 100000\n  gc_goal: {}\n\nexporters:",
        )
        .replace(
            "processors: [extract, windows, spread_drift, growth, leak]",
            "processors: [extract, windows, spread_drift, growth, leak, gc_goal]",
        );
    assert!(
        text.contains("http:") && text.contains("gc_goal: {}") && text.contains("leak, gc_goal]"),
        "pipelines/demo.yaml changed shape; update this test's edits:\n{text}"
    );
    Pipeline::parse_with_env("go-service.yaml", &text, &|_| None).expect("valid")
}

/// The first open event of each (service, kind, canary and signal or leak class), with its time from the start.
type Firsts = BTreeMap<(String, &'static str, String), (Anomaly, Duration)>;

fn what(a: &Anomaly) -> String {
    match &a.evidence {
        Evidence::Spread { cohorts, .. } | Evidence::SpreadChange { cohorts, .. } => {
            format!("{} {}", cohorts.canary, a.signal)
        }
        Evidence::Leak { classification, .. } => classification.name().to_string(),
        _ => String::new(),
    }
}

/// Whether the event is about a service that must stay silent: the clean one, and the one whose only switch
/// is a warm-up burst (a one-time step at the start, not a leak).
fn silent(a: &Anomaly) -> bool {
    a.service == "llm-go-clean" || a.service == "llm-go-warmup"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_go_failure_switch_is_named_with_its_class_and_the_clean_service_is_not() {
    let Some(go) = venv_go() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("memdrift-go-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bin = dir.join("example");
    build_example(&go, &bin);

    let service = Service::start(pipeline()).await.expect("starts");
    let mut events = service.events();
    let endpoint = format!("http://{}", service.http_addr.expect("http"));
    let started = Instant::now();
    let cases: [(&str, &[&str]); 10] = [
        ("llm-go-goroutines", &["-rate", "50", "-goroutine-leak"]),
        (
            "llm-go-cgo",
            &["-rate", "100", "-cgo-weights", "-cgo-weight-bytes", "16384"],
        ),
        (
            "llm-go-cache",
            &["-rate", "50", "-cache-grow", "-gomemlimit", "256MiB"],
        ),
        (
            "llm-go-capped",
            &["-rate", "200", "-cache-grow", "-gomemlimit", "16MiB"],
        ),
        ("llm-go-ab", &["-rate", "100", "-cohort", "baseline"]),
        (
            "llm-go-ab",
            &["-rate", "100", "-cohort", "pool-no-reset", "-pool-no-reset"],
        ),
        (
            "llm-go-ab",
            &["-rate", "100", "-cohort", "draft-scratch", "-draft-scratch"],
        ),
        (
            "llm-go-clean",
            &[
                "-rate",
                "50",
                "-gomemlimit",
                "512MiB",
                "-cohort",
                "baseline",
            ],
        ),
        (
            "llm-go-clean",
            &["-rate", "50", "-gomemlimit", "512MiB", "-cohort", "canary"],
        ),
        ("llm-go-warmup", &["-rate", "50", "-warmup-burst"]),
    ];
    let running: Vec<Running> = cases
        .iter()
        .map(|(name, args)| start(&bin, &endpoint, name, args))
        .collect();
    let expected: [(&str, &str, &str); 7] = [
        ("llm-go-goroutines", "leak", "goroutines"),
        ("llm-go-cgo", "leak", "off_heap"),
        ("llm-go-cache", "leak", "heap"),
        ("llm-go-cache", "growth", ""),
        ("llm-go-capped", "gc_goal", ""),
        (
            "llm-go-ab",
            "spread_drift",
            "pool-no-reset memspan.request.allocated",
        ),
        (
            "llm-go-ab",
            "spread_drift",
            "draft-scratch memspan.request.allocated",
        ),
    ];
    let mut firsts = Firsts::new();
    let all_found = |f: &Firsts| {
        expected
            .iter()
            .all(|(s, k, w)| f.contains_key(&(s.to_string(), *k, w.to_string())))
    };
    while started.elapsed() < DEADLINE && !all_found(&firsts) {
        let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(5), events.recv()).await else {
            continue;
        };
        assert!(!silent(&a), "a clean service was flagged: {a:?}");
        if a.state == AnomalyState::Open {
            let key = (a.service.clone(), a.kind().name(), what(&a));
            firsts.entry(key).or_insert_with(|| (a, started.elapsed()));
        }
    }
    // The clean service stays silent a while longer.
    let quiet_until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < quiet_until {
        if let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
            assert!(!silent(&a), "a clean service was flagged: {a:?}");
        }
    }
    for ((s, k, w), (a, after)) in &firsts {
        eprintln!(
            "{s}: {k} {w} opened {:.0} s after the start: {:?}",
            after.as_secs_f64(),
            a.evidence
        );
    }
    for (s, k, w) in expected {
        assert!(
            firsts.contains_key(&(s.to_string(), k, w.to_string())),
            "no {k} {w} for {s} within {DEADLINE:?}; found: {:?}",
            firsts.keys().collect::<Vec<_>>()
        );
    }
    let first = |s: &str, k: &'static str, w: &str| &firsts[&(s.to_string(), k, w.to_string())].0;

    // A leak of each kind is named by its own class, and no other class was given to that service first.
    for (s, class) in [
        ("llm-go-goroutines", LeakClass::Goroutines),
        ("llm-go-cgo", LeakClass::OffHeap),
        ("llm-go-cache", LeakClass::Heap),
    ] {
        let classes: Vec<&String> = firsts
            .keys()
            .filter(|(svc, k, _)| svc == s && *k == "leak")
            .map(|(_, _, w)| w)
            .collect();
        assert_eq!(classes, [class.name()], "{s}: leak classes {classes:?}");
        let Evidence::Leak {
            growth_bytes_per_s, ..
        } = first(s, "leak", class.name()).evidence
        else {
            unreachable!()
        };
        assert!(
            growth_bytes_per_s > 50_000.0,
            "{s}: {growth_bytes_per_s} B/s"
        );
    }
    // The growth forecast of a Go process without a container limit aims at its GOMEMLIMIT.
    if let Evidence::Growth {
        limit_bytes,
        limit_source,
        time_to_limit_s,
        ..
    } = first("llm-go-cache", "growth", "").evidence
    {
        // A container limit, where this machine's cgroup has one, comes first.
        if limit_source != Some("container") {
            assert_eq!(limit_source, Some("go.memory.limit"));
            assert_eq!(limit_bytes, Some(256.0 * 1024.0 * 1024.0));
        }
        assert!(time_to_limit_s.is_some_and(|t| t.value > 0.0));
    } else {
        unreachable!()
    }
    // The GC goal above GOMEMLIMIT, with the goal, the limit and the heap.
    let Evidence::GcGoal {
        goal_bytes,
        limit_bytes,
        limit_source,
        go_memory_limit_bytes,
        heap_bytes,
    } = first("llm-go-capped", "gc_goal", "").evidence
    else {
        unreachable!()
    };
    assert_eq!(limit_source, "go.memory.limit");
    assert_eq!(limit_bytes, 16.0 * 1024.0 * 1024.0);
    assert_eq!(go_memory_limit_bytes, Some(limit_bytes));
    assert!(
        goal_bytes > limit_bytes,
        "goal {goal_bytes} above the limit"
    );
    assert!(
        heap_bytes.is_some_and(|h| h > limit_bytes),
        "heap {heap_bytes:?}"
    );
    // Each canary's per-request allocation spread against the baseline's (RSS may differ too: the pooled
    // arrays make it swing).
    for canary in ["pool-no-reset", "draft-scratch"] {
        let a = first(
            "llm-go-ab",
            "spread_drift",
            &format!("{canary} memspan.request.allocated"),
        );
        let Evidence::Spread { cohorts, .. } = &a.evidence else {
            panic!("{a:?}")
        };
        assert_eq!(cohorts.baseline, "baseline");
    }
    // Every service's spans and runtime metrics arrived and were read.
    let exposition = memdrift_e2e::scrape(service.prometheus_addr.expect("prometheus")).await;
    let accepted = |series: &str| memdrift_e2e::metric_value(&exposition, series).unwrap_or(0.0);
    assert!(
        accepted("memdrift_receiver_accepted_spans_total") > 10_000.0,
        "{exposition}"
    );
    assert!(
        accepted("memdrift_receiver_accepted_metric_points_total") > 500.0,
        "{exposition}"
    );
    drop(running);
    service.shutdown().await.expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
