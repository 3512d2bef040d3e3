//! The load generator (`tests/src/bin/loadgen.rs`, behind `scripts/bench-e2e.sh`) against memdrift over each
//! protocol: what it reports must match what memdrift counted, so the benchmark's numbers can be trusted.

use std::process::Command;

use memdrift_e2e::{metric_value, scrape, Loopback};

async fn accepted_by_memdrift(prometheus: std::net::SocketAddr) -> f64 {
    let text = scrape(prometheus).await;
    metric_value(&text, "memdrift_receiver_accepted_spans_total").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_reports_what_memdrift_counted_over_every_protocol() {
    let m = Loopback::start("loadgen").await;
    let grpc = m.grpc.trim_start_matches("http://").to_string();
    let http = m.http.trim_start_matches("http://").to_string();
    let mut total_accepted = 0.0;
    // (protocol, gzip, endpoint, connections): gRPC exports over one HTTP/2 connection and, gzipped, taking
    // three in turn.
    for (protocol, gzip, endpoint, connections) in [
        ("grpc", false, &grpc, "1"),
        ("grpc", true, &grpc, "3"),
        ("http-protobuf", false, &http, "1"),
        ("http-protobuf", true, &http, "1"),
        ("http-json", false, &http, "1"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadgen"));
        cmd.args(["--endpoint", endpoint, "--protocol", protocol])
            .args([
                "--rate",
                "4000",
                "--seconds",
                "1.5",
                "--warmup",
                "0",
                "--batch",
                "100",
            ])
            .args(["--services", "3", "--instances", "2"])
            .args(["--connections", connections])
            .args(["--pid", &std::process::id().to_string()]);
        if gzip {
            cmd.arg("--gzip");
        }
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join")
            .expect("loadgen runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{protocol} gzip={gzip}: {stderr}");
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        let num = |p: &str| r.pointer(p).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        let (sent, accepted) = (num("/spans_sent"), num("/spans_accepted"));
        assert_eq!(r["requests_refused"], 0, "{protocol} gzip={gzip}: {r}");
        assert_eq!(
            r["connections"].as_u64(),
            connections.parse().ok(),
            "{protocol} gzip={gzip}: {r}"
        );
        assert!(
            sent >= 100.0 * 40.0,
            "{protocol} gzip={gzip}: about 60 exports of 100 spans: {r}"
        );
        assert_eq!(accepted + num("/spans_rejected"), sent, "{r}");
        assert!(accepted >= 0.95 * sent, "{protocol} gzip={gzip}: {r}");
        // The rate asked for, within what one loaded test machine allows.
        assert!((2000.0..6000.0).contains(&num("/spans_per_s")), "{r}");
        assert!(
            num("/latency_ms/p50") > 0.0 && num("/latency_ms/p99") >= num("/latency_ms/p50"),
            "{r}"
        );
        assert!(
            num("/server_cpu_s") >= 0.0 && num("/server_rss_mib/median") > 1.0,
            "{r}"
        );
        // Where the cores went: this process holds memdrift's engine thread; the loader and the machine.
        assert!(
            num("/server_thread_cpu_cores/memdrift-engine") >= 0.0,
            "{r}"
        );
        assert!(num("/loader_cpu_cores") >= 0.0, "{r}");
        assert!((0.0..=1.0).contains(&num("/machine_idle_share")), "{r}");
        total_accepted += accepted;
        // What loadgen says was accepted is what memdrift counted (every export was measured: no warm-up).
        assert_eq!(
            accepted_by_memdrift(m.prometheus).await,
            total_accepted,
            "{protocol} gzip={gzip}: {stderr}"
        );
    }
    m.stop().await;
}

#[test]
fn a_bad_argument_names_itself() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--endpoint", "127.0.0.1:1", "--protocol", "carrier-pigeon"])
        .output()
        .expect("loadgen runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--protocol") && stderr.contains("carrier-pigeon"),
        "{stderr}"
    );
}
