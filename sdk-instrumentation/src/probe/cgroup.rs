//! The cgroup memory limit and usage, cgroup v2 first, v1 as the fallback.
//!
//! The parsers are pure functions over the text of `/proc/self/cgroup` and `/proc/self/mountinfo` plus a root
//! directory, so tests can lay out fake hierarchies in a temporary directory. The limit that matters is the
//! smallest one on the way from this process's cgroup up to the top of the mounted hierarchy: a parent's limit
//! caps every child even when the child itself says "max".

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{CachedValue, Probe, Readings};

/// v1 writes "unlimited" as the largest page-aligned signed 64-bit value (9223372036854771712) or close to it;
/// nothing real is above 2^62 bytes.
const V1_UNLIMITED_FLOOR: u64 = 1 << 62;

/// Which hierarchy the memory controller lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The unified hierarchy: `memory.max`, `memory.current`.
    V2,
    /// The legacy memory controller: `memory.limit_in_bytes`, `memory.usage_in_bytes`.
    V1,
}

/// Where this process's memory cgroup is, as a directory to read and the top of the hierarchy that is visible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLocation {
    /// v1 or v2.
    pub version: CgroupVersion,
    /// The process's own cgroup directory.
    pub dir: PathBuf,
    /// The mount point: the walk for ancestor limits stops here (inclusive).
    pub top: PathBuf,
}

/// One reading of the cgroup files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupMemory {
    /// The effective limit: the minimum over the cgroup and its ancestors; `None` when all are unlimited.
    pub limit: Option<u64>,
    /// The cgroup's own current usage.
    pub usage: Option<u64>,
}

/// The cgroup paths named in `/proc/self/cgroup`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    /// The unified-hierarchy path (`0::/path`).
    pub v2: Option<String>,
    /// The v1 memory controller's path (`N:memory:/path`, possibly with other controllers in the list).
    pub v1_memory: Option<String>,
}

/// Parses `/proc/self/cgroup`. Lines that do not fit the `id:controllers:path` shape are skipped.
pub fn parse_proc_cgroup(text: &str) -> ProcCgroup {
    let mut out = ProcCgroup::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            out.v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            out.v1_memory = Some(path.to_string());
        }
    }
    out
}

/// One line of `/proc/self/mountinfo`, the fields this module needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The root of the mount within its filesystem (field 4): for cgroups, the cgroup path the mount shows.
    pub root: String,
    /// Where it is mounted (field 5).
    pub mount_point: String,
    /// The filesystem type after the ` - ` separator.
    pub fstype: String,
    /// The super options (last field), comma separated.
    pub super_options: String,
}

