//! `memdrift run`: receivers -> the core (directly or over a bounded channel) -> the engine thread -> sinks,
//! with clean shutdown.
//!
//! The engine thread owns the sinks, the timer and the checkpoints: the synchronous writes stay off the async
//! workers, so a slow disk never stalls a receiver. Receivers extract on their own tasks; a request that finds
//! the core free and nothing queued runs it there (CPU work only) and hands what it produced to the engine
//! thread to publish; otherwise it queues its batch over the bounded channel, and when that is full it answers
//! "retry later". See [`EngineInput`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use memdrift_anomaly::Anomaly;
use memdrift_exporter::otlp::OtlpExporter;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::checkpoint::store::{self as checkpoint, Checkpoints};
use crate::config::Pipeline;
use crate::core::{Core, Output};
use crate::detect::Detector;
use crate::gate::{self, Board, SharedBoard};
use crate::outputs::Outputs;
use crate::receivers::listener::{serve_http, ConnectionLimits, GuardedListener};
use crate::receivers::memory_limit::{container_limit, MemoryLimiter, MemoryLimits};
use crate::receivers::otlp::budget::DecodeBudget;
use crate::receivers::otlp::{grpc, http, EngineInput, EngineWork, Ingest, Queued, Verdict};
use crate::receivers::security::{guard_router, Security};
use crate::telemetry::Telemetry;

/// Batches that may wait for the engine before receivers push back.
const QUEUE_BATCHES: usize = 1024;
const DEFAULT_MAX_CLOCK_SKEW_NS: u64 = 300_000_000_000;
/// Events a slow [`Service::events`] subscriber may fall behind by before it misses some (it is told how many).
const EVENT_TAP_CAPACITY: usize = 1024;
/// Scrapers of `/metrics` at once (more are closed as the OTLP receivers close theirs).
const PROMETHEUS_MAX_CONNECTIONS: usize = 64;
/// Rollout controllers and scripts asking the gate at once.
const GATE_MAX_CONNECTIONS: usize = 64;
/// `service.shutdown_timeout` when the pipeline does not set it.
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// `service.checkpoint.interval` when the pipeline does not set it.
const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// A running service: its bound addresses (useful when the pipeline asked for port 0) and its telemetry.
pub struct Service {
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub prometheus_addr: Option<SocketAddr>,
    /// The rollout gate's address, when `extensions.gate` is set.
    pub gate_addr: Option<SocketAddr>,
    pub telemetry: Telemetry,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<Result<()>>)>,
    engine: std::thread::JoinHandle<()>,
    /// Tells the engine thread to drain what is queued and return, even while a cut connection's task still
    /// holds a sender.
    engine_stop: Arc<AtomicBool>,
    /// Wakes the engine thread to see `engine_stop` (it otherwise sleeps until work comes or a tick is due).
    engine_wake: SyncSender<EngineWork>,
    shutdown_timeout: Duration,
    otlp: Option<OtlpExporter>,
    events: broadcast::Sender<Anomaly>,
}

async fn bind(what: &str, endpoint: &str) -> Result<TcpListener> {
    TcpListener::bind(endpoint).await.with_context(|| {
        format!("cannot listen on {endpoint} for {what}: is another process using the port? (change it in the pipeline file)")
    })
}

/// Reads a server's TLS and token settings, binds its endpoint and bounds its connections: what every server
/// (OTLP/gRPC, OTLP/HTTP, Prometheus) does before it serves.
async fn listen(
    file: &crate::config::PipelineFile,
    server: &'static str,
    endpoint: &crate::config::Endpoint,
    limits: ConnectionLimits,
    telemetry: &Telemetry,
) -> Result<(GuardedListener, Security)> {
    let what = match server {
        "otlp_grpc" => "receivers.otlp.protocols.grpc",
        "otlp_http" => "receivers.otlp.protocols.http",
        "gate" => "extensions.gate",
        _ => "exporters.prometheus",
    };
    let security = Security::resolve(file, what, endpoint.tls.as_ref(), endpoint.auth.as_ref())
        .map_err(anyhow::Error::msg)?;
    let listener = bind(what, &endpoint.endpoint).await?;
    Ok((
        GuardedListener::new(server, listener, limits, telemetry.clone()),
        security,
    ))
}

