//! The OTLP exporter against an independent receiver: `tests/peers/otlp_sink.py`, built on the Python
//! opentelemetry-proto and grpcio packages, decodes what memdrift sends over gRPC and HTTP and reports it back as
//! JSON; these tests check it, and make the sink misbehave (down, 503 with Retry-After, 400, gRPC codes,
//! partial success) to check delivery. Needs the peers' virtual environment (`scripts/test-env.sh`).
//!
//! Retries are shrunk by configuration (100 ms growing to 500 ms) except where a test is about a real wait: the
//! server's Retry-After / RetryInfo and the 20 s outage.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memdrift::checkpoint::{self, CheckpointError};
use memdrift::detect::{Detector, Findings};
use memdrift::engine::{ClosedWindow, Scope};
use memdrift::topology::Service;
use memdrift_e2e::sink::{items, requests, ClosedPort, Sink};
use memdrift_e2e::{
    int, metric_value, now_unix_nano, otlp_pipeline, otlp_settings, request, resource, span,
    test_anomaly, EXEMPLARS,
};
use memdrift_exporter::anomaly::{Cohorts, Evidence, Interval};
use memdrift_exporter::otlp::{ExporterMetrics, OtlpExporter};
use memdrift_exporter::{Anomaly, AnomalyState};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prometheus::{GaugeVec, Opts, Registry};
use serde_json::{json, Value};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// An exporter started from pipeline settings, with its own registry (which its metrics signal sends).
struct Running {
    exporter: OtlpExporter,
    registry: Registry,
}

fn start(rt: &tokio::runtime::Runtime, settings: &str) -> Running {
    let config = otlp_pipeline(settings).otlp.expect("an otlp exporter");
    let registry = Registry::new();
    let metrics = ExporterMetrics::register(&registry).expect("registers");
    memdrift_exporter::prometheus::register_process_metrics(&registry).expect("process metrics");
    let exporter = rt
        .block_on(async { OtlpExporter::start(config, metrics, registry.clone()) })
        .expect("starts");
    Running { exporter, registry }
}

/// `memdrift_exporter_{what}_total{exporter="otlp",signal}`.
fn count(registry: &Registry, what: &str, signal: &str) -> f64 {
    let text = memdrift_exporter::prometheus::render(registry);
    let series = format!("memdrift_exporter_{what}_total{{exporter=\"otlp\",signal=\"{signal}\"}}");
    metric_value(&text, &series).unwrap_or_else(|| panic!("{series} missing:\n{text}"))
}

impl Running {
    fn count(&self, what: &str, signal: &str) -> f64 {
        count(&self.registry, what, signal)
    }

