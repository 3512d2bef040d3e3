//! A rollout played end to end: fifty minutes of event time of three services sent live over OTLP/gRPC to a
//! running memdrift, while a client polls the gate after every minute of event time the way Argo Rollouts'
//! `web` provider does (the templates' conditions evaluated on the JSON), and Flagger's webhooks are asked at
//! the end.
//!
//! - `equal`: the canary's memory is the baseline's: continue, then pass (never fail).
//! - `wide`: the canary's per-request memory has twice the baseline's sd: continue, then fail within the spread
//!   detector's targets, with the spread as the reason.
//! - `oom`: one canary pod's RSS climbs towards its limit: fail, with the forecast as the reason.

use std::time::Duration;

use memdrift::config::Pipeline;
use memdrift::topology::Service;
use memdrift_e2e::{int, request, resource, span, string};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde_json::{json, Value};

const S: u64 = 1_000_000_000;
const MINUTES: u64 = 50;
/// The canaries start this many minutes after the baselines (which have been running: their forecasts exist).
const CANARY_FROM: u64 = 20;
const LIMIT: i64 = 2 << 30;

fn pipeline() -> Pipeline {
    let text = "extensions:\n  gate: { endpoint: 127.0.0.1:0 }\n\
         receivers:\n  otlp:\n    protocols:\n      grpc: { endpoint: 127.0.0.1:0 }\n\
         processors:\n  extract: {}\n  windows: { size: 60s, step: 10s, allowed_lateness: 5s, idle_timeout: 60m }\n\
         \x20 spread_drift: { signals: [memspan.request.allocated, memspan.rss.end] }\n\
         \x20 growth: { warmup: 2m }\n  leak: {}\n\
         exporters:\n  jsonl: { path: /dev/null }\n\
         service:\n  pipelines:\n    memory: { receivers: [otlp], processors: [extract, windows, spread_drift, growth, leak], exporters: [jsonl] }\n";
    Pipeline::parse_with_env("rollout-gate.yaml", text, &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// One minute of spans of one pod: 2 requests a second, per-request allocation with sd `sd`, RSS at `rss` plus
/// `climb` bytes a second from the canaries' start.
#[allow(clippy::too_many_arguments)]
fn minute_of_spans(
    rng: &mut StdRng,
    start: u64,
    minute: u64,
    sd: f64,
    rss: f64,
    climb: f64,
    n: &mut u64,
) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
    let alloc = Normal::new(40e6, sd).expect("valid");
    let noise = Normal::new(0.0, 2e6).expect("valid");
    (0..120u64)
        .map(|i| {
            let t = minute * 60 * S + i * S / 2;
            *n += 1;
            let since_canary = (t / S).saturating_sub(CANARY_FROM * 60);
            let rss = rss + climb * since_canary as f64 + noise.sample(rng);
            span(
                *n,
                start + t,
                vec![
                    int(
                        "memspan.request.allocated",
                        alloc.sample(rng).max(0.0) as i64,
                    ),
                    int("memspan.rss.end", rss as i64),
                    int("memspan.limit", LIMIT),
                    string("gen_ai.operation.name", "chat"),
                ],
            )
        })
        .collect()
}

async fn json_of(resp: reqwest::Response) -> Value {
    let bytes = resp.bytes().await.expect("a body");
    serde_json::from_slice(&bytes).expect("JSON")
}

async fn gate(addr: std::net::SocketAddr, service: &str) -> Value {
    let url = format!("http://{addr}/v1/gate?service={service}&baseline=1.0&canary=2.0");
    let resp = reqwest::get(&url).await.expect("the gate answers");
    assert_eq!(resp.status(), 200, "every verdict is a 200");
    json_of(resp).await
}

async fn flagger(addr: std::net::SocketAddr, hook: &str, service: &str) -> (u16, Value) {
    let payload = json!({
        "name": service, "namespace": "test", "phase": "Progressing", "checksum": "abc",
        "metadata": { "baseline": "1.0", "canary": "2.0" },
    });
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/flagger/{hook}"))
        .header("content-type", "application/json")
        .body(payload.to_string())
        .send()
        .await
        .expect("the hook answers");
    let status = resp.status().as_u16();
    (status, json_of(resp).await)
}

/// `result == "a" || result == "b"`, the form the templates' conditions take, evaluated on one decision.
fn holds(condition: &str, result: &str) -> bool {
    condition.split("||").any(|term| {
        let (lhs, rhs) = term.split_once("==").expect("a comparison");
        assert_eq!(lhs.trim(), "result", "{condition}");
        rhs.trim().trim_matches('"') == result
    })
}

/// How an AnalysisRun of the named template in `otel-config/rollouts/analysis-template.yaml` ends on these
/// measurements, as Argo Rollouts counts them: "Failed" past `failureLimit` failures, "Successful" at
/// `consecutiveSuccessLimit` successes in a row, "Inconclusive" past `inconclusiveLimit`, else "Running".
fn argo_outcome(template: &str) -> impl Fn(&[String]) -> &'static str {
    let text = std::fs::read_to_string(
        memdrift_e2e::repo_root().join("otel-config/rollouts/analysis-template.yaml"),
    )
    .expect("the templates");
    let docs: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML"))
        .collect();
    let doc = docs
        .into_iter()
        .find(|d| d["metadata"]["name"].as_str() == Some(template))
        .expect("the template");
    let metric = doc["spec"]["metrics"][0].clone();
    let text = |k: &str| metric[k].as_str().map(str::to_string);
    let number = |k: &str| metric[k].as_u64();
    let (success, failure) = (
        text("successCondition").expect("successCondition"),
        text("failureCondition").expect("failureCondition"),
    );
    let failure_limit = number("failureLimit").unwrap_or(0);
    let success_limit = number("consecutiveSuccessLimit");
    let inconclusive_limit = number("inconclusiveLimit").unwrap_or(0);
    move |decisions: &[String]| {
        let (mut failed, mut inconclusive, mut in_a_row) = (0, 0, 0);
        for d in decisions {
            if holds(&failure, d) {
                failed += 1;
                in_a_row = 0;
                if failed > failure_limit {
                    return "Failed";
                }
            } else if holds(&success, d) {
                in_a_row += 1;
                if success_limit.is_some_and(|l| in_a_row >= l) {
                    return "Successful";
                }
            } else {
                in_a_row = 0;
                inconclusive += 1;
                if inconclusive > inconclusive_limit {
                    return "Inconclusive";
                }
            }
        }
        "Running"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_played_end_to_end() {
    let service = Service::start(pipeline()).await.expect("starts");
    let grpc = format!("http://{}", service.grpc_addr.expect("grpc"));
    let addr = service.gate_addr.expect("the gate listens");
    let mut client = TraceServiceClient::connect(grpc).await.expect("connects");
    let mut rng = StdRng::seed_from_u64(11);
    let start = memdrift_e2e::now_unix_nano() - (MINUTES + 1) * 60 * S;
    let mut n = 0;
    // (service, canary's sd of per-request allocation, canary pod 0's RSS climb in bytes a second)
    let scenarios = [("equal", 4e6, 0.0), ("wide", 8e6, 0.0), ("oom", 4e6, 0.7e6)];
    let mut decisions: Vec<Vec<String>> = vec![Vec::new(); scenarios.len()];
    let mut last: Vec<Value> = vec![Value::Null; scenarios.len()];
    for minute in 0..MINUTES {
        for (name, canary_sd, climb) in scenarios {
            for (version, pod) in [("1.0", 0), ("1.0", 1), ("2.0", 0), ("2.0", 1)] {
                let canary = version == "2.0";
                if canary && minute < CANARY_FROM {
                    continue;
                }
                let (sd, climb) = match (canary, pod) {
                    (true, 0) => (canary_sd, climb),
                    (true, _) => (canary_sd, 0.0),
                    _ => (4e6, 0.0),
                };
                let spans = minute_of_spans(&mut rng, start, minute, sd, 8e8, climb, &mut n);
                let instance = format!("{name}-{version}-{pod}");
                client
                    .export(request(resource(name, version, &instance), spans))
                    .await
                    .expect("export accepted");
            }
        }
        // Argo polls once a minute: ask once this minute's windows have closed.
        let minute_end = start + (minute + 1) * 60 * S - 20 * S;
        for (k, (name, _, _)) in scenarios.iter().enumerate() {
            let mut v = gate(addr, name).await;
            for _ in 0..100 {
                let now = v["window"]["now"]
                    .as_str()
                    .and_then(memdrift_exporter::anomaly::parse_rfc3339);
                if now.is_some_and(|t| t >= minute_end) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                v = gate(addr, name).await;
            }
            decisions[k].push(v["decision"].as_str().expect("decision").to_string());
            last[k] = v;
        }
    }
    let first = |k: usize, d: &str| decisions[k].iter().position(|x| x == d).map(|m| m as u64);
    // Equal cohorts: continue, then pass after min_duration (10 min) and once growth forecasts every canary pod
    // (about 17 minutes of its data), before 25 minutes of canary; no fail.
    let (equal, wide, oom) = (0, 1, 2);
    assert!(
        !decisions[equal].iter().any(|d| d == "fail"),
        "{:?}\n{}",
        decisions[equal],
        last[equal]
    );
    let passed = first(equal, "pass").expect("equal cohorts pass") + 1 - CANARY_FROM;
    assert!(
        (10..=20).contains(&passed),
        "passed after {passed} min: {:?}",
        decisions[equal]
    );
    assert_eq!(first(equal, "continue"), Some(0));
    // Background analysis (fail aborts, continue and pass go on) keeps going; the promotion gate opens.
    assert_eq!(
        decisions[equal].last().map(String::as_str),
        Some("pass"),
        "{}",
        last[equal]
    );
    // Twice the spread: fail within 5 minutes of the canary's start, the spread as the reason.
    let failed = first(wide, "fail").expect("a wider canary fails") + 1 - CANARY_FROM;
    assert!(
        failed <= 5,
        "failed after {failed} min: {:?}",
        decisions[wide]
    );
    assert!(
        !decisions[wide].iter().any(|d| d == "pass"),
        "{:?}",
        decisions[wide]
    );
    let reasons = last[wide]["reasons"].to_string();
    assert!(
        reasons.contains("spread:") && reasons.contains("memspan.request.allocated"),
        "{reasons}"
    );
    // Heading to OOM: fail with the forecast.
    assert_eq!(last[oom]["decision"], "fail", "{}", last[oom]);
    let reasons = last[oom]["reasons"].to_string();
    assert!(
        reasons.contains("forecast: canary instance oom-2.0-0"),
        "{reasons}"
    );
    assert!(
        last[oom]["forecast"][0]["time_to_limit_s"]
            .as_f64()
            .is_some(),
        "{}",
        last[oom]
    );
    assert!(
        !decisions[oom].iter().any(|d| d == "pass"),
        "{:?}",
        decisions[oom]
    );

    // Argo Rollouts: the measurements from the canary's start run through the shipped AnalysisTemplates' own
    // conditions (the background analysis keeps running or fails; the promotion gate succeeds or fails).
    let background = argo_outcome("memdrift-gate-background");
    let promotion = argo_outcome("memdrift-gate-promotion");
    let since_canary = |k: usize| decisions[k][CANARY_FROM as usize..].to_vec();
    assert_eq!(
        background(&since_canary(equal)),
        "Running",
        "{:?}",
        decisions[equal]
    );
    assert_eq!(
        promotion(&since_canary(equal)),
        "Successful",
        "{:?}",
        decisions[equal]
    );
    for k in [wide, oom] {
        assert_eq!(background(&since_canary(k)), "Failed", "{:?}", decisions[k]);
        assert_eq!(promotion(&since_canary(k)), "Failed", "{:?}", decisions[k]);
    }

    // Flagger's hooks: 2xx goes on, 409 fails the check; rollback is inverted.
    let expect = [
        ("equal", [200, 200, 200, 409, 202]),
        ("wide", [200, 409, 409, 200, 202]),
        ("oom", [200, 409, 409, 200, 202]),
    ];
    let hooks = [
        "pre-rollout",
        "rollout",
        "confirm-promotion",
        "rollback",
        "event",
    ];
    for (name, statuses) in expect {
        for (hook, want) in hooks.iter().zip(statuses) {
            let (status, body) = flagger(addr, hook, name).await;
            assert_eq!(status, want, "{hook} for {name}: {body}");
        }
    }
    // A service with no data yet: pre-rollout fails with the reason, the gate says continue.
    let (status, body) = flagger(addr, "pre-rollout", "unseen").await;
    assert_eq!(status, 409);
    assert!(
        body["reasons"][0]
            .as_str()
            .unwrap_or("")
            .contains("no data yet"),
        "{body}"
    );
    assert_eq!(gate(addr, "unseen").await["decision"], "continue");
    // A malformed question is a 400 that names the problem; an unknown hook a 404 listing the hooks.
    let resp = reqwest::get(format!("http://{addr}/v1/gate?service=equal&baseline=1.0"))
        .await
        .expect("answers");
    assert_eq!(resp.status(), 400);
    let body = json_of(resp).await;
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("missing canary"),
        "{body}"
    );
    let resp = reqwest::get(format!(
        "http://{addr}/v1/gate?service=a&baseline=b&canary=c&since=yesterday"
    ))
    .await
    .expect("answers");
    assert_eq!(resp.status(), 400);
    let (status, body) = flagger(addr, "promote", "equal").await;
    assert_eq!(status, 404, "{body}");
    // POST with the same fields as JSON answers the same as GET.
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/gate"))
        .header("content-type", "application/json")
        .body(json!({ "service": "wide", "baseline": "1.0", "canary": "2.0" }).to_string())
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status(), 200);
    let body = json_of(resp).await;
    assert_eq!(body["decision"], "fail");
    service.shutdown().await.expect("clean shutdown");
}
