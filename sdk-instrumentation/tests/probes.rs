//! Probes on fake cgroup trees and on this machine's real files.

use std::fs;
use std::path::Path;
use std::time::Duration;

use memspan::probe::cgroup::{
    locate, parse_limit, parse_proc_cgroup, CgroupLocation, CgroupProbe, CgroupVersion,
};
use memspan::probe::{Probe, Readings, RssProbe};

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    if let Some(dir) = p.parent() {
        fs::create_dir_all(dir).expect("mkdir");
    }
    fs::write(p, content).expect("write");
}

const MOUNTINFO_V2: &str = "\
24 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

const MOUNTINFO_V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

#[test]
fn v2_nested_limit_is_the_minimum_over_ancestors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(root, "sys/fs/cgroup/kubepods/memory.max", "1073741824\n");
    write(root, "sys/fs/cgroup/kubepods/pod1/memory.max", "max\n");
    write(
        root,
        "sys/fs/cgroup/kubepods/pod1/app/memory.max",
        "2147483648\n",
    );
    write(
        root,
        "sys/fs/cgroup/kubepods/pod1/app/memory.current",
        "52428800\n",
    );
    let loc = locate("0::/kubepods/pod1/app\n", MOUNTINFO_V2, root).expect("v2 found");
    assert_eq!(loc.version, CgroupVersion::V2);
    assert_eq!(loc.dir, root.join("sys/fs/cgroup/kubepods/pod1/app"));
    let mem = loc.read();
    assert_eq!(
        mem.limit,
        Some(1 << 30),
        "the parent's 1 GiB caps the child's 2 GiB"
    );
    assert_eq!(mem.usage, Some(50 << 20));
}

#[test]
fn v2_unlimited_everywhere_leaves_the_limit_absent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(root, "sys/fs/cgroup/svc/memory.max", "max\n");
    write(root, "sys/fs/cgroup/svc/memory.current", "4096\n");
    let loc = locate("0::/svc\n", MOUNTINFO_V2, root).expect("v2 found");
    assert_eq!(loc.read().limit, None);
    assert_eq!(loc.read().usage, Some(4096));
}

#[test]
fn v1_is_the_fallback_when_the_v2_hierarchy_has_no_memory_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    // A hybrid host: the unified hierarchy exists but has no memory controller.
    fs::create_dir_all(root.join("sys/fs/cgroup/unified")).expect("mkdir");
    write(
        root,
        "sys/fs/cgroup/memory/memory.limit_in_bytes",
        "9223372036854771712\n",
    );
    write(
        root,
        "sys/fs/cgroup/memory/docker/memory.limit_in_bytes",
        "536870912\n",
    );
    write(
        root,
        "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
        "9223372036854771712\n",
    );
    write(
        root,
        "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes",
        "1048576\n",
    );
    let proc_cgroup = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n";
    let loc = locate(proc_cgroup, MOUNTINFO_V1, root).expect("v1 found");
    assert_eq!(loc.version, CgroupVersion::V1);
    let mem = loc.read();
    assert_eq!(mem.limit, Some(512 << 20));
    assert_eq!(mem.usage, Some(1 << 20));
}

#[test]
fn v1_mount_root_below_the_cgroup_path_maps_to_the_mount_point() {
    // Inside a container: the host path is /docker/abc, and only that subtree is mounted (mount root field).
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(
        root,
        "sys/fs/cgroup/memory/memory.limit_in_bytes",
        "268435456\n",
    );
    write(root, "sys/fs/cgroup/memory/memory.usage_in_bytes", "1000\n");
    let mountinfo =
        "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n";
    let loc = locate("9:memory:/docker/abc\n", mountinfo, root).expect("found");
    assert_eq!(loc.dir, root.join("sys/fs/cgroup/memory"));
    assert_eq!(loc.read().limit, Some(256 << 20));
}

#[test]
fn missing_files_mean_no_location_and_no_reading() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert_eq!(locate("0::/x\n", MOUNTINFO_V2, tmp.path()), None);
    assert_eq!(locate("4:memory:/x\n", MOUNTINFO_V1, tmp.path()), None);
    assert_eq!(locate("", "", tmp.path()), None);
    let probe = CgroupProbe::start(None, Duration::from_secs(60));
    let mut r = Readings::default();
    probe.read(&mut r);
    assert_eq!(r, Readings::default(), "an absent probe fills nothing");
}

#[test]
fn limit_values_parse_with_unlimited_as_absent() {
    assert_eq!(parse_limit("max\n", CgroupVersion::V2), None);
    assert_eq!(parse_limit("1024\n", CgroupVersion::V2), Some(1024));
    assert_eq!(
        parse_limit("9223372036854771712\n", CgroupVersion::V1),
        None
    );
    assert_eq!(parse_limit("1024", CgroupVersion::V1), Some(1024));
    assert_eq!(parse_limit("garbage", CgroupVersion::V1), None);
    let p = parse_proc_cgroup("12:cpu,memory:/a\n0::/b\nbroken line\n");
    assert_eq!(p.v1_memory.as_deref(), Some("/a"));
    assert_eq!(p.v2.as_deref(), Some("/b"));
}

