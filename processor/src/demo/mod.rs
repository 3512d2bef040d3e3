//! `memdrift demo`: a self-contained show of about a minute and a half.
//!
//! It starts the service in-process on the embedded `pipelines/demo.yaml` (the default detectors on a time scale
//! of seconds), runs four instrumented instances of two services with the real memspan SDK exporting real
//! OTLP/gRPC to it, plants a spread change in one canary and an off-heap leak in another service, and prints what
//! memdrift reports as it happens, then a summary of what was planted against what was found.
//!
//! The instances' memory is simulated ([`sim`]): they share this process, whose own RSS says nothing about any of
//! them. Everything from the SDK's probe onwards is what a real deployment runs.

mod sim;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use memdrift_exporter::anomaly::{AnomalyKind, AnomalyRecord, AnomalyState};
use tokio::sync::broadcast::error::RecvError;

use crate::config::Pipeline;
use crate::topology::Service;
use sim::{SimProcess, Story, GIB, MIB};

/// The embedded demo pipeline, `pipelines/demo.yaml`.
pub const DEMO_PIPELINE: &str = include_str!("../../../pipelines/demo.yaml");

/// Requests per second per instance.
const RATE_PER_S: u64 = 40;
const MODEL: &str = "tiny-llm";
/// Updates of one finding are printed at most this often.
const UPDATE_EVERY: Duration = Duration::from_secs(20);
const STATUS_EVERY: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// How long the instances send; detection must happen within it.
    pub duration: Duration,
}

/// One simulated instance of an instrumented service.
struct Instance {
    service: &'static str,
    version: &'static str,
    cohort: &'static str,
    id: &'static str,
    story: Story,
}

/// Something the demo plants, and the finding that shows memdrift saw it.
struct Planted {
    what: String,
    at: Duration,
    kind: AnomalyKind,
    service: &'static str,
    instance: Option<&'static str>,
    classification: Option<&'static str>,
    found: Option<Duration>,
}

const SPREAD_FROM: Duration = Duration::from_secs(20);
const LEAK_MIB_PER_S: f64 = 4.0;

fn instances() -> Vec<Instance> {
    let chat = |cohort_sd_from: Option<(Duration, f64)>| Story {
        floor: 1.2 * GIB,
        sawtooth: 150.0 * MIB,
        gc_period_s: 8.0,
        leak_bytes_per_s: 0.0,
        limit: 4.0 * GIB,
        request_mean: 48.0 * MIB,
        request_sd: 4.0 * MIB,
        spread_from: cohort_sd_from,
    };
    vec![
        Instance {
            service: "chat-api",
            version: "1.4.2",
            cohort: "stable",
            id: "chat-api-stable-1",
            story: chat(None),
        },
        Instance {
            service: "chat-api",
            version: "1.4.2",
            cohort: "stable",
            id: "chat-api-stable-2",
            story: chat(None),
        },
        Instance {
            service: "chat-api",
            version: "1.5.0",
            cohort: "canary",
            id: "chat-api-canary-1",
            story: chat(Some((SPREAD_FROM, 12.0 * MIB))),
        },
        Instance {
            service: "embed-api",
            version: "2.1.0",
            cohort: "stable",
            id: "embed-api-0",
            story: Story {
                floor: 1.0 * GIB,
                sawtooth: 80.0 * MIB,
                gc_period_s: 6.0,
                leak_bytes_per_s: LEAK_MIB_PER_S * MIB,
                limit: 1.5 * GIB,
                request_mean: 16.0 * MIB,
                request_sd: 2.0 * MIB,
                spread_from: None,
            },
        },
    ]
}

fn planted() -> Vec<Planted> {
    let leak = format!(
        "embed-api/embed-api-0: off-heap leak of {LEAK_MIB_PER_S} MiB/s toward its 1.5 GiB limit"
    );
    vec![
        Planted {
            what: "chat-api canary: per-request memory spread x3, same mean".into(),
            at: SPREAD_FROM,
            kind: AnomalyKind::SpreadDrift,
            service: "chat-api",
            instance: None,
            classification: None,
            found: None,
        },
        Planted {
            what: leak.clone(),
            at: Duration::ZERO,
            kind: AnomalyKind::Growth,
            service: "embed-api",
            instance: Some("embed-api-0"),
            classification: None,
            found: None,
        },
        Planted {
            what: leak,
            at: Duration::ZERO,
            kind: AnomalyKind::Leak,
            service: "embed-api",
            instance: Some("embed-api-0"),
            classification: Some("off_heap"),
            found: None,
        },
    ]
}