/// Parses the cgroup mounts of `/proc/self/mountinfo`; other filesystems and malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split(' ');
            let root = l.nth(3)?;
            let mount_point = l.next()?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let _source = r.next()?;
            let super_options = r.next().unwrap_or("");
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(Mount {
                root: unescape_mountinfo(root),
                mount_point: unescape_mountinfo(mount_point),
                fstype: fstype.to_string(),
                super_options: super_options.to_string(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape_mountinfo(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let text = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Maps a cgroup path onto a mount: the part of the path below the mount's root, under the mount point, itself
/// under `root` (the filesystem root; a temporary directory in tests). A path outside the mount's root (a
/// container that sees its host's path but only its own subtree mounted) maps to the mount point itself.
fn cgroup_dir(root: &Path, mount: &Mount, cgroup_path: &str) -> PathBuf {
    let mount_root = mount.root.trim_end_matches('/');
    let below = cgroup_path
        .strip_prefix(mount_root)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        .unwrap_or("");
    let top = join_abs(root, &mount.mount_point);
    join_abs(&top, below)
}

fn join_abs(base: &Path, abs: &str) -> PathBuf {
    let rel = abs.trim_start_matches('/');
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// Finds the memory cgroup from the two procfs texts: v2 when its directory has the memory files, else the v1
/// memory controller. `None` when neither is there (no cgroup memory accounting visible).
pub fn locate(proc_cgroup: &str, mountinfo: &str, root: &Path) -> Option<CgroupLocation> {
    let paths = parse_proc_cgroup(proc_cgroup);
    let mounts = parse_mountinfo(mountinfo);
    if let Some(path) = &paths.v2 {
        if let Some(m) = mounts.iter().find(|m| m.fstype == "cgroup2") {
            let dir = cgroup_dir(root, m, path);
            if dir.join("memory.max").exists() || dir.join("memory.current").exists() {
                return Some(CgroupLocation {
                    version: CgroupVersion::V2,
                    dir,
                    top: join_abs(root, &m.mount_point),
                });
            }
        }
    }
    let path = paths.v1_memory.as_ref()?;
    let m = mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory"))?;
    let dir = cgroup_dir(root, m, path);
    dir.join("memory.limit_in_bytes")
        .exists()
        .then(|| CgroupLocation {
            version: CgroupVersion::V1,
            dir,
            top: join_abs(root, &m.mount_point),
        })
}

/// A limit file's value: `None` for unlimited ("max" in v2, a near-2^63 value in v1) or unreadable.
pub fn parse_limit(text: &str, version: CgroupVersion) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    let v: u64 = t.parse().ok()?;
    match version {
        CgroupVersion::V1 if v >= V1_UNLIMITED_FLOOR => None,
        _ => Some(v),
    }
}

impl CgroupLocation {
    /// This process's location on the running machine.
    pub fn discover() -> Option<CgroupLocation> {
        let proc_cgroup = fs::read_to_string("/proc/self/cgroup").ok()?;
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        locate(&proc_cgroup, &mountinfo, Path::new("/"))
    }

    fn files(&self) -> (&'static str, &'static str) {
        match self.version {
            CgroupVersion::V2 => ("memory.max", "memory.current"),
            CgroupVersion::V1 => ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        }
    }

    /// Reads the effective limit (minimum over the cgroup and its ancestors up to the mount point) and usage.
    pub fn read(&self) -> CgroupMemory {
        let (limit_file, usage_file) = self.files();
        let mut limit: Option<u64> = None;
        let mut dir = self.dir.as_path();
        loop {
            if let Ok(text) = fs::read_to_string(dir.join(limit_file)) {
                if let Some(v) = parse_limit(&text, self.version) {
                    limit = Some(limit.map_or(v, |l| l.min(v)));
                }
            }
            if dir == self.top {
                break;
            }
            match dir.parent() {
                Some(parent) if parent.starts_with(&self.top) => dir = parent,
                _ => break,
            }
        }
        let usage = fs::read_to_string(self.dir.join(usage_file))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        CgroupMemory { limit, usage }
    }
}

#[derive(Debug)]
struct Shared {
    location: Option<CgroupLocation>,
    limit: CachedValue,
}

/// The cgroup memory limit, read at start and refreshed by a background thread, never on the request path.
#[derive(Debug, Clone)]
pub struct CgroupProbe {
    shared: Arc<Shared>,
}

/// How often the limit is re-read: limits change only when an operator resizes the container.
const REFRESH: Duration = Duration::from_secs(10);

impl CgroupProbe {
    /// The probe for this process's own cgroup (reads nothing where no memory cgroup is visible).
    pub fn start_default() -> CgroupProbe {
        CgroupProbe::start(CgroupLocation::discover(), REFRESH)
    }

    /// A probe over a given location, refreshed every `interval` by a thread that ends once the probe is gone.
    pub fn start(location: Option<CgroupLocation>, interval: Duration) -> CgroupProbe {
        let shared = Arc::new(Shared {
            location,
            limit: CachedValue::absent(),
        });
        refresh(&shared);
        if shared.location.is_some() {
            let weak = Arc::downgrade(&shared);
            let spawned = std::thread::Builder::new()
                .name("memspan-cgroup".into())
                .spawn(move || refresh_loop(weak, interval));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "memspan: cannot start the cgroup refresh thread; the limit stays as read at start");
            }
        }
        CgroupProbe { shared }
    }

    /// The location this probe reads, if any.
    pub fn location(&self) -> Option<&CgroupLocation> {
        self.shared.location.as_ref()
    }

    /// The cached effective limit.
    pub fn limit(&self) -> Option<u64> {
        self.shared.limit.get()
    }

    /// The cgroup's usage, read now (for the metrics reader, off the request path).
    pub fn usage(&self) -> Option<u64> {
        self.shared.location.as_ref().and_then(|l| l.read().usage)
    }
}

fn refresh(shared: &Shared) {
    if let Some(loc) = &shared.location {
        shared.limit.set(loc.read().limit);
    }
}

fn refresh_loop(weak: Weak<Shared>, interval: Duration) {
    loop {
        std::thread::sleep(interval);
        match weak.upgrade() {
            Some(shared) => refresh(&shared),
            None => return,
        }
    }
}

impl Probe for CgroupProbe {
    fn name(&self) -> &'static str {
        "cgroup"
    }
    fn read(&self, out: &mut Readings) {
        if let Some(limit) = self.limit() {
            out.limit = Some(limit);
        }
    }
}