#[test]
fn cgroup_refresh_picks_up_a_changed_limit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(root, "sys/fs/cgroup/svc/memory.max", "1000000\n");
    let loc = locate("0::/svc\n", MOUNTINFO_V2, root).expect("found");
    let probe = CgroupProbe::start(Some(loc), Duration::from_millis(5));
    assert_eq!(probe.limit(), Some(1_000_000), "read at start");
    write(root, "sys/fs/cgroup/svc/memory.max", "2000000\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while probe.limit() != Some(2_000_000) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        probe.limit(),
        Some(2_000_000),
        "refreshed in the background"
    );
}

/// Whatever this machine is (v2, v1, or no memory cgroup), the probe agrees with an independent reading of the
/// files: the limit named in /proc/self/cgroup, walked up by hand.
#[test]
fn cgroup_limit_matches_the_files_on_this_machine() {
    let proc_cgroup = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let loc = CgroupLocation::discover();
    let expected = independent_limit(&proc_cgroup);
    match &loc {
        Some(l) => assert_eq!(l.read().limit, expected, "location {l:?}"),
        None => assert_eq!(
            expected, None,
            "no location found but the files name a limit"
        ),
    }
    let probe = CgroupProbe::start_default();
    assert_eq!(probe.limit(), expected);
    if let Some(l) = loc {
        let usage = l.read().usage.expect("usage readable where the cgroup is");
        assert!(usage > 0);
    }
}

/// The limit by a second route: mount points assumed at their usual places, each ancestor's file read.
fn independent_limit(proc_cgroup: &str) -> Option<u64> {
    let mut best: Option<u64> = None;
    let mut consider = |path: &Path, file: &str, version: CgroupVersion| {
        let mut dir = Some(path);
        while let Some(d) = dir {
            if let Ok(t) = fs::read_to_string(d.join(file)) {
                if let Some(v) = parse_limit(&t, version) {
                    best = Some(best.map_or(v, |b| b.min(v)));
                }
            }
            if d.ends_with("memory") || d == Path::new("/sys/fs/cgroup") {
                break;
            }
            dir = d.parent();
        }
    };
    for line in proc_cgroup.lines() {
        let parts: Vec<&str> = line.splitn(3, ':').collect();
        if parts.len() != 3 {
            continue;
        }
        if parts[1].split(',').any(|c| c == "memory") {
            let base = Path::new("/sys/fs/cgroup/memory").join(parts[2].trim_start_matches('/'));
            if base.join("memory.limit_in_bytes").exists()
                && !Path::new("/sys/fs/cgroup/memory.max").exists()
            {
                consider(&base, "memory.limit_in_bytes", CgroupVersion::V1);
            }
        } else if parts[0] == "0" && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let base = Path::new("/sys/fs/cgroup").join(parts[2].trim_start_matches('/'));
            if base.join("memory.max").exists() {
                consider(&base, "memory.max", CgroupVersion::V2);
            }
        }
    }
    best
}

fn status_vm_rss() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn rss_is_positive_and_close_to_proc_status() {
    let probe = RssProbe::new().expect("statm readable on Linux");
    let a = status_vm_rss().expect("VmRSS");
    let rss = probe.rss().expect("rss");
    let b = status_vm_rss().expect("VmRSS");
    assert!(rss > 0);
    // statm and status read the same counters; other test threads may fault pages in between the reads, so allow
    // 4 MiB around the two status readings.
    let (lo, hi) = (a.min(b).saturating_sub(4 << 20), a.max(b) + (4 << 20));
    assert!((lo..=hi).contains(&rss), "statm {rss}, status {a}..{b}");
    let statm = probe.statm().expect("statm");
    assert!(statm.virtual_bytes >= statm.resident_bytes);
    let mut r = Readings::default();
    probe.read_start(&mut r);
    assert!(r.rss.is_some_and(|v| v > 0));
}

#[test]
fn shared_rss_reading_is_reused_within_its_age_and_fresh_at_age_zero() {
    let cached = RssProbe::new()
        .expect("statm")
        .with_max_age(Duration::from_secs(3600));
    let live = RssProbe::new().expect("statm").with_max_age(Duration::ZERO);
    let first = cached.rss_shared().expect("rss");
    // Touch 64 MiB so RSS moves well past anything other test threads do meanwhile.
    let block = std::hint::black_box(vec![1u8; 64 << 20]);
    let direct = live.rss_shared().expect("rss");
    assert!(
        direct >= first + (48 << 20),
        "fresh reading {direct} vs first {first}"
    );
    assert_eq!(cached.rss_shared(), Some(first), "reused within max_age");
    drop(block);
}