/// `m:ss` since the start of the show.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

fn bytes(v: f64) -> String {
    if v.abs() >= GIB {
        format!("{:.2} GiB", v / GIB)
    } else {
        format!("{:.1} MiB", v / MIB)
    }
}

/// A p-value as a person reads it: beyond double precision's resolution near zero it is just "tiny".
fn p_value(p: Option<f64>) -> String {
    match p {
        Some(p) if p < 1e-15 => "< 1e-15".into(),
        Some(p) => format!("{p:.1e}"),
        None => "n/a".into(),
    }
}

fn seconds(v: f64) -> String {
    humantime::format_duration(Duration::from_secs(v.max(0.0).round() as u64)).to_string()
}

/// One line saying what an event means.
fn describe(a: &AnomalyRecord) -> String {
    let who = match &a.instance {
        Some(i) => format!("{}/{}", a.service, i),
        None => a.service.clone(),
    };
    let evidence = match a.kind {
        AnomalyKind::SpreadDrift => {
            let (Some(c), Some(r)) = (&a.cohorts, &a.sd_ratio) else {
                return format!("{who} {}", a.signal);
            };
            format!(
                "{} sd {:.2}x {} [{:.2}, {:.2}], p {} ({} vs {} requests)",
                c.canary,
                r.value,
                c.baseline,
                r.low,
                r.high,
                p_value(a.p_value),
                c.canary_samples,
                c.baseline_samples
            )
        }
        AnomalyKind::Growth => match (&a.time_to_limit_s, a.limit_bytes) {
            (Some(t), Some(limit)) => format!(
                "{} limit reached in {} [{} .. {}], growing {}/s",
                bytes(limit),
                seconds(t.value),
                seconds(t.low),
                seconds(t.high),
                bytes(a.growth_bytes_per_s.unwrap_or(0.0))
            ),
            _ => String::new(),
        },
        AnomalyKind::Leak => format!(
            "{}: post-GC floor rising {}/s, Mann-Kendall p {}",
            a.classification.as_deref().unwrap_or("unknown"),
            bytes(a.growth_bytes_per_s.unwrap_or(0.0)),
            p_value(a.p_value)
        ),
        AnomalyKind::GcGoal => format!(
            "next GC due at {}, above the {} limit",
            bytes(a.gc_goal_bytes.unwrap_or(0.0)),
            bytes(a.limit_bytes.unwrap_or(0.0))
        ),
    };
    format!("{who}  {}  {evidence}", a.signal)
}

fn matches(p: &Planted, a: &AnomalyRecord) -> bool {
    a.kind == p.kind
        && a.service == p.service
        && p.instance.is_none_or(|i| a.instance.as_deref() == Some(i))
        && p.classification
            .is_none_or(|c| a.classification.as_deref() == Some(c))
}

