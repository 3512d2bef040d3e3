//! The example service end to end: its selftest traffic goes through memspan's own OTLP exporters (gRPC for one
//! cohort, HTTP/protobuf for the other) to a memdrift running in-process, and memdrift's Prometheus endpoint
//! shows every request as a memory sample, with the counting allocator's and the RSS probe's values, under the
//! cohort the service was started with.

use std::process::Command;
use std::time::{Duration, Instant};

use memdrift::config::Pipeline;
use memdrift::topology::Service;
use memdrift_e2e::metric_value;

const REQUESTS: u32 = 40;
const SERVICE: &str = "memspan-example-e2e";

/// Loopback ports, and windows that close late enough for spans flushed at the service's exit (10 s of
/// lateness) and wide enough (60 s) that one closed window holds both runs whole, so its per-cohort counts are
/// exact.
fn pipeline(jsonl: &str) -> Pipeline {
    let text = format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc: {{ endpoint: 127.0.0.1:0 }}\n      http: {{ endpoint: 127.0.0.1:0 }}\n\
         processors:\n  extract: {{}}\n  windows: {{ size: 60s, step: 1s, allowed_lateness: 10s, idle_timeout: 10m }}\n\
         exporters:\n  jsonl: {{ path: \"{jsonl}\" }}\n  prometheus: {{ endpoint: 127.0.0.1:0 }}\n\
         service:\n  pipelines:\n    memory: {{ receivers: [otlp], processors: [extract, windows], exporters: [jsonl, prometheus] }}\n"
    );
    Pipeline::parse("example-e2e.yaml", &text).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the example's selftest against `endpoint`, with nothing from the caller's environment but what is set
/// here, so a developer's own `OTEL_*` variables cannot redirect it.
fn run_example(protocol: &str, endpoint: &str, cohort: &str, instance: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_memspan-example"))
        .env_clear()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_SERVICE_NAME", SERVICE)
        // Spans leave every half second rather than every five, well inside the pipeline's lateness.
        .env("OTEL_BSP_SCHEDULE_DELAY", "500")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("service.instance.id={instance}"),
        )
        .args(["--listen", "127.0.0.1:0", "--cohort", cohort])
        .args(["--selftest-requests", &REQUESTS.to_string()])
        .output()
        .expect("the example starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "example failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("listening on 127.0.0.1:"), "{stdout}");
    assert!(!stderr.contains("not fully flushed"), "{stderr}");
    assert!(
        stdout.contains(&format!("selftest: {REQUESTS} of {REQUESTS} requests ok")),
        "{stdout}\n{stderr}"
    );
}

/// Scrapes memdrift's `/metrics` until `done` holds for the exposition, and returns it; fails with the last exposition at the
/// deadline.
async fn until(
    addr: std::net::SocketAddr,
    what: &str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    let url = format!("http://{addr}/metrics");
    loop {
        let resp = reqwest::get(&url).await.expect("memdrift answers a scrape");
        let text = resp.text().await.expect("a text exposition");
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn window_count(text: &str, cohort: &str) -> Option<f64> {
    metric_value(
        text,
        &format!(
            "memdrift_window_count{{cohort=\"{cohort}\",service=\"{SERVICE}\",signal=\"memspan.request.allocated\"}}"
        ),
    )
}

/// Checks that every one of the `total` spans so far was accepted and carried the counting allocator's and the
/// RSS probe's values.
fn assert_samples(text: &str, total: u32) {
    let total = f64::from(total);
    assert_eq!(
        metric_value(text, "memdrift_receiver_accepted_spans_total"),
        Some(total),
        "{text}"
    );
    for signal in [
        "memspan.request.allocated",
        "memspan.rss.start",
        "memspan.rss.end",
    ] {
        let series = format!("memdrift_samples_total{{signal=\"{signal}\"}}");
        assert_eq!(metric_value(text, &series), Some(total), "{series}\n{text}");
    }
    for reason in ["invalid_values", "no_memory_attributes"] {
        let series = format!("memdrift_receiver_refused_spans_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(text, &series), Some(0.0), "{series}\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_service_exports_over_grpc_and_http_under_its_cohort() {
    let dir = std::env::temp_dir().join(format!("memspan-example-e2e-{}", std::process::id()));
    let jsonl = dir.join("anomalies.jsonl");
    let service = Service::start(pipeline(&jsonl.display().to_string()))
        .await
        .expect("memdrift starts");
    let grpc = format!("http://{}", service.grpc_addr.expect("grpc bound"));
    let http = format!("http://{}", service.http_addr.expect("http bound"));
    let prom = service.prometheus_addr.expect("prometheus bound");

    // One transport at a time, so each run's spans are counted on their own.
    let runs = [
        ("grpc", grpc, "canary", "example-canary-1"),
        ("http/protobuf", http, "baseline", "example-baseline-1"),
    ];
    let mut sent = 0;
    for (protocol, endpoint, cohort, instance) in runs {
        tokio::task::spawn_blocking(move || run_example(protocol, &endpoint, cohort, instance))
            .await
            .expect("example thread");
        sent += REQUESTS;
        // The service flushed before exiting; the receiver may still be handing the last batch on.
        let text = until(
            prom,
            &format!("{protocol}: not every span was accepted"),
            Duration::from_secs(10),
            |t| {
                metric_value(t, "memdrift_receiver_accepted_spans_total")
                    .is_some_and(|v| v >= f64::from(sent))
            },
        )
        .await;
        assert_samples(&text, sent);
    }

    // A closed window covering both runs counts each cohort's requests exactly. Traffic has stopped: the
    // service's timer closes a source's windows once it has been silent for a window and two steps (62 s here).
    let text = until(
        prom,
        "no closed window with every request of both cohorts",
        Duration::from_secs(120),
        |t| {
            window_count(t, "canary") == Some(f64::from(REQUESTS))
                && window_count(t, "baseline") == Some(f64::from(REQUESTS))
        },
    )
    .await;
    assert_eq!(
        metric_value(&text, "memdrift_dropped_values_total{reason=\"late\"}"),
        Some(0.0),
        "{text}"
    );
    // The cohort label is exactly the one given on the command line: no third cohort appeared.
    let cohorts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("memdrift_window_count{"))
        .filter(|l| l.contains(&format!("service=\"{SERVICE}\"")))
        .filter_map(|l| l.split("cohort=\"").nth(1)?.split('"').next())
        .collect();
    assert!(
        cohorts.iter().all(|c| *c == "canary" || *c == "baseline"),
        "{cohorts:?}"
    );
    // Per-request allocation is real work, not a placeholder: the model's tensors alone take kilobytes.
    let mean = metric_value(
        &text,
        &format!(
            "memdrift_window_mean{{cohort=\"canary\",service=\"{SERVICE}\",signal=\"memspan.request.allocated\"}}"
        ),
    );
    assert!(mean.is_some_and(|m| m > 10_000.0), "mean {mean:?}\n{text}");
    // Prompts and answers of different lengths give requests different footprints.
    let sd = metric_value(
        &text,
        &format!(
            "memdrift_window_sd{{cohort=\"canary\",service=\"{SERVICE}\",signal=\"memspan.request.allocated\"}}"
        ),
    );
    assert!(sd.is_some_and(|s| s > 1_000.0), "sd {sd:?}\n{text}");

    service.shutdown().await.expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
