//! Process memory metrics, observed when the meter provider's reader collects (off the request path).
//!
//! Names: `process.memory.usage` and `process.memory.virtual` and `container.memory.usage` are semantic
//! convention names used with their defined meaning; everything memspan-specific stays under `memspan.*`.

use std::sync::Arc;

use opentelemetry::metrics::Meter;

use crate::probe::{CgroupProbe, Probe, Readings, RssProbe};

fn read_all(probes: &[Box<dyn Probe>]) -> Readings {
    let mut r = Readings::default();
    for p in probes {
        p.read(&mut r);
    }
    r
}

/// Registers the gauges on `meter`. Their callbacks live in the meter provider from then on (the instrument
/// handles are markers, nothing to keep).
pub(crate) fn register(
    meter: &Meter,
    probes: &Arc<[Box<dyn Probe>]>,
    cgroup: Option<CgroupProbe>,
    rss: Option<RssProbe>,
) {
    let gauge = |name: &'static str,
                 description: &'static str,
                 read: Box<dyn Fn() -> Option<u64> + Send + Sync>| {
        meter
            .u64_observable_gauge(name)
            .with_unit("By")
            .with_description(description)
            .with_callback(move |obs| {
                if let Some(v) = read() {
                    obs.observe(v, &[]);
                }
            })
            .build();
    };
    if let Some(rss) = rss.map(Arc::new) {
        let virt = Arc::clone(&rss);
        gauge(
            "process.memory.usage",
            "The amount of physical memory in use (RSS).",
            Box::new(move || rss.rss()),
        );
        gauge(
            "process.memory.virtual",
            "The amount of committed virtual memory.",
            Box::new(move || virt.statm().map(|s| s.virtual_bytes)),
        );
    }
    type Field = fn(&Readings) -> Option<u64>;
    let fields: [(&'static str, &'static str, Field); 5] = [
        (
            crate::attributes::HEAP_ALLOCATED,
            "Allocator live bytes.",
            |r| r.heap_allocated,
        ),
        (
            crate::attributes::HEAP_RESIDENT,
            "Allocator resident bytes.",
            |r| r.heap_resident,
        ),
        (
            crate::attributes::HEAP_RETAINED,
            "Allocator retained bytes.",
            |r| r.heap_retained,
        ),
        (
            crate::attributes::LIMIT,
            "The effective cgroup memory limit.",
            |r| r.limit,
        ),
        (
            crate::attributes::GPU_USED,
            "Device memory used by the process.",
            |r| r.gpu_used,
        ),
    ];
    for (name, description, field) in fields {
        let probes = Arc::clone(probes);
        gauge(
            name,
            description,
            Box::new(move || field(&read_all(&probes))),
        );
    }
    if let Some(cgroup) = cgroup {
        gauge(
            "container.memory.usage",
            "Memory usage of the container's cgroup.",
            Box::new(move || cgroup.usage()),
        );
    }
}