/// Runs the show, printing to `out`. `Ok(true)` when everything planted was found and nothing else was.
pub async fn run(opts: &DemoOptions, out: &mut (dyn Write + Send)) -> Result<bool> {
    let pipeline = Pipeline::parse("pipelines/demo.yaml (embedded)", DEMO_PIPELINE)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let service = Service::start(pipeline).await?;
    let mut events = service.events();
    let grpc = service
        .grpc_addr
        .context("the demo pipeline has no OTLP/gRPC receiver")?;
    let endpoint = format!("http://{grpc}");
    let start = Instant::now();

    writeln!(
        out,
        "memdrift demo: memdrift listens on {endpoint} (OTLP/gRPC); four instances instrumented with memspan send"
    )?;
    writeln!(
        out,
        "it {RATE_PER_S} requests a second each for {}. Their memory is simulated; spans, OTLP and detection are real.",
        humantime::format_duration(opts.duration)
    )?;
    let mut plants = planted();
    writeln!(out, "\nPlanted:")?;
    for p in plants.iter().filter(|p| p.kind != AnomalyKind::Leak) {
        writeln!(out, "  from {}  {}", clock(p.at), p.what)?;
    }
    writeln!(out, "\nWhat memdrift reports:")?;

    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for (seed, inst) in instances().into_iter().enumerate() {
        let process = Arc::new(SimProcess::new(inst.story.clone(), start, seed as u64 + 1));
        let telemetry = memspan::Builder::from_env()
            .without_default_probes()
            // Shared with the loop that sizes the instance's requests.
            .probe(process.clone())
            .service_name(inst.service)
            .service_version(inst.version)
            .instance_id(inst.id)
            .cohort(inst.cohort)
            .endpoint(endpoint.clone())
            .protocol(memspan::Protocol::Grpc)
            .build()
            .with_context(|| format!("memspan setup for {}", inst.id))?;
        handles.push(telemetry.clone());
        senders.push(tokio::spawn(send_requests(
            telemetry,
            process,
            opts.duration,
        )));
    }

    let mut last_update: HashMap<(AnomalyKind, String, Option<String>, String), Instant> =
        HashMap::new();
    let mut unexpected: Vec<String> = Vec::new();
    let mut open = 0usize;
    let mut next_status = start + STATUS_EVERY;
    // Events keep coming for a little while after the senders stop: the last batches are still in flight.
    let end = start + opts.duration + Duration::from_secs(8);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let wake = next_status.min(end);
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(a) => {
                    // What is printed is the event as JSON lines carry it.
                    let a = AnomalyRecord::from(&a);
                    let at = start.elapsed();
                    let key = (a.kind, a.service.clone(), a.instance.clone(), a.signal.clone());
                    let label = match a.state {
                        AnomalyState::Open => { open += 1; "OPEN    " }
                        AnomalyState::Resolved => { open = open.saturating_sub(1); "RESOLVED" }
                        AnomalyState::Update => {
                            if last_update.get(&key).is_some_and(|t| t.elapsed() < UPDATE_EVERY) {
                                continue;
                            }
                            "update  "
                        }
                    };
                    last_update.insert(key, Instant::now());
                    writeln!(out, "{}  {label} {:<12} {}", clock(at), a.kind.name(), describe(&a))?;
                    if a.state == AnomalyState::Open {
                        let mut expected = false;
                        for p in plants.iter_mut().filter(|p| matches(p, &a)) {
                            expected = true;
                            p.found.get_or_insert(at);
                        }
                        if !expected {
                            unexpected.push(format!("{} {}", a.kind.name(), describe(&a)));
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => writeln!(out, "(missed {n} events)")?,
                Err(RecvError::Closed) => break,
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() >= next_status {
                    next_status += STATUS_EVERY;
                    let t = &service.telemetry;
                    writeln!(
                        out,
                        "{}  . {} spans received, {} windows closed, {open} finding(s) open",
                        clock(start.elapsed()),
                        t.accepted_spans.get(),
                        t.windows_closed.get(),
                    )?;
                }
            }
        }
        out.flush()?;
    }

    for s in senders {
        let _ = s.await;
    }
    for h in handles {
        let _ = tokio::task::spawn_blocking(move || h.shutdown()).await;
    }
    service.shutdown().await?;

    writeln!(out, "\nSummary:")?;
    let mut all_found = true;
    for p in &plants {
        let found = match p.found {
            Some(at) => format!(
                "{} opened at {} ({} after it began)",
                p.kind.name(),
                clock(at),
                clock(at.saturating_sub(p.at))
            ),
            None => {
                all_found = false;
                format!("{} NOT found", p.kind.name())
            }
        };
        writeln!(out, "  {:<76} -> {found}", p.what)?;
    }
    if unexpected.is_empty() {
        writeln!(out, "  nothing else was reported (no false alarms)")?;
    } else {
        for u in &unexpected {
            writeln!(out, "  unexpected: {u}")?;
        }
    }
    Ok(all_found && unexpected.is_empty())
}

/// One instance's traffic: requests at a steady rate, each a memspan request guard whose probe readings come
/// from the simulated process and whose allocated bytes are the planted distribution.
async fn send_requests(telemetry: memspan::Memspan, process: Arc<SimProcess>, duration: Duration) {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_S));
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < duration {
        tick.tick().await;
        n += 1;
        let mut guard = telemetry.request("chat", MODEL);
        // A service without the counting allocator measures its request some other way; here the story says.
        guard.set_attribute(opentelemetry::KeyValue::new(
            memspan::attributes::REQUEST_ALLOCATED,
            process.request_bytes() as i64,
        ));
        guard.record_tokens(20 + n % 50, 64 + n % 200);
        guard.finish();
    }
}
