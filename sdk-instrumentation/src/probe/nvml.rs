//! GPU memory used by this process, from NVML. The library is loaded lazily on a background thread (NVML init
//! takes tens of milliseconds and each query a few microseconds), which then samples once per interval; where the
//! library or a device is missing the thread ends and the reading stays absent.

use std::sync::{Arc, Weak};
use std::time::Duration;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;

use super::{CachedValue, Probe, Readings};

/// Device memory this process holds, summed over every device, from NVML's list of running compute processes.
/// Absent without a driver, without a device, or where NVML reports other PIDs than ours (a container without
/// its host's PID namespace).
#[derive(Debug, Clone)]
pub struct NvmlProbe {
    used: Arc<CachedValue>,
}

const INTERVAL: Duration = Duration::from_secs(1);

impl NvmlProbe {
    /// Samples every second.
    pub fn start_default() -> NvmlProbe {
        NvmlProbe::start(INTERVAL)
    }

    /// Loads NVML and samples every `interval` on a background thread that ends once the probe is gone.
    pub fn start(interval: Duration) -> NvmlProbe {
        let used = Arc::new(CachedValue::absent());
        let weak = Arc::downgrade(&used);
        let spawned = std::thread::Builder::new()
            .name("memspan-nvml".into())
            .spawn(move || sampler(weak, interval));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "memspan: cannot start the NVML sampler; GPU memory stays absent");
        }
        NvmlProbe { used }
    }

    /// Reads NVML once, synchronously: for tests and tools, not the request path.
    pub fn read_now() -> Option<u64> {
        let nvml = Nvml::init().ok()?;
        used_by_pid(&nvml, std::process::id())
    }

    /// The last sampled value.
    pub fn used(&self) -> Option<u64> {
        self.used.get()
    }
}

fn used_by_pid(nvml: &Nvml, pid: u32) -> Option<u64> {
    let count = nvml.device_count().ok()?;
    let mut per_process = Vec::new();
    for i in 0..count {
        let Ok(device) = nvml.device_by_index(i) else {
            continue;
        };
        if let Ok(procs) = device.running_compute_processes() {
            per_process.extend(procs.into_iter().map(|p| (p.pid, p.used_gpu_memory)));
        }
    }
    sum_for_pid(&per_process, pid)
}

/// The process's total over its entries; absent when it has none with a known size.
pub(crate) fn sum_for_pid(procs: &[(u32, UsedGpuMemory)], pid: u32) -> Option<u64> {
    procs
        .iter()
        .filter(|(p, _)| *p == pid)
        .filter_map(|(_, used)| match used {
            UsedGpuMemory::Used(b) => Some(*b),
            UsedGpuMemory::Unavailable => None,
        })
        .fold(None, |acc, b| Some(acc.unwrap_or(0) + b))
}

fn sampler(weak: Weak<CachedValue>, interval: Duration) {
    let Ok(nvml) = Nvml::init() else { return };
    let pid = std::process::id();
    loop {
        match weak.upgrade() {
            Some(used) => used.set(used_by_pid(&nvml, pid)),
            None => return,
        }
        std::thread::sleep(interval);
    }
}

impl Probe for NvmlProbe {
    fn name(&self) -> &'static str {
        "nvml"
    }
    fn read(&self, out: &mut Readings) {
        if let Some(v) = self.used.get() {
            out.gpu_used = Some(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_pid_with_known_sizes_counts() {
        let procs = [
            (7, UsedGpuMemory::Used(100)),
            (8, UsedGpuMemory::Used(5)),
            (7, UsedGpuMemory::Used(20)),
            (7, UsedGpuMemory::Unavailable),
        ];
        assert_eq!(sum_for_pid(&procs, 7), Some(120));
        assert_eq!(sum_for_pid(&procs, 9), None);
        assert_eq!(sum_for_pid(&[(9, UsedGpuMemory::Unavailable)], 9), None);
    }

    #[test]
    fn absent_without_a_driver() {
        // This test asserts the behaviour of a machine without an NVIDIA driver (CI); with a driver the probe
        // is checked by the ignored test below.
        if Nvml::init().is_ok() {
            return;
        }
        assert_eq!(NvmlProbe::read_now(), None);
        let probe = NvmlProbe::start(Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(50));
        let mut r = Readings::default();
        probe.read(&mut r);
        assert_eq!(r.gpu_used, None);
    }

    #[test]
    #[ignore = "needs an NVIDIA driver and a process holding device memory"]
    fn present_with_a_driver() {
        assert!(NvmlProbe::read_now().is_some_and(|v| v > 0));
    }
}