    /// Waits until `count(what, signal)` reaches `n`.
    fn wait_count(&self, what: &str, signal: &str, n: f64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.count(what, signal) < n {
            assert!(
                Instant::now() < deadline,
                "{what}{{{signal}}} stayed at {} (want {n})",
                self.count(what, signal)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn endpoint(sink: &Sink, protocol: &str) -> String {
    if protocol == "grpc" {
        sink.grpc_url()
    } else {
        sink.http_url()
    }
}

/// The `service.name`s of the resources of a dump's logs (or spans).
fn services(dump: &Value, kind: &str) -> BTreeSet<String> {
    items(dump, kind)
        .iter()
        .filter_map(|i| i["resource"]["service.name"].as_str().map(str::to_owned))
        .collect()
}

fn named(prefix: &str, n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64()
        .is_some_and(|a| (a - b).abs() <= 1e-9 * b.abs().max(1.0))
}

fn growth_event() -> Anomaly {
    let mut g = Anomaly::new(
        AnomalyState::Open,
        "checkout-llm",
        "memspan.rss.end",
        1_767_225_600_000_000_000,
        "theil_sen_envelope",
        Evidence::Growth {
            envelope_bytes: 1_610_612_736.0,
            growth_bytes_per_s: 1_048_576.0,
            limit_bytes: Some(2_147_483_648.0),
            limit_source: Some("container"),
            time_to_limit_s: Some(Interval {
                value: 840.0,
                low: 600.0,
                high: 1500.0,
            }),
        },
    );
    g.instance = Some("pod-3".into());
    g
}

#[test]
fn events_and_metrics_arrive_decoded_over_grpc_and_http() {
    let rt = runtime();
    for protocol in ["grpc", "http/protobuf"] {
        let mut sink = Sink::start();
        let run = start(
            &rt,
            &otlp_settings(protocol, &endpoint(&sink, protocol), ""),
        );
        let mean = GaugeVec::new(
            Opts::new("memdrift_window_mean", "Window mean."),
            &["service", "cohort", "signal"],
        )
        .expect("valid");
        run.registry
            .register(Box::new(mean.clone()))
            .expect("registers");
        mean.with_label_values(&["checkout-llm", "1.5.0", "memspan.rss.end"])
            .set(1.5e9);

        run.exporter
            .sender()
            .export(&[test_anomaly("checkout-llm"), growth_event()]);
        sink.wait_for(
            "two log records and two spans",
            Duration::from_secs(20),
            |d| items(d, "logs").len() == 2 && items(d, "spans").len() == 2,
        );
        // Shutdown sends the last metrics snapshot, which now counts the delivered events.
        let drained = rt.block_on(run.exporter.shutdown());
        assert_eq!(drained.dropped_items, 0, "{protocol}");
        let dump = sink.dump();

        // Logs: the event, its evidence and its trace.
        let detected = test_anomaly("x").detected_unix_nano;
        let log = &items(&dump, "logs")[0];
        let attr = &log["attributes"];
        assert_eq!(log["event_name"], "memdrift.anomaly", "{protocol}: {log:#}");
        assert_eq!(attr["event.name"], "memdrift.anomaly");
        assert_eq!(log["severity_number"], 13);
        assert_eq!(log["severity_text"], "WARN");
        assert_eq!(log["time_unix_nano"], detected);
        assert_eq!(log["resource"]["service.name"], "checkout-llm");
        assert_eq!(
            log["body"],
            "canary 1.5.0 of checkout-llm: RSS spread 2.6x baseline 1.4.2 (p=3e-6) over 60 s"
        );
        assert_eq!(attr["memdrift.anomaly.kind"], "spread_drift");
        assert_eq!(attr["memdrift.anomaly.state"], "open");
        assert_eq!(attr["memdrift.anomaly.signal"], "memspan.rss.end");
        assert!(close(&attr["memdrift.anomaly.p_value"], 3e-6), "{attr:#}");
        assert!(close(&attr["memdrift.anomaly.statistic"], 24.5));
        assert!(close(&attr["memdrift.anomaly.sd_ratio"], 2.6));
        assert!(close(&attr["memdrift.anomaly.sd_ratio.low"], 1.9));
        assert!(close(&attr["memdrift.anomaly.sd_ratio.high"], 3.4));
        assert_eq!(attr["memdrift.anomaly.cohorts.baseline"], "1.4.2");
        assert_eq!(attr["memdrift.anomaly.cohorts.canary"], "1.5.0");
        assert_eq!(attr["memdrift.anomaly.cohorts.canary_samples"], 60);
        assert_eq!(
            attr["memdrift.anomaly.exemplar_trace_ids"],
            json!(EXEMPLARS)
        );
        let growth = &items(&dump, "logs")[1];
        assert_eq!(growth["resource"]["service.instance.id"], "pod-3");
        assert!(close(
            &growth["attributes"]["memdrift.anomaly.time_to_limit_s.low"],
            600.0
        ));

        // Spans: onset to detection, linked to the exemplar traces, sharing ids with the log record.
        let span = &items(&dump, "spans")[0];
        let links: Vec<&Value> = span["links"]
            .as_array()
            .expect("links")
            .iter()
            .map(|l| &l["trace_id"])
            .collect();
        assert_eq!(links, EXEMPLARS.iter().collect::<Vec<_>>(), "{span:#}");
        assert_eq!(span["name"], "anomaly spread_drift");
        assert_eq!(span["resource"]["service.name"], "checkout-llm");
        assert_eq!(span["trace_id"], log["trace_id"]);
        assert_eq!(span["span_id"], log["span_id"]);
        assert_eq!(span["start_time_unix_nano"], detected - 60_000_000_000);
        assert_eq!(span["end_time_unix_nano"], detected);
        assert_eq!(span["status"]["code"], 2, "open anomalies are errors");
        assert_eq!(
            span["attributes"]["memdrift.anomaly.cohorts.baseline"],
            "1.4.2"
        );

        // Metrics: names, units, temporality, values.
        let metrics = items(&dump, "metrics");
        let metric = |name: &str| {
            metrics
                .iter()
                .rev()
                .find(|m| m["name"] == name)
                .unwrap_or_else(|| panic!("{name} not among {metrics:#?}"))
        };
        let m = metric("memdrift.window.mean");
        assert_eq!((&m["type"], &m["unit"]), (&json!("gauge"), &json!("By")));
        assert!(close(&m["points"][0]["value"], 1.5e9));
        assert_eq!(m["points"][0]["attributes"]["cohort"], "1.5.0");
        let m = metric("memdrift.exporter.sent");
        assert_eq!(m["type"], "sum");
        assert_eq!(m["unit"], "{item}");
        assert_eq!(m["monotonic"], true);
        assert_eq!(m["temporality"], 2, "cumulative");
        let sent = |signal: &str| {
            m["points"]
                .as_array()
                .expect("points")
                .iter()
                .find(|p| p["attributes"]["signal"] == signal)
                .map(|p| p["value"].clone())
        };
        assert_eq!(sent("logs"), Some(json!(2)), "{m:#}");
        assert_eq!(sent("traces"), Some(json!(2)), "{m:#}");
        let m = metric("process.memory.usage");
        assert_eq!(m["unit"], "By");
        assert!(m["points"][0]["value"].as_f64().is_some_and(|v| v > 0.0));
        assert_eq!(m["resource"]["service.name"], "memdrift");

        // Every request carried the token and named the sender; HTTP bodies were gzipped.
        for r in items(&dump, "requests") {
            assert_eq!(r["headers"]["authorization"], "Bearer t0k", "{r:#}");
            assert!(
                r["headers"]["user-agent"]
                    .as_str()
                    .is_some_and(|ua| ua.contains("memdrift/")),
                "{r:#}"
            );
            if protocol != "grpc" {
                assert_eq!(r["headers"]["content-encoding"], "gzip", "{r:#}");
            }
        }
    }
}

/// Emits one spread-drift event for the first closed window with a cohort, carrying its exemplars: a stand-in
/// for the real detectors, so the test knows what the service must send.
struct FirstWindow {
    fired: bool,
}

impl Detector for FirstWindow {
    fn name(&self) -> &'static str {
        "first_window"
    }

    fn save(&self, out: &mut dyn std::io::Write) -> Result<(), CheckpointError> {
        checkpoint::encode(self.name(), &self.fired, out)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), CheckpointError> {
        self.fired = checkpoint::decode(self.name(), state)?;
        Ok(())
    }

    fn on_window(&mut self, window: &ClosedWindow, out: &mut Findings) {
        if self.fired {
            return;
        }
        let Some(s) = window
            .summaries
            .iter()
            .find(|s| matches!(s.key.group.scope, Scope::Cohort(_)) && !s.exemplars.is_empty())
        else {
            return;
        };
        let evidence = Evidence::Spread {
            statistic: 20.0,
            p_value: 1e-4,
            window_p_value: 1e-4,
            autocorrelation: None,
            sd_ratio: Interval {
                value: 2.0,
                low: 1.5,
                high: 2.5,
            },
            mad_ratio: None,
            cohorts: Cohorts {
                baseline: "baseline".into(),
                canary: "canary".into(),
                baseline_samples: s.count,
                canary_samples: s.count,
            },
        };
        let mut a = Anomaly::new(
            AnomalyState::Open,
            &s.key.group.service,
            s.key.signal.name(),
            window.end_unix_nano,
            "brown_forsythe+msprt",
            evidence,
        );
        a.window = Some((window.start_unix_nano, window.end_unix_nano));
        a.exemplars = s.exemplars.clone();
        out.anomalies.push(a);
        self.fired = true;
    }

    fn live_keys(&self) -> usize {
        0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_sends_what_its_detectors_find_and_counts_it() {
    let mut sink = tokio::task::block_in_place(Sink::start);
    let pipeline = otlp_pipeline(&otlp_settings(
        "grpc",
        &sink.grpc_url(),
        "    metrics_interval: 500ms\n",
    ));
    let service =
        Service::start_with_detectors(pipeline, vec![Box::new(FirstWindow { fired: false })])
            .await
            .expect("service starts");
    let grpc = format!("http://{}", service.grpc_addr.expect("grpc bound"));
    let prom = service.prometheus_addr.expect("prometheus bound");

    let now = now_unix_nano();
    let spans: Vec<_> = (0..20)
        .map(|n| {
            span(
                n,
                now,
                vec![int("memspan.rss.end", 100_000_000 + n as i64 * 1_000)],
            )
        })
        .collect();
    let sent_ids: BTreeSet<(String, String)> = spans
        .iter()
        .map(|s| (hex::encode(&s.trace_id), hex::encode(&s.span_id)))
        .collect();
    let mut client = TraceServiceClient::connect(grpc).await.expect("connects");
    client
        .export(request(resource("svc-e2e", "1.5.0", "pod-1"), spans))
        .await
        .expect("accepted");

    let dump = tokio::task::block_in_place(|| {
        sink.wait_for(
            "the detector's event as a log and a span, and metrics counting the spans",
            Duration::from_secs(20),
            |d| {
                !items(d, "logs").is_empty()
                    && !items(d, "spans").is_empty()
                    && items(d, "metrics").iter().any(|m| {
                        m["name"] == "memdrift.receiver.accepted_spans"
                            && m["points"][0]["value"] == 20
                    })
            },
        )
    });
    let log = &items(&dump, "logs")[0];
    assert_eq!(log["resource"]["service.name"], "svc-e2e");
    assert_eq!(log["event_name"], "memdrift.anomaly");
    // Each link names a sent request: its trace and its span.
    let links: Vec<(String, String)> = items(&dump, "spans")[0]["links"]
        .as_array()
        .expect("links")
        .iter()
        .filter_map(|l| {
            Some((
                l["trace_id"].as_str()?.to_owned(),
                l["span_id"].as_str()?.to_owned(),
            ))
        })
        .collect();
    assert!(!links.is_empty());
    assert!(
        links.iter().all(|l| sent_ids.contains(l)),
        "links {links:?} must name sent spans"
    );

    let text = memdrift_e2e::scrape(prom).await;
    for (series, want) in [
        (
            "memdrift_exporter_sent_total{exporter=\"otlp\",signal=\"logs\"}",
            1.0,
        ),
        (
            "memdrift_exporter_sent_total{exporter=\"otlp\",signal=\"traces\"}",
            1.0,
        ),
        (
            "memdrift_exporter_failed_total{exporter=\"otlp\",signal=\"logs\"}",
            0.0,
        ),
        (
            "memdrift_exporter_dropped_total{exporter=\"otlp\",signal=\"logs\"}",
            0.0,
        ),
        ("memdrift_exporter_queue_size{exporter=\"otlp\"}", 0.0),
    ] {
        assert_eq!(metric_value(&text, series), Some(want), "{series}\n{text}");
    }
    assert!(
        metric_value(
            &text,
            "memdrift_exporter_sent_total{exporter=\"otlp\",signal=\"metrics\"}"
        )
        .is_some_and(|v| v > 0.0),
        "{text}"
    );
    service.shutdown().await.expect("clean shutdown");
}

#[test]
fn a_20_s_outage_loses_nothing() {
    let rt = runtime();
    // Held closed through the outage, so no other test's receiver is given these ports meanwhile.
    let (grpc_down, http_down) = (ClosedPort::new(), ClosedPort::new());
    let (grpc_port, http_port) = (grpc_down.port, http_down.port);
    let grpc = start(&rt, &otlp_settings("grpc", &grpc_down.url(), ""));
    let http = start(&rt, &otlp_settings("http/protobuf", &http_down.url(), ""));
    // One event every 2 s for 20 s, with nobody listening.
    let outage = Instant::now();
    for i in 0..10 {
        grpc.exporter
            .sender()
            .export(&[test_anomaly(&format!("outage-grpc-{i}"))]);
        http.exporter
            .sender()
            .export(&[test_anomaly(&format!("outage-http-{i}"))]);
        std::thread::sleep(Duration::from_secs(2));
    }
    for run in [&grpc, &http] {
        assert_eq!(run.count("sent", "logs"), 0.0);
        assert!(run.count("retries", "logs") > 0.0);
    }
    drop((grpc_down, http_down));
    let mut sink = Sink::start_on(grpc_port, http_port, None);
    let down_for = outage.elapsed();
    let dump = sink.wait_for("all 20 events", Duration::from_secs(30), |d| {
        services(d, "logs").len() == 20 && services(d, "spans").len() == 20
    });
    let mut want = named("outage-grpc", 10);
    want.extend(named("outage-http", 10));
    assert_eq!(services(&dump, "logs"), want);
    assert_eq!(services(&dump, "spans"), want);
    for run in [&grpc, &http] {
        run.wait_count("sent", "logs", 10.0);
        for signal in ["logs", "traces"] {
            assert_eq!(run.count("dropped", signal), 0.0);
            assert_eq!(run.count("failed", signal), 0.0);
        }
    }
    assert!(down_for >= Duration::from_secs(20), "{down_for:?}");
}

/// The answers to one signal's requests over one transport, and when (sink clock, seconds) each arrived.
struct Attempts {
    answers: Vec<String>,
    times: Vec<f64>,
}

impl Attempts {
    /// Seconds between attempt `i - 1` and attempt `i`.
    fn gap(&self, i: usize) -> f64 {
        self.times[i] - self.times[i - 1]
    }
}

fn attempts(dump: &Value, transport: &str, signal: &str) -> Attempts {
    let of: Vec<&Value> = requests(dump, signal)
        .into_iter()
        .filter(|r| r["transport"] == transport)
        .collect();
    Attempts {
        answers: of
            .iter()
            .map(|r| r["answer"].as_str().unwrap_or("").to_owned())
            .collect(),
        times: of
            .iter()
            .map(|r| r["t"].as_f64().unwrap_or(f64::NAN))
            .collect(),
    }
}

#[test]
fn the_server_sets_the_next_attempt_with_retry_after_and_retry_info() {
    let rt = runtime();
    let mut sink = Sink::start();
    sink.fault(json!({"signal": "logs", "http_status": 503, "retry_after": "2"}));
    sink.fault(json!({"signal": "traces", "http_status": 429}));
    sink.fault(
        json!({"signal": "traces", "grpc_code": "RESOURCE_EXHAUSTED", "retry_delay_s": 1.5}),
    );
    sink.fault(json!({"signal": "logs", "grpc_code": "UNAVAILABLE", "times": 2}));
    let http = start(&rt, &otlp_settings("http/protobuf", &sink.http_url(), ""));
    let grpc = start(&rt, &otlp_settings("grpc", &sink.grpc_url(), ""));
    http.exporter.sender().export(&[test_anomaly("retry-http")]);
    grpc.exporter.sender().export(&[test_anomaly("retry-grpc")]);
    let dump = sink.wait_for("both events delivered", Duration::from_secs(20), |d| {
        services(d, "logs").len() == 2 && services(d, "spans").len() == 2
    });

    let logs = attempts(&dump, "http", "logs");
    assert_eq!(logs.answers, ["503", "ok"]);
    assert!(
        (2.0..5.0).contains(&logs.gap(1)),
        "Retry-After: 2 means at least 2 s; waited {:.3} s",
        logs.gap(1)
    );
    let traces = attempts(&dump, "http", "traces");
    assert_eq!(traces.answers, ["429", "ok"]);
    assert!(
        traces.gap(1) < 1.5,
        "without Retry-After the backoff (about 100 ms) decides"
    );
    let traces = attempts(&dump, "grpc", "traces");
    assert_eq!(traces.answers, ["RESOURCE_EXHAUSTED", "ok"]);
    assert!(
        (1.5..4.5).contains(&traces.gap(1)),
        "RetryInfo of 1.5 s; waited {:.3} s",
        traces.gap(1)
    );
    let logs = attempts(&dump, "grpc", "logs");
    assert_eq!(logs.answers, ["UNAVAILABLE", "UNAVAILABLE", "ok"]);
    http.wait_count("sent", "logs", 1.0);
    grpc.wait_count("sent", "logs", 1.0);
    assert_eq!(http.count("retries", "logs"), 1.0);
    assert_eq!(grpc.count("retries", "logs"), 2.0);
    assert_eq!(grpc.count("retries", "traces"), 1.0);
}

#[test]
fn permanent_failures_and_partial_success_are_counted_not_retried() {
    let rt = runtime();
    let mut sink = Sink::start();
    sink.fault(json!({"signal": "logs", "http_status": 400, "times": -1}));
    // Over HTTP only: the gRPC exporter's traces may arrive first.
    sink.fault(
        json!({"signal": "traces", "transport": "http", "partial_rejected": 1, "message": "span too old"}),
    );
    sink.fault(json!({"signal": "logs", "grpc_code": "INVALID_ARGUMENT", "times": -1}));
    sink.fault(json!({"signal": "traces", "grpc_code": "RESOURCE_EXHAUSTED", "times": -1}));
    let http = start(&rt, &otlp_settings("http/protobuf", &sink.http_url(), ""));
    let grpc = start(&rt, &otlp_settings("grpc", &sink.grpc_url(), ""));
    http.exporter
        .sender()
        .export(&[test_anomaly("p-1"), test_anomaly("p-2")]);
    grpc.exporter.sender().export(&[test_anomaly("p-3")]);

    http.wait_count("failed", "logs", 2.0);
    http.wait_count("failed", "traces", 1.0);
    grpc.wait_count("failed", "logs", 1.0);
    grpc.wait_count("failed", "traces", 1.0);
    // Long enough for several retries at 100-500 ms, had any been made.
    std::thread::sleep(Duration::from_millis(1500));
    let dump = sink.dump();
    for (transport, signal, answer) in [
        ("http", "logs", "400"),
        ("http", "traces", "partial"),
        ("grpc", "logs", "INVALID_ARGUMENT"),
        ("grpc", "traces", "RESOURCE_EXHAUSTED"),
    ] {
        assert_eq!(
            attempts(&dump, transport, signal).answers,
            [answer],
            "{transport} {signal}: one attempt only"
        );
    }
    assert_eq!(http.count("failed", "logs"), 2.0);
    assert_eq!(
        http.count("sent", "traces"),
        1.0,
        "the accepted half of the partial success"
    );
    assert_eq!(http.count("failed", "traces"), 1.0);
    for run in [&http, &grpc] {
        assert_eq!(run.count("retries", "logs"), 0.0);
        assert_eq!(run.count("retries", "traces"), 0.0);
        assert_eq!(run.count("sent", "logs"), 0.0);
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("memdrift-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        })
        .count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_on_disk_survive_kill_9_and_go_out_after_restart() {
    let tmp = TempDir::new("kill9");
    let queue_dir = tmp.0.join("queue");
    let nobody = ClosedPort::new();
    let mut peer = Command::new(env!("CARGO_BIN_EXE_otlp_queue_peer"))
        .args(["--endpoint", &nobody.url(), "--events", "5", "--dir"])
        .arg(&queue_dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the peer starts");
    let stdout = peer.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        line
    })
    .await
    .expect("reads");
    assert_eq!(line.trim(), "queued 5");
    // SIGKILL: no shutdown, no drain.
    peer.kill().expect("kill -9");
    let _ = peer.wait();
    for signal in ["logs", "traces"] {
        assert!(
            segment_files(&queue_dir.join(signal)) > 0,
            "the {signal} queue holds the undelivered events"
        );
    }

    let mut sink = tokio::task::block_in_place(Sink::start);
    let settings = otlp_settings(
        "grpc",
        &sink.grpc_url(),
        &format!("    queue: {{ directory: \"{}\" }}\n", queue_dir.display()),
    );
    let service = Service::start(otlp_pipeline(&settings))
        .await
        .expect("the service starts on the same queue");
    let dump = tokio::task::block_in_place(|| {
        sink.wait_for("the five queued events", Duration::from_secs(20), |d| {
            services(d, "logs").len() == 5 && services(d, "spans").len() == 5
        })
    });
    assert_eq!(services(&dump, "logs"), named("queued", 5));
    assert_eq!(services(&dump, "spans"), named("queued", 5));
    service.shutdown().await.expect("clean shutdown");
    for signal in ["logs", "traces"] {
        assert_eq!(
            segment_files(&queue_dir.join(signal)),
            0,
            "delivered events leave the disk"
        );
    }
}

#[test]
fn shutdown_stops_at_its_deadline_and_keeps_or_counts_what_is_left() {
    let rt = runtime();
    let tmp = TempDir::new("deadline");
    let nobody = ClosedPort::new();
    let in_memory = "    shutdown_timeout: 300ms\n".to_string();
    let on_disk = format!(
        "{in_memory}    queue: {{ directory: \"{}\" }}\n",
        tmp.0.display()
    );
    for (settings, durable) in [(in_memory, false), (on_disk, true)] {
        let Running { exporter, registry } =
            start(&rt, &otlp_settings("grpc", &nobody.url(), &settings));
        exporter
            .sender()
            .export(&[test_anomaly("left-1"), test_anomaly("left-2")]);
        let began = Instant::now();
        let drained = rt.block_on(exporter.shutdown());
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );
        let dropped = count(&registry, "dropped", "logs") + count(&registry, "dropped", "traces");
        if durable {
            assert_eq!(drained.kept_on_disk, 2, "one logs and one traces batch");
            assert_eq!(dropped, 0.0);
        } else {
            assert_eq!(drained.kept_on_disk, 0);
            assert_eq!(dropped, 4.0, "two log records and two spans");
            assert!(drained.dropped_items >= 4, "{drained:?}");
        }
    }
}

#[test]
fn tls_to_a_receiver_with_a_private_ca() {
    let tmp = TempDir::new("tls");
    let Some(pki) = memdrift_e2e::pki::private_pki(&tmp.0) else {
        return;
    };
    let (ca, cert, key) = (pki.ca, pki.server_cert, pki.server_key);
    let rt = runtime();
    let mut sink = Sink::start_on(0, 0, Some((&cert, &key)));
    let trusted = format!("    tls: {{ ca_file: \"{}\" }}\n", ca.display());
    let url = |port: u16| format!("https://127.0.0.1:{port}");
    let grpc = start(&rt, &otlp_settings("grpc", &url(sink.grpc_port), &trusted));
    let http = start(
        &rt,
        &otlp_settings("http/protobuf", &url(sink.http_port), &trusted),
    );
    // Without the CA the certificate is not trusted and nothing arrives.
    let untrusting = start(
        &rt,
        &otlp_settings("http/protobuf", &url(sink.http_port), ""),
    );
    grpc.exporter.sender().export(&[test_anomaly("tls-grpc")]);
    http.exporter.sender().export(&[test_anomaly("tls-http")]);
    untrusting
        .exporter
        .sender()
        .export(&[test_anomaly("tls-untrusted")]);
    let dump = sink.wait_for("both events over TLS", Duration::from_secs(20), |d| {
        services(d, "logs").len() >= 2
    });
    untrusting.wait_count("retries", "logs", 1.0);
    assert_eq!(
        services(&dump, "logs"),
        ["tls-grpc", "tls-http"].map(String::from).into()
    );
    assert_eq!(untrusting.count("sent", "logs"), 0.0);
}
