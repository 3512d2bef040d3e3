//! The Prometheus scrape endpoint: `GET /metrics` in the text exposition format, from a registry the service
//! fills. The process's own figures (`process_resident_memory_bytes`, ...) are registered here too, so memdrift's
//! own memory is watched like any other service's.

use std::net::SocketAddr;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};

/// Registers the process collector (RSS, CPU, open fds) on `registry`. Linux only; elsewhere a no-op.
pub fn register_process_metrics(registry: &Registry) -> prometheus::Result<()> {
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let _ = registry;
    Ok(())
}

/// Renders the registry in the text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// The router serving `/metrics`; memdrift serves it on its own bounded listener (`receivers::listener`).
pub fn router(registry: Registry) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let body = render(&registry);
            async move {
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                    body,
                )
                    .into_response()
            }
        }),
    )
}

/// Parses "host:port" for the endpoint, with a message that names the setting.
pub fn parse_endpoint(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|e| format!("prometheus endpoint {s:?} is not host:port ({e}); e.g. 0.0.0.0:9464"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_counters_and_process_memory() {
        let registry = Registry::new();
        let c =
            prometheus::IntCounter::new("memdrift_test_total", "a test counter").expect("valid");
        registry.register(Box::new(c.clone())).expect("registers");
        c.inc_by(3);
        register_process_metrics(&registry).expect("process metrics");
        let text = render(&registry);
        assert!(text.contains("memdrift_test_total 3"), "{text}");
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
