//! The process-wide live-bytes counter follows a big allocation. Its own test binary, and its only test: other
//! tests allocating and freeing on parallel threads move the same counter.

use std::hint::black_box;

#[global_allocator]
static ALLOC: memspan::CountingAllocator = memspan::CountingAllocator::system();

#[test]
fn live_heap_bytes_follow_allocations() {
    let before = memspan::live_bytes().expect("counting allocator installed");
    let big = black_box(vec![1u8; 8 << 20]);
    let during = memspan::live_bytes().expect("installed");
    drop(big);
    // The test harness's own threads may still allocate a little, so only a loose bound holds: the 8 MiB block
    // shows up.
    assert!(
        during + (1 << 20) >= before + (8 << 20),
        "before {before}, during {during}"
    );
}
