//! The memory behaviours the switches turn on: each is the small, ordinary-looking code that causes a kind of
//! trouble memdrift is built to catch, next to the correct variant the service runs by default.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand::Rng;

use crate::model::Completion;

/// Free buffers kept for reuse; more than this and a returned buffer is dropped.
const POOL_MAX_FREE: usize = 32;
/// A returned buffer keeps at most this much capacity when the pool resets it.
const POOL_KEEP_CAPACITY: usize = 64 * 1024;

/// Scratch buffers reused across requests.
///
/// With `reset` a returned buffer is cleared and shrunk, so the pool's footprint stays near
/// `POOL_MAX_FREE * POOL_KEEP_CAPACITY`. Without it (`--pool-no-reset`) a buffer comes back as it was: the next
/// request appends its tokens after the previous contents, so each buffer's length and capacity creep up with
/// every use, the classic forgotten `clear()`.
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    reset: bool,
}

impl BufferPool {
    pub fn new(reset: bool) -> BufferPool {
        BufferPool {
            free: Mutex::new(Vec::new()),
            reset,
        }
    }

    pub fn take(&self) -> Vec<u8> {
        self.free
            .lock()
            .ok()
            .and_then(|mut free| free.pop())
            .unwrap_or_default()
    }

    pub fn give(&self, mut buf: Vec<u8>) {
        if self.reset {
            buf.clear();
            buf.shrink_to(POOL_KEEP_CAPACITY);
        }
        if let Ok(mut free) = self.free.lock() {
            if free.len() < POOL_MAX_FREE {
                free.push(buf);
            }
        }
    }

    /// Capacity held by the free buffers, in bytes.
    pub fn retained_bytes(&self) -> u64 {
        self.free
            .lock()
            .map(|free| free.iter().map(|b| b.capacity() as u64).sum())
            .unwrap_or(0)
    }
}

/// Bytes of pooled token buffer per token (prompt or answer): small, so a pool that is never reset leaks
/// slowly, the way such bugs do in production.
const TOKEN_BUFFER_PER_TOKEN: usize = 64;
/// Bytes of decode workspace per token (prompt or answer): the request-dependent bulk of a request's
/// allocation, of the same order as the model's own tensors, freed when the request ends.
const WORKSPACE_PER_TOKEN: usize = 64 * 1024;

/// The pooled token buffer a request of `tokens` tokens (prompt read plus answer) fills.
pub fn token_buffer_len(tokens: usize) -> usize {
    tokens * TOKEN_BUFFER_PER_TOKEN
}

/// The decode workspace a request of `tokens` tokens allocates. `spread` > 0 (`--spread-factor`) multiplies
/// it by a factor drawn uniformly from `[1 - spread, 1 + spread]`: the mean stays put while the spread across
/// requests widens, the change a canary's spread-drift test should catch before any mean-based alert.
pub fn workspace_len(tokens: usize, spread: f64, rng: &mut impl Rng) -> usize {
    let base = tokens * WORKSPACE_PER_TOKEN;
    if spread <= 0.0 {
        return base;
    }
    let factor = rng.random_range((1.0 - spread).max(0.0)..=1.0 + spread);
    (base as f64 * factor) as usize
}

/// A workspace of `len` bytes, written through so its pages are really touched.
pub fn workspace(len: usize) -> Vec<u8> {
    // A non-zero fill is a memset, where zeroes would come lazily mapped from `calloc`.
    vec![0x3c; len]
}

/// Writes `len` bytes derived from the prompt after whatever `buf` already holds: the request's code assumes
/// the pool handed it an empty buffer.
pub fn fill_token_buffer(buf: &mut Vec<u8>, prompt: &[u8], len: usize) {
    buf.reserve(len);
    let mut left = len;
    while left > 0 {
        let chunk = if prompt.is_empty() {
            &[0u8; 64][..left.min(64)]
        } else {
            &prompt[..left.min(prompt.len())]
        };
        buf.extend_from_slice(chunk);
        left -= chunk.len();
    }
}

/// Responses by the full prompt and token count. Unbounded on purpose when enabled (`--growing-cache`): unique
/// prompts make every entry a miss that is kept forever.
pub struct ResponseCache {
    entries: Option<Mutex<HashMap<(String, usize), Completion>>>,
}

impl ResponseCache {
    pub fn new(enabled: bool) -> ResponseCache {
        ResponseCache {
            entries: enabled.then(Default::default),
        }
    }

    pub fn get(&self, prompt: &str, max_tokens: usize) -> Option<Completion> {
        let entries = self.entries.as_ref()?.lock().ok()?;
        entries.get(&(prompt.to_owned(), max_tokens)).cloned()
    }

