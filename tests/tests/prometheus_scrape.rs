//! A real Prometheus (Debian's `prometheus` package, installed by scripts/test-env.sh) scrapes memdrift's
//! endpoint, and `promtool check metrics` accepts the exposition, exporter metrics included.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memdrift::topology::Service;
use memdrift_e2e::sink::{free_port, ClosedPort};
use memdrift_e2e::{external_tool, otlp_pipeline, otlp_settings};
use serde_json::Value;

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first sample of an instant query, once Prometheus has one.
async fn query(web: u16, promql: &str) -> Option<f64> {
    let url = format!("http://127.0.0.1:{web}/api/v1/query");
    let text = reqwest::Client::new()
        .get(url)
        .query(&[("query", promql)])
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let body: Value = serde_json::from_str(&text).ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_endpoint_and_promtool_accepts_it() {
    let (Some(prometheus), Some(promtool)) =
        (external_tool("prometheus"), external_tool("promtool"))
    else {
        return;
    };
    // An OTLP exporter (towards nobody) so its metrics are in the exposition too.
    let nobody = ClosedPort::new();
    let pipeline = otlp_pipeline(&otlp_settings(
        "grpc",
        &nobody.url(),
        "    shutdown_timeout: 100ms\n",
    ));
    let service = Service::start(pipeline).await.expect("service starts");
    let target = service.prometheus_addr.expect("prometheus bound");
    let text = memdrift_e2e::scrape(target).await;
    for series in [
        "memdrift_exporter_sent_total{exporter=\"otlp\",signal=\"logs\"}",
        "memdrift_exporter_failed_total{exporter=\"otlp\",signal=\"traces\"}",
        "memdrift_exporter_dropped_total{exporter=\"otlp\",signal=\"metrics\"}",
        "memdrift_exporter_queue_size{exporter=\"otlp\"}",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }

    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("writes");
    let out = check.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = std::env::temp_dir().join(format!("memdrift-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n  - job_name: memdrift\n    static_configs: [{{ targets: ['{target}'] }}]\n"
        ),
    )
    .expect("writes the config");
    let web = free_port();
    let server = Killed(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let queue_size = "memdrift_exporter_queue_size{exporter=\"otlp\"}";
    loop {
        if query(web, "up{job=\"memdrift\"}").await == Some(1.0)
            && query(web, queue_size).await.is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape memdrift within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        query(web, "memdrift_receiver_accepted_spans_total").await,
        Some(0.0)
    );
    assert!(
        query(web, "process_resident_memory_bytes{job=\"memdrift\"}")
            .await
            .is_some_and(|v| v > 0.0)
    );
    drop(server);
    service.shutdown().await.expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