/// Binds an HTTP server of `router` (Prometheus, the gate) with its TLS, token and connection cap, and spawns it.
async fn serve_router(
    file: &crate::config::PipelineFile,
    server: &'static str,
    endpoint: &crate::config::Endpoint,
    max_connections: usize,
    telemetry: &Telemetry,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(Option<SocketAddr>, JoinHandle<Result<()>>)> {
    let limits = ConnectionLimits {
        max_connections,
        ..ConnectionLimits::default()
    };
    let (listener, security) = listen(file, server, endpoint, limits, telemetry).await?;
    let addr = listener.local_addr().ok();
    let refused = (telemetry.failed_requests).with_label_values(&[server, "unauthenticated"]);
    let router = guard_router(router, &security, refused);
    let task =
        tokio::spawn(
            async move { Ok(serve_http(listener, router, security.tls, shutdown).await?) },
        );
    Ok((addr, task))
}

impl Service {
    /// Binds every listener, then starts the servers and the engine thread.
    pub async fn start(pipeline: Pipeline) -> Result<Service> {
        let detectors = pipeline.build_detectors();
        Service::start_with_detectors(pipeline, detectors).await
    }

    /// [`Service::start`] with the given detectors instead of the pipeline's, so tests can drive the exporters
    /// with events they know.
    pub async fn start_with_detectors(
        pipeline: Pipeline,
        detectors: Vec<Box<dyn Detector>>,
    ) -> Result<Service> {
        let telemetry = Telemetry::new();
        let (stop, _) = watch::channel(false);
        let stopped = |stop: &watch::Sender<bool>| {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.wait_for(|v| *v).await;
            }
        };
        let file = &pipeline.file;
        // The core first, whole (its gate board and restored state in it): a request may reach it as soon as a
        // receiver is up.
        let board = match (&file.extensions.gate, &pipeline.gate) {
            (Some(_), Some(settings)) => Some(SharedBoard::new(Board::new(settings.clone()))),
            _ => None,
        };
        let mut core = Core::new(pipeline.engine.clone(), detectors);
        if let Some(board) = board.clone() {
            core = core.with_gate(board);
        }
        let checkpoints = match &file.service.checkpoint {
            Some(c) => {
                let settings = checkpoint::settings(&pipeline.engine, &pipeline.detectors);
                let interval = c
                    .interval
                    .map_or(DEFAULT_CHECKPOINT_INTERVAL, |d| d.as_std());
                let dir = std::path::Path::new(&c.directory);
                let checkpoints = Checkpoints::open(dir, settings, interval, telemetry.clone())
                    .context("service.checkpoint.directory")?;
                checkpoints.restore(&mut core);
                Some(checkpoints)
            }
            None => None,
        };
        let shared = Arc::new(Mutex::new(core));
        let (tx, rx) = sync_channel::<EngineWork>(QUEUE_BATCHES);
        let engine_wake = tx.clone();
        let input = EngineInput::with_core(tx, Arc::clone(&shared));
        let queued = input.queued();
        let mut tasks: Vec<(&'static str, JoinHandle<Result<()>>)> = Vec::new();
        let (mut grpc_addr, mut http_addr, mut prometheus_addr) = (None, None, None);

        if let Some(otlp) = file
            .receivers
            .otlp
            .as_ref()
            .filter(|_| file.receiver_enabled("otlp"))
        {
            let skew = otlp
                .max_clock_skew
                .map_or(DEFAULT_MAX_CLOCK_SKEW_NS, |d| d.as_nanos());
            let m = &otlp.memory_limiter;
            let d = MemoryLimits::default();
            let limits = MemoryLimits {
                limit_mib: m.limit_mib,
                limit_percentage: m.limit_percentage.unwrap_or(d.limit_percentage),
                spike_limit_percentage: m
                    .spike_limit_percentage
                    .unwrap_or(d.spike_limit_percentage),
            };
            let limiter = MemoryLimiter::new(limits, container_limit()).map(Arc::new);
            if let Some(l) = &limiter {
                tracing::info!(
                    soft_limit_mib = l.soft_bytes >> 20,
                    hard_limit_mib = l.hard_bytes >> 20,
                    "memory limiter on"
                );
                tokio::spawn(Arc::clone(l).run());
            }
            let budget = DecodeBudget::new(otlp.decode_budget_bytes).with_limiter(limiter);
            let ingest = Ingest::new(
                pipeline.extract.clone(),
                telemetry.clone(),
                input,
                skew,
                budget,
            );
            let max = otlp.max_request_bytes;
            let d = ConnectionLimits::default();
            let or =
                |v: Option<crate::duration::Duration>, default| v.map_or(default, |v| v.as_std());
            let limits = ConnectionLimits {
                max_connections: otlp.max_connections.unwrap_or(d.max_connections),
                idle_timeout: or(otlp.idle_timeout, d.idle_timeout),
                header_read_timeout: or(otlp.header_read_timeout, d.header_read_timeout),
                request_timeout: or(otlp.request_timeout, d.request_timeout),
            };
            if let Some(g) = &otlp.protocols.grpc {
                let (listener, security) = listen(file, "otlp_grpc", g, limits, &telemetry).await?;
                grpc_addr = listener.local_addr().ok();
                let (ingest, shutdown) = (ingest.clone(), stopped(&stop));
                tasks.push((
                    "otlp grpc",
                    tokio::spawn(async move {
                        Ok(grpc::serve(listener, ingest, max, security, shutdown).await?)
                    }),
                ));
            }
            if let Some(h) = &otlp.protocols.http {
                let (listener, security) = listen(file, "otlp_http", h, limits, &telemetry).await?;
                http_addr = listener.local_addr().ok();
                let (ingest, shutdown) = (ingest.clone(), stopped(&stop));
                tasks.push((
                    "otlp http",
                    tokio::spawn(async move {
                        Ok(http::serve(listener, ingest, max, security, shutdown).await?)
                    }),
                ));
            }
        }

        if let Some(p) = file
            .exporters
            .prometheus
            .as_ref()
            .filter(|_| file.exporter_enabled("prometheus"))
        {
            let endpoint = crate::config::Endpoint {
                endpoint: p.endpoint.clone(),
                tls: p.tls.clone(),
                auth: p.auth.clone(),
            };
            let router = memdrift_exporter::prometheus::router(telemetry.registry.clone());
            let (addr, task) = serve_router(
                file,
                "prometheus",
                &endpoint,
                PROMETHEUS_MAX_CONNECTIONS,
                &telemetry,
                router,
                stopped(&stop),
            )
            .await?;
            prometheus_addr = addr;
            tasks.push(("prometheus", task));
        }

        let mut gate_addr = None;
        if let (Some(section), Some(board)) = (&file.extensions.gate, &board) {
            let endpoint = crate::config::Endpoint {
                endpoint: section.endpoint.clone(),
                tls: section.tls.clone(),
                auth: section.auth.clone(),
            };
            let (addr, task) = serve_router(
                file,
                "gate",
                &endpoint,
                GATE_MAX_CONNECTIONS,
                &telemetry,
                gate::api::router(board.clone()),
                stopped(&stop),
            )
            .await?;
            gate_addr = addr;
            tasks.push(("gate", task));
        }

        let otlp = match &pipeline.otlp {
            Some(config) => Some(OtlpExporter::start(
                config.clone(),
                telemetry.exporter.clone(),
                telemetry.registry.clone(),
            )?),
            None => {
                if file.exporters.otlp.is_some() && file.exporter_enabled("otlp") {
                    tracing::info!("otlp exporter skipped: no endpoint (set OTEL_EXPORTER_OTLP_ENDPOINT or exporters.otlp.endpoint)");
                }
                None
            }
        };
        let (events, _) = broadcast::channel(EVENT_TAP_CAPACITY);
        let sinks = Outputs::of_pipeline(&pipeline, otlp.as_ref(), events.clone())?;
        let engine_telemetry = telemetry.clone();
        let engine_stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&engine_stop);
        let engine = std::thread::Builder::new()
            .name("memdrift-engine".into())
            .spawn(move || {
                let parts = EngineParts {
                    core: shared,
                    queued,
                    telemetry: engine_telemetry,
                    sinks,
                    checkpoints,
                };
                engine_loop(parts, rx, &stop_flag)
            })
            .context("cannot start the engine thread")?;
        let shutdown_timeout = file
            .service
            .shutdown_timeout
            .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |d| {
                Duration::from_nanos(d.as_nanos())
            });

        Ok(Service {
            grpc_addr,
            http_addr,
            prometheus_addr,
            gate_addr,
            telemetry,
            stop,
            tasks,
            engine,
            engine_stop,
            engine_wake,
            shutdown_timeout,
            otlp,
            events,
        })
    }

    /// Every anomaly event from now on, as the exporters get it: for an in-process consumer such as
    /// `memdrift demo`. Nothing is kept for a subscriber that never reads, and the engine never waits for one.
    pub fn events(&self) -> broadcast::Receiver<Anomaly> {
        self.events.subscribe()
    }

    /// Stops accepting, gives requests in flight `service.shutdown_timeout` to finish and cuts the connections
    /// still open then, drains the engine queue and flushes the sinks.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let mut first_error = None;
        for (name, mut task) in self.tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    first_error.get_or_insert(e.context(format!("{name} failed")));
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(anyhow::anyhow!("{name} panicked: {e}"));
                }
                Err(_) => {
                    // Its connections' tasks end with the runtime, when `run` returns.
                    tracing::warn!(
                        component = name,
                        timeout = ?self.shutdown_timeout,
                        "requests still in flight at service.shutdown_timeout; cutting their connections"
                    );
                    task.abort();
                }
            }
        }
        // Whatever was accepted is in the queue: the engine drains it and returns, even if a cut connection's
        // task still holds a sender.
        self.engine_stop.store(true, Ordering::Release);
        // A full queue needs no wake: the engine thread looks at the flag after each piece of work.
        let _ = self.engine_wake.try_send(EngineWork::Wake);
        let engine = self.engine;
        let engine_panicked = !matches!(
            tokio::task::spawn_blocking(move || engine.join()).await,
            Ok(Ok(()))
        );
        if engine_panicked {
            first_error.get_or_insert(anyhow::anyhow!("the engine thread panicked"));
        }
        // Last, so the engine's final events are queued before the exporter drains.
        if let Some(otlp) = self.otlp {
            otlp.shutdown().await;
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Serves until SIGTERM or Ctrl-C, then shuts down cleanly.
    pub async fn run_until_signal(self) -> Result<()> {
        self.run_until(stop_signal()).await
    }

    /// Serves until `stop` resolves, then shuts down cleanly.
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()>) -> Result<()> {
        stop.await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}

