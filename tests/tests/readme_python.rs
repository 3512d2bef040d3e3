//! The README's Python snippet ("Services in other languages"), run as it stands by the real Python
//! OpenTelemetry SDK against a running memdrift, over gRPC and over HTTP/protobuf: every request arrives as a
//! memory sample with the README's attributes, under the cohort from `MEMSPAN_COHORT`.
//! Needs the peers' virtual environment (`scripts/test-env.sh`, run by the README's test command).

use std::process::Command;

use memdrift_e2e::{await_cohort_window, metric_value, repo_root, scrape, venv_python, Loopback};

const REQUESTS: u32 = 60;

fn run_snippet(protocol: &str, endpoint: &str, instance: &str) {
    let out = Command::new(venv_python())
        .arg(repo_root().join("tests/peers/readme_snippet.py"))
        .arg("--readme")
        .arg(repo_root().join("README.md"))
        .args(["--protocol", protocol, "--requests", &REQUESTS.to_string()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_SERVICE_NAME", "py-readme")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("service.instance.id={instance},service.version=1.2.0"),
        )
        .env("MEMSPAN_COHORT", "canary")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("ran {REQUESTS} requests")),
        "the README snippet failed over {protocol} ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_python_snippet_reaches_memdrift_under_its_cohort() {
    let memdrift = Loopback::start("readme-py").await;
    let prom = memdrift.prometheus;
    let runs = [
        ("grpc", memdrift.grpc.clone(), "readme-1"),
        ("http", memdrift.http.clone(), "readme-2"),
    ];
    for (protocol, endpoint, instance) in runs {
        tokio::task::spawn_blocking(move || run_snippet(protocol, &endpoint, instance))
            .await
            .expect("snippet thread");
    }

    let total = f64::from(2 * REQUESTS);
    let text = scrape(prom).await;
    assert_eq!(
        metric_value(&text, "memdrift_receiver_accepted_spans_total"),
        Some(total),
        "{text}"
    );
    // rss.start and rss.end make rss.end and rss.delta; tracemalloc is on, so heap.allocated too.
    for signal in [
        "memspan.rss.end",
        "memspan.rss.delta",
        "memspan.heap.allocated",
    ] {
        let series = format!("memdrift_samples_total{{signal=\"{signal}\"}}");
        assert_eq!(
            metric_value(&text, &series),
            Some(total),
            "{series}\n{text}"
        );
    }
    assert_eq!(
        metric_value(
            &text,
            "memdrift_samples_total{signal=\"memspan.request.allocated\"}"
        )
        .unwrap_or(0.0),
        0.0,
        "the snippet leaves request.allocated out"
    );

    await_cohort_window(prom, "py-readme", "canary").await;
    memdrift.stop().await;
}
