//! memspan-example: a small instrumented inference service. It serves a tiny in-code language model over HTTP,
//! records each request's memory on an OpenTelemetry span with memspan, and exports to any OTLP endpoint
//! (memdrift, or a Collector in front of it). Switches reproduce the memory bugs memdrift is built to catch, so a
//! baseline and a canary can run side by side and the difference shows up in memdrift's output.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

mod model;
mod patterns;
mod selftest;
mod server;

/// Per-request attribution (`memspan.request.allocated` / `freed`) needs every allocation to pass through the
/// counting allocator.
#[global_allocator]
static ALLOC: memspan::CountingAllocator = memspan::CountingAllocator::system();

/// An instrumented inference service for trying memdrift.
///
/// Exports spans over OTLP as configured by the standard variables: OTEL_EXPORTER_OTLP_ENDPOINT,
/// OTEL_EXPORTER_OTLP_PROTOCOL (grpc | http/protobuf), OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES. Without a
/// collector it still serves; the exports just fail quietly.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// The A/B cohort every span carries as `memspan.cohort` (e.g. baseline, canary). memdrift compares the
    /// spread of memory between cohorts of one service.
    #[arg(long, env = "MEMSPAN_COHORT", value_name = "NAME")]
    cohort: Option<String>,

    /// Address to listen on; port 0 picks a free port. The bound address is printed as `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: SocketAddr,

    /// Return pooled token buffers without clearing or shrinking them: each request appends after the previous
    /// contents, so retained capacity creeps up (about 64 bytes per token per request). memdrift: a `leak` event
    /// classified `heap` (the `memspan.heap.allocated` floor rises) and a `growth` forecast.
    #[arg(long)]
    pool_no_reset: bool,

    /// Each request spawns a background task that holds a copy of its buffers and never ends. memdrift: heap
    /// and RSS rise with the request count, a `leak` event classified `heap` and a `growth` time-to-limit.
    #[arg(long)]
    unbounded_tasks: bool,

    /// Cache every response keyed by the full prompt, never evicted: unique prompts make it grow without
    /// bound. memdrift: a `leak` event classified `heap`, a `growth` forecast.
    #[arg(long)]
    growing_cache: bool,

    /// Each request mallocs this many bytes through libc, writes them so they become resident, and never frees
    /// them: off-heap, invisible to the Rust heap counters. memdrift: `memspan.rss.end` climbs while
    /// `memspan.heap.allocated` stays flat, a `leak` event classified `off_heap`.
    #[arg(long, default_value_t = 0, value_name = "N")]
    native_leak_bytes: usize,

    /// The canary variant: multiply each request's decode workspace (64 KiB per token, the bulk of its
    /// allocation) by a factor drawn uniformly from [1-F, 1+F] (0 <= F <= 1), widening the spread of
    /// per-request memory while its mean stays put. memdrift: a `spread_drift` event on
    /// `memspan.request.allocated` with an sd ratio above 1 against the baseline cohort.
    #[arg(long, default_value_t = 0.0, value_name = "F", value_parser = parse_spread)]
    spread_factor: f64,

    /// Start the server, send N requests to it over HTTP with varied prompts, print a one-line summary, flush
    /// the telemetry and exit (non-zero if any request failed). For scripts and tests.
    #[arg(long, value_name = "N")]
    selftest_requests: Option<usize>,
}

fn parse_spread(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err(format!("{f} is outside [0, 1]"))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Logs go to stderr, leaving stdout to the lines scripts read (`listening on`, the selftest summary).
    // memspan says once a minute when exports fail; the OpenTelemetry crates' own per-batch lines stay off
    // unless RUST_LOG asks for them.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("warn,{}", memspan::OTEL_INTERNAL_LOGS_OFF))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("memspan-example: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `OTEL_RESOURCE_ATTRIBUTES` already names `key`, which then wins over this binary's defaults.
fn resource_env_has(key: &str) -> bool {
    std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
        v.split(',')
            .any(|kv| kv.split('=').next().map(str::trim) == Some(key))
    })
}

fn telemetry(cohort: Option<&str>) -> anyhow::Result<memspan::Memspan> {
    let mut builder = memspan::Builder::from_env();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() && !resource_env_has("service.name") {
        builder = builder.service_name("memspan-example");
    }
    if !resource_env_has("service.version") {
        builder = builder.service_version(env!("CARGO_PKG_VERSION"));
    }
    if let Some(cohort) = cohort {
        // memspan puts it on the spans and on the resource, so the process metrics land in the same cohort.
        builder = builder.cohort(cohort);
    }
    Ok(builder.install_global()?)
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let memspan = telemetry(args.cohort.as_deref())?;
    let behaviour = server::Behaviour {
        pool_no_reset: args.pool_no_reset,
        unbounded_tasks: args.unbounded_tasks,
        growing_cache: args.growing_cache,
        native_leak_bytes: args.native_leak_bytes,
        spread_factor: args.spread_factor,
    };
    let app = server::App::new(
        model::TinyLm::new()?,
        memspan.clone(),
        args.cohort.clone(),
        behaviour,
    );
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    println!("listening on {addr}");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app.router())
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );
    let code = match args.selftest_requests {
        Some(n) => {
            let summary = selftest::run(addr, n).await?;
            println!("{summary}");
            if summary.ok == summary.sent {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        None => {
            shutdown_signal().await;
            ExitCode::SUCCESS
        }
    };
    let _ = stop.send(());
    server.await??;
    // The exporters flush over the network and may block; keep that off the async workers. A collector that
    // is down loses the last batch, which is worth a line but not a failed run: serving worked.
    if let Err(e) = tokio::task::spawn_blocking(move || memspan.shutdown()).await? {
        eprintln!("memspan-example: telemetry not fully flushed: {e}");
    }
    Ok(code)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent_and_checks_the_spread() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["x", "--spread-factor", "0.5", "--listen", "127.0.0.1:0"])
            .expect("valid");
        assert_eq!(a.spread_factor, 0.5);
        assert_eq!(a.listen.port(), 0);
        assert!(Args::try_parse_from(["x", "--spread-factor", "1.5"]).is_err());
        assert!(Args::try_parse_from(["x", "--spread-factor", "-0.1"]).is_err());
    }
}
