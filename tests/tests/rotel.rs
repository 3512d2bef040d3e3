//! Rotel (a Rust OpenTelemetry collector; the `rotel` wheel in the peers' venv ships its `rotel-agent`) in
//! front of memdrift: the Python OpenTelemetry SDK sends spans to Rotel's OTLP receiver, Rotel batches them and
//! exports OTLP to memdrift, over gRPC (gzip, Rotel's default) and over HTTP/protobuf (gzip and plain), and
//! memdrift counts every span, every value and the spans' cohort. Needs `scripts/test-env.sh`.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memdrift_e2e::sink::free_port;
use memdrift_e2e::{
    metric_value, python_send, repo_root, scrape, scrape_until, KillOnDrop, Loopback,
};

/// `rotel-agent` inside the venv's site-packages. Missing: `None` with a note (the test skips), unless
/// `CI=true`, where scripts/test-env.sh must have installed it.
fn rotel_agent() -> Option<PathBuf> {
    let lib = repo_root().join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|dirs| {
        dirs.filter_map(Result::ok)
            .map(|d| d.path().join("site-packages/rotel/rotel-agent"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "rotel-agent is not in {}; scripts/test-env.sh installs it",
            lib.display()
        );
        eprintln!("skipping: rotel-agent is not in .venv (scripts/test-env.sh installs it)");
    }
    found
}

/// Rotel in the foreground on free loopback ports, exporting to memdrift; its log goes to `log`.
struct Rotel {
    _child: KillOnDrop,
    grpc: SocketAddr,
    http: SocketAddr,
}

impl Rotel {
    fn start(agent: &Path, protocol: &str, endpoint: &str, compression: &str, log: &Path) -> Rotel {
        let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = Command::new(agent);
        cmd.arg("start")
            .args(["--otlp-grpc-endpoint", &grpc.to_string()])
            .args(["--otlp-http-endpoint", &http.to_string()])
            .args(["--exporter", "otlp", "--otlp-exporter-endpoint", endpoint])
            .args(["--otlp-exporter-protocol", protocol])
            .args(["--otlp-exporter-compression", compression])
            .args(["--batch-timeout", "100ms"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).expect("log file"))
            .stderr(std::fs::File::create(log.with_extension("err")).expect("log file"));
        // Every flag has a ROTEL_* variable; a developer's must not change what the test runs.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ROTEL_") {
                cmd.env_remove(key);
            }
        }
        let mut child = KillOnDrop(cmd.spawn().expect("rotel-agent starts"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(grpc).is_err() || TcpStream::connect(http).is_err() {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!(
                    "rotel-agent exited ({status}):\n{}{}",
                    std::fs::read_to_string(log).unwrap_or_default(),
                    std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "rotel-agent did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Rotel {
            _child: child,
            grpc,
            http,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_forwards_every_python_sdk_span_to_memdrift() {
    let Some(agent) = rotel_agent() else {
        return;
    };
    let memdrift = Loopback::start("rotel").await;
    let (grpc, http, prom) = (
        memdrift.grpc.clone(),
        memdrift.http.clone(),
        memdrift.prometheus,
    );

    // (Rotel -> memdrift protocol, compression, SDK -> Rotel protocol, spans, instance)
    let runs = [
        ("grpc", "gzip", "grpc", 300u32, "rotel-1"),
        ("http", "gzip", "http", 200, "rotel-2"),
        ("http", "none", "grpc", 150, "rotel-3"),
        ("grpc", "none", "http", 100, "rotel-4"),
    ];
    let mut total = 0u32;
    for (i, (protocol, compression, client, spans, instance)) in runs.into_iter().enumerate() {
        let endpoint = if protocol == "grpc" { &grpc } else { &http };
        let rotel = Rotel::start(
            &agent,
            protocol,
            endpoint,
            compression,
            &memdrift.dir.join(format!("rotel-{i}.log")),
        );
        let target = match client {
            "grpc" => format!("http://{}", rotel.grpc),
            _ => format!("http://{}", rotel.http),
        };
        tokio::task::spawn_blocking(move || {
            python_send(client, &target, spans, ("py-infer", instance, "canary"))
        })
        .await
        .expect("client thread");
        total += spans;

        // The SDK is done once Rotel has the spans; Rotel forwards them after its batch timeout.
        let logs = [
            memdrift.dir.join(format!("rotel-{i}.log")),
            memdrift.dir.join(format!("rotel-{i}.err")),
        ];
        scrape_until(prom, Duration::from_secs(20), |text| {
            match metric_value(text, "memdrift_receiver_accepted_spans_total") {
                Some(n) if n == total as f64 => Ok(()),
                n => Err(format!(
                    "Rotel ({protocol}, {compression}) delivered {n:?} of {total} spans; its log:\n{}{}",
                    std::fs::read_to_string(&logs[0]).unwrap_or_default(),
                    std::fs::read_to_string(&logs[1]).unwrap_or_default()
                )),
            }
        })
        .await;
        drop(rotel);
    }

    let text = scrape(prom).await;
    for signal in [
        "memspan.rss.end",
        "memspan.rss.delta",
        "memspan.request.allocated",
        "memspan.limit",
    ] {
        let series = format!("memdrift_samples_total{{signal=\"{signal}\"}}");
        assert_eq!(
            metric_value(&text, &series),
            Some(total as f64),
            "{series}\n{text}"
        );
    }
    for reason in ["invalid_values", "no_memory_attributes", "no_timestamp"] {
        let series = format!("memdrift_receiver_refused_spans_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(&text, &series), Some(0.0), "{series}");
    }
    // No export request from Rotel was answered with an error.
    let failed: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("memdrift_receiver_failed_requests_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");

    // The spans' cohort reaches the window summaries, and each Rotel run's instance is a live source.
    let series =
        "memdrift_window_count{cohort=\"canary\",service=\"py-infer\",signal=\"memspan.rss.end\"}";
    let text = scrape_until(prom, Duration::from_secs(20), |text| {
        match metric_value(text, series) {
            Some(n) if n > 0.0 => Ok(()),
            _ => Err("no closed window for the canary cohort".into()),
        }
    })
    .await;
    assert!(
        metric_value(&text, "memdrift_sources").is_some_and(|v| v >= runs.len() as f64),
        "{text}"
    );
    memdrift.stop().await;
}