/// Takes over SIGTERM and SIGINT at once and resolves on either. Registering before anything says "running"
/// matters: until a handler exists, a SIGTERM kills the process outright, without draining the exporters.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut term), Some(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (Some(mut one), None) | (None, Some(mut one)) => {
                    one.recv().await;
                }
                (None, None) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What the engine thread owns or shares.
struct EngineParts {
    /// Shared with the receivers, which run it themselves when it is free (see [`EngineInput`]).
    core: Arc<Mutex<Core>>,
    queued: Queued,
    telemetry: Telemetry,
    sinks: Outputs,
    checkpoints: Option<Checkpoints>,
}

/// The core, even after a panic elsewhere left its lock poisoned: a receiver's task that panicked mid-batch
/// cost that batch, and the service goes on.
fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|poisoned| {
        // Receivers take it again too, rather than queueing every batch from now on.
        core.clear_poison();
        poisoned.into_inner()
    })
}

fn engine_loop(mut parts: EngineParts, rx: Receiver<EngineWork>, stop: &AtomicBool) {
    let cfg = lock(&parts.core).engine().config().clone();
    let tick = Duration::from_nanos(cfg.step_ns);
    // When traffic stops, windows still close once the wall clock has passed them by the allowed lateness
    // plus a step.
    let idle_delay = cfg.allowed_lateness_ns.saturating_add(cfg.step_ns);
    let mut last_tick = Instant::now();
    // A restored state's keys show from the start.
    parts.telemetry.record_keys(lock(&parts.core).engine());
    loop {
        if stop.load(Ordering::Acquire) {
            // What was queued when the stop came, and no more: a connection not yet cut cannot keep it going.
            for work in rx.try_iter().take(QUEUE_BATCHES) {
                parts.work(work);
            }
            break;
        }
        // Asleep until work comes, a tick is due or the service stops (idle, the thread costs nothing).
        match rx.recv_timeout(tick.saturating_sub(last_tick.elapsed())) {
            Ok(work) => parts.work(work),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_tick.elapsed() >= tick {
            last_tick = Instant::now();
            let mut core = lock(&parts.core);
            let out = core.tick(now_unix_nano().saturating_sub(idle_delay));
            parts.telemetry.record_keys(core.engine());
            if let Some(c) = &mut parts.checkpoints {
                c.save_if_due(&core);
            }
            drop(core);
            emit(&out, &parts.telemetry, &mut parts.sinks);
        }
    }
    let core = lock(&parts.core);
    parts.telemetry.record_keys(core.engine());
    // What was accepted is in the state now: the next start carries on from here.
    if let Some(c) = &mut parts.checkpoints {
        c.save(&core);
    }
}

impl EngineParts {
    /// Runs a queued batch through the core and tells its request what the engine did not keep, or publishes
    /// what a receiver's own run produced.
    fn work(&mut self, work: EngineWork) {
        let out = match work {
            EngineWork::Batch(batch) => {
                let mut core = lock(&self.core);
                let out = core.ingest(&batch.samples);
                self.queued.done();
                drop(core);
                if let Some(tx) = batch.verdict {
                    // The request may have stopped waiting.
                    let _ = tx.send(Verdict::of(&out));
                }
                out
            }
            EngineWork::Publish(out) => {
                self.queued.done();
                out
            }
            EngineWork::Wake => return,
        };
        emit(&out, &self.telemetry, &mut self.sinks);
    }
}

fn emit(out: &Output, telemetry: &Telemetry, sinks: &mut Outputs) {
    telemetry.record_engine_drops(&out.dropped);
    for w in &out.windows {
        telemetry.publish_window(w);
    }
    if let Some(gauges) = &out.gauges {
        telemetry.publish_gauges(gauges);
    }
    for a in &out.anomalies {
        telemetry
            .anomalies
            .with_label_values(&[a.kind().name()])
            .inc();
    }
    if let Err(e) = sinks.write(&out.anomalies) {
        tracing::error!(error = %e, "writing anomaly events failed");
    }
}

/// Loads, starts and serves until a signal. The body of `memdrift run`.
pub async fn run(pipeline: Pipeline) -> Result<()> {
    for w in &pipeline.warnings {
        tracing::warn!("{w}");
    }
    let stop = stop_signal();
    let service = Service::start(pipeline).await?;
    tracing::info!(
        grpc = ?service.grpc_addr,
        http = ?service.http_addr,
        prometheus = ?service.prometheus_addr,
        "memdrift is running"
    );
    service.run_until(stop).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine thread sleeps until work comes or its next tick (an hour away here): shutdown must wake it,
    /// not wait for the tick.
    #[tokio::test]
    async fn shutdown_wakes_an_engine_thread_asleep_until_its_next_tick() {
        let dir = std::env::temp_dir().join(format!("memdrift-wake-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let jsonl = dir.join("anomalies.jsonl");
        let text = format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc: {{ endpoint: 127.0.0.1:0 }}\n\
             processors:\n  extract: {{}}\n  windows: {{ size: 2h, step: 1h, allowed_lateness: 1s, source_idle: 2h, idle_timeout: 3h }}\n\
             exporters:\n  jsonl: {{ path: \"{}\" }}\n\
             service:\n  pipelines:\n    memory: {{ receivers: [otlp], processors: [extract, windows], exporters: [jsonl] }}\n",
            jsonl.display()
        );
        let pipeline = Pipeline::parse("wake.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
        let service = Service::start(pipeline).await.expect("service starts");
        // Long enough for the engine thread to be asleep in its wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stopped = tokio::time::timeout(Duration::from_secs(60), service.shutdown()).await;
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            matches!(stopped, Ok(Ok(()))),
            "shutdown did not finish: {stopped:?}"
        );
    }
}
