//! A real third-party client: the Python OpenTelemetry SDK with its own OTLP exporters (gRPC and HTTP/protobuf,
//! gzip or not) sends memspan spans to a running memdrift, and memdrift's Prometheus counters show every one.
//! Needs the peers' virtual environment (`scripts/test-env.sh`, run by the README's test command).

use std::process::Command;
use std::time::Duration;

use memdrift_e2e::{metric_value, repo_root, scrape, scrape_until, venv_python, Loopback};

fn send(protocol: &str, endpoint: &str, spans: u32, instance: &str, gzip: bool) {
    let mut cmd = Command::new(venv_python());
    cmd.arg(repo_root().join("tests/peers/otlp_client.py"))
        .args([
            "--protocol",
            protocol,
            "--endpoint",
            endpoint,
            "--spans",
            &spans.to_string(),
        ])
        .args([
            "--service",
            "py-infer",
            "--instance",
            instance,
            "--cohort",
            "canary",
        ]);
    if gzip {
        cmd.arg("--gzip");
    }
    let out = cmd.output().expect("python client runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("sent {spans} spans via {protocol}")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_spans_over_grpc_and_http_are_all_counted() {
    let memdrift = Loopback::start("py").await;
    let (grpc, http, prom) = (
        memdrift.grpc.clone(),
        memdrift.http.clone(),
        memdrift.prometheus,
    );

    let runs = [
        ("grpc", &grpc, 300, "py-1", false),
        ("grpc", &grpc, 200, "py-2", true),
        ("http", &http, 250, "py-3", false),
        ("http", &http, 150, "py-4", true),
    ];
    for (protocol, endpoint, n, instance, gzip) in runs {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || send(protocol, &endpoint, n, instance, gzip))
            .await
            .expect("client thread");
    }
    let total: u32 = runs.iter().map(|r| r.2).sum();

    let text = scrape(prom).await;
    assert_eq!(
        metric_value(&text, "memdrift_receiver_accepted_spans_total"),
        Some(total as f64),
        "{text}"
    );
    // Each span carries rss.start, rss.end, heap.allocated, request.allocated, request.freed and the limit.
    for signal in [
        "memspan.rss.end",
        "memspan.rss.delta",
        "memspan.request.allocated",
        "memspan.limit",
    ] {
        let series = format!("memdrift_samples_total{{signal=\"{signal}\"}}");
        assert_eq!(metric_value(&text, &series), Some(total as f64), "{series}");
    }
    assert_eq!(
        metric_value(
            &text,
            "memdrift_receiver_refused_spans_total{reason=\"invalid_values\"}"
        ),
        Some(0.0)
    );
    assert!(metric_value(&text, "process_resident_memory_bytes").is_some_and(|v| v > 0.0));

    // The spans' cohort reaches the window summaries once the engine closes a window (1 s steps here).
    let series =
        "memdrift_window_count{cohort=\"canary\",service=\"py-infer\",signal=\"memspan.rss.end\"}";
    let text = scrape_until(prom, Duration::from_secs(20), |text| {
        match metric_value(text, series) {
            Some(v) if v > 0.0 => Ok(()),
            _ => Err("no closed window for the canary cohort".into()),
        }
    })
    .await;
    assert!(
        metric_value(&text, "memdrift_sources").is_some_and(|v| v >= 4.0),
        "{text}"
    );
    memdrift.stop().await;
}