    pub fn insert(&self, prompt: &str, max_tokens: usize, completion: &Completion) {
        if let Some(Ok(mut entries)) = self.entries.as_ref().map(|m| m.lock()) {
            entries.insert((prompt.to_owned(), max_tokens), completion.clone());
        }
    }

    pub fn len(&self) -> usize {
        self.entries
            .as_ref()
            .and_then(|m| m.lock().ok().map(|e| e.len()))
            .unwrap_or(0)
    }
}

/// Bytes handed to `malloc` and never freed (`--native-leak-bytes`).
static NATIVE_LEAKED: AtomicU64 = AtomicU64::new(0);

/// Allocates `bytes` with the C allocator, writes every byte so the pages become resident, and never frees
/// them: RSS grows while the Rust heap (and the counting allocator) sees nothing, the signature of an off-heap
/// leak in a native library.
pub fn leak_native(bytes: usize) {
    if bytes == 0 {
        return;
    }
    // SAFETY: malloc returns either null (checked) or a block of at least `bytes` writable bytes, which we
    // fill entirely and then deliberately never free.
    unsafe {
        let block = libc::malloc(bytes).cast::<u8>();
        if block.is_null() {
            return;
        }
        std::ptr::write_bytes(block, 0x5a, bytes);
        // The pointer escapes, so the optimiser cannot drop an allocation it can prove is never read.
        std::hint::black_box(block);
    }
    NATIVE_LEAKED.fetch_add(bytes as u64, Ordering::Relaxed);
}

pub fn native_leaked_bytes() -> u64 {
    NATIVE_LEAKED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_reset_pool_hands_back_empty_bounded_buffers() {
        let pool = BufferPool::new(true);
        for _ in 0..5 {
            let mut buf = pool.take();
            assert!(buf.is_empty());
            fill_token_buffer(&mut buf, b"abc", 200_000);
            pool.give(buf);
        }
        assert!(pool.retained_bytes() <= POOL_KEEP_CAPACITY as u64);
    }

    #[test]
    fn a_pool_without_reset_grows_with_every_use() {
        let pool = BufferPool::new(false);
        let mut retained = Vec::new();
        for _ in 0..5 {
            let mut buf = pool.take();
            fill_token_buffer(&mut buf, b"abc", 10_000);
            pool.give(buf);
            retained.push(pool.retained_bytes());
        }
        assert!(retained.windows(2).all(|w| w[1] >= w[0]), "{retained:?}");
        assert!(retained[4] >= 50_000, "{retained:?}");
    }

    #[test]
    fn the_spread_factor_keeps_the_mean_and_widens_the_spread() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let base = workspace_len(100, 0.0, &mut rng);
        assert_eq!(base, 100 * WORKSPACE_PER_TOKEN);
        let n = 20_000;
        let draws: Vec<f64> = (0..n)
            .map(|_| workspace_len(100, 0.6, &mut rng) as f64 / base as f64)
            .collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let sd = (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        // U(0.4, 1.6): mean 1, sd 1.2 / sqrt(12) = 0.346; 20 000 draws put both within 0.01.
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        assert!((sd - 1.2 / 12f64.sqrt()).abs() < 0.01, "sd {sd}");
        assert!(draws.iter().all(|d| (0.4 - 1e-9..=1.6 + 1e-9).contains(d)));
    }

    #[test]
    fn token_buffers_repeat_the_prompt_and_workspaces_are_written() {
        let mut buf = b"old".to_vec();
        fill_token_buffer(&mut buf, b"abcd", 10);
        assert_eq!(buf, b"oldabcdabcdab");
        let mut empty = Vec::new();
        fill_token_buffer(&mut empty, b"", 100);
        assert_eq!(empty, vec![0u8; 100]);
        let w = workspace(5000);
        assert!(w.len() == 5000 && w.iter().all(|&b| b == 0x3c));
    }

    #[test]
    fn the_cache_keeps_only_when_enabled() {
        let c = Completion {
            text: "hi".into(),
            input_tokens: 3,
            output_tokens: 2,
        };
        let off = ResponseCache::new(false);
        off.insert("p", 2, &c);
        assert_eq!((off.get("p", 2), off.len()), (None, 0));
        let on = ResponseCache::new(true);
        on.insert("p", 2, &c);
        assert_eq!(on.get("p", 2), Some(c));
        assert_eq!(on.get("p", 3), None);
        assert_eq!(on.len(), 1);
    }

    #[test]
    fn native_leaks_are_counted() {
        let before = native_leaked_bytes();
        leak_native(4096);
        leak_native(0);
        assert_eq!(native_leaked_bytes() - before, 4096);
    }
}
