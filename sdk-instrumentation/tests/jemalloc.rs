//! jemalloc statistics from the background sampler, with jemalloc under the counting allocator.

use std::hint::black_box;
use std::time::{Duration, Instant};

use memspan::probe::{JemallocProbe, Probe, Readings};
use memspan::{CountingAllocator, Jemalloc};

#[global_allocator]
static ALLOC: CountingAllocator<Jemalloc> = CountingAllocator::new(Jemalloc);

fn read(p: &JemallocProbe) -> Readings {
    let mut r = Readings::default();
    p.read(&mut r);
    r
}

#[test]
fn sampler_reports_allocated_resident_retained_and_follows_a_big_allocation() {
    let probe = JemallocProbe::start(Duration::from_millis(5));
    let before = read(&probe);
    let allocated = before.heap_allocated.expect("stats.allocated");
    assert!(allocated > 0);
    assert!(
        before.heap_resident.is_some_and(|r| r >= allocated),
        "{before:?}"
    );
    assert!(before.heap_retained.is_some());

    let block = black_box(vec![1u8; 64 << 20]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut now = read(&probe);
    while now.heap_allocated.unwrap_or(0) < allocated + (64 << 20) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        now = read(&probe);
    }
    assert!(
        now.heap_allocated.unwrap_or(0) >= allocated + (64 << 20),
        "{now:?} after {before:?}"
    );
    // The counting allocator above jemalloc sees the same block.
    assert!(memspan::live_bytes().is_some_and(|l| l >= 64 << 20));
    drop(block);
}
