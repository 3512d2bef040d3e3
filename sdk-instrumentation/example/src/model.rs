//! A tiny byte-level language model built in code: one transformer block (single-head causal attention and an
//! MLP) over 256 byte tokens, with weights drawn from a seeded generator, so the service needs no download and
//! every run answers the same prompt with the same text. Greedy decoding with a key/value cache keeps a request
//! to a few milliseconds in release builds while its tensors still grow with the prompt and the answer, which
//! gives per-request memory a natural spread.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The name the spans carry as `gen_ai.request.model`.
pub const MODEL_NAME: &str = "tiny-byte-lm";
/// Byte tokens.
const VOCAB: usize = 256;
const DIM: usize = 64;
const HIDDEN: usize = 4 * DIM;
/// Positions the model knows; the prompt is cut to its last `CONTEXT - max_tokens` bytes.
pub const CONTEXT: usize = 256;
/// The most tokens one request may ask for (half the context, so a prompt always keeps room).
pub const MAX_TOKENS: usize = CONTEXT / 2;
/// Answers are restricted to printable ASCII so they read as text and always form valid UTF-8.
const PRINTABLE_FIRST: usize = 0x20;
const PRINTABLE_COUNT: usize = 0x7f - 0x20;
const SEED: u64 = 0x006d_656d_7370_616e;

/// The text of one completion and what it cost in tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub text: String,
    /// Prompt bytes the model actually read (after cutting to the context).
    pub input_tokens: u64,
    pub output_tokens: u64,
}

pub struct TinyLm {
    tokens: Embedding,
    positions: Tensor,
    norm_attn: Tensor,
    norm_mlp: Tensor,
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    up: Linear,
    down: Linear,
    head: Linear,
    device: Device,
}

/// Keys and values of the positions already seen, so each new token costs one row rather than the whole
/// sequence again.
#[derive(Default)]
struct KvCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
}

/// How many prompt bytes the model reads for a request asking for `max_tokens`: the answer must fit too.
pub fn prompt_window(prompt_len: usize, max_tokens: usize) -> usize {
    prompt_len.min(CONTEXT - max_tokens.min(MAX_TOKENS))
}

impl TinyLm {
    pub fn new() -> Result<TinyLm> {
        let device = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(SEED);
        let mut uniform = |rows: usize, cols: usize, scale: f32| -> Result<Tensor> {
            let data: Vec<f32> = (0..rows * cols)
                .map(|_| rng.random_range(-scale..scale))
                .collect();
            Tensor::from_vec(data, (rows, cols), &device)
        };
        // Uniform with the fan-in scale keeps activations of order one through the block without training.
        let mut linear = |inputs: usize, outputs: usize| -> Result<Linear> {
            let scale = 1.0 / (inputs as f32).sqrt();
            let weight = uniform(outputs, inputs, scale)?;
            let bias = uniform(1, outputs, scale)?.squeeze(0)?;
            Ok(Linear::new(weight, Some(bias)))
        };
        let query = linear(DIM, DIM)?;
        let key = linear(DIM, DIM)?;
        let value = linear(DIM, DIM)?;
        let out = linear(DIM, DIM)?;
        let up = linear(DIM, HIDDEN)?;
        let down = linear(HIDDEN, DIM)?;
        let head = linear(DIM, VOCAB)?;
        let tokens = Embedding::new(uniform(VOCAB, DIM, 1.0)?, DIM);
        let positions = (uniform(CONTEXT, DIM, 1.0)? * 0.5)?;
        let ones = Tensor::ones(DIM, DType::F32, &device)?;
        Ok(TinyLm {
            tokens,
            positions,
            norm_attn: ones.clone(),
            norm_mlp: ones,
            query,
            key,
            value,
            out,
            up,
            down,
            head,
            device,
        })
    }

    /// Greedy decoding of exactly `max_tokens` tokens (clamped to [`MAX_TOKENS`]): the model has no stop
    /// token, so the answer's length is what the caller asked for.
    pub fn complete(&self, prompt: &str, max_tokens: usize) -> Result<Completion> {
        let max_tokens = max_tokens.min(MAX_TOKENS);
        let bytes = prompt.as_bytes();
        let window = prompt_window(bytes.len(), max_tokens);
        let mut ids: Vec<u32> = bytes[bytes.len() - window..]
            .iter()
            .map(|&b| u32::from(b))
            .collect();
        if ids.is_empty() {
            // An empty prompt still needs one position to predict from.
            ids.push(u32::from(b'\n'));
        }
        let input_tokens = window as u64;
        let mut cache = KvCache::default();
        let mut text = String::with_capacity(max_tokens);
        let mut offset = 0;
        let mut feed = ids;
        for step in 0..max_tokens {
            let next = self.next_token(&feed, offset, &mut cache)?;
            text.push(char::from(next));
            offset += feed.len();
            if step + 1 < max_tokens {
                feed = vec![u32::from(next)];
            }
        }
        Ok(Completion {
            text,
            input_tokens,
            output_tokens: max_tokens as u64,
        })
    }

    /// Runs `ids` (at positions `offset..`) through the model and returns the most likely printable byte after
    /// the last of them.
    fn next_token(&self, ids: &[u32], offset: usize, cache: &mut KvCache) -> Result<u8> {
        let n = ids.len();
        let input = Tensor::new(ids, &self.device)?;
        let x = self
            .tokens
            .forward(&input)?
            .add(&self.positions.narrow(0, offset, n)?)?;
        let x = self.block(&x, offset, cache)?;
        let last = x.narrow(0, n - 1, 1)?;
        let logits = self.head.forward(&last)?.squeeze(0)?;
        let best = logits
            .narrow(0, PRINTABLE_FIRST, PRINTABLE_COUNT)?
            .argmax(0)?
            .to_scalar::<u32>()? as usize;
        // `best` indexes the 95 printable bytes, so the sum stays below 0x7f.
        Ok((PRINTABLE_FIRST + best) as u8)
    }

    fn block(&self, x: &Tensor, offset: usize, cache: &mut KvCache) -> Result<Tensor> {
        let n = x.dim(0)?;
        let h = candle_nn::ops::rms_norm(x, &self.norm_attn, 1e-5)?;
        let q = self.query.forward(&h)?;
        let mut k = self.key.forward(&h)?;
        let mut v = self.value.forward(&h)?;
        if let (Some(past_k), Some(past_v)) = (cache.keys.take(), cache.values.take()) {
            k = Tensor::cat(&[&past_k, &k], 0)?;
            v = Tensor::cat(&[&past_v, &v], 0)?;
        }
        cache.keys = Some(k.clone());
        cache.values = Some(v.clone());
        let scores = (q.matmul(&k.t()?)? / (DIM as f64).sqrt())?;
        let scores = if n > 1 {
            scores.broadcast_add(&causal_mask(n, k.dim(0)?, offset, &self.device)?)?
        } else {
            scores
        };
        let attended = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
        let x = (x + self.out.forward(&attended)?)?;
        let h = candle_nn::ops::rms_norm(&x, &self.norm_mlp, 1e-5)?;
        let mlp = self.down.forward(&self.up.forward(&h)?.gelu()?)?;
        x + mlp
    }
}

/// Row `i` (position `offset + i`) may look at columns up to its own position.
fn causal_mask(rows: usize, cols: usize, offset: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..rows)
        .flat_map(|i| {
            (0..cols).map(move |j| {
                if j <= offset + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(data, (rows, cols), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_deterministic_printable_and_as_long_as_asked() {
        let model = TinyLm::new().expect("model builds");
        let a = model.complete("The quick brown fox", 12).expect("runs");
        let b = TinyLm::new()
            .expect("model builds")
            .complete("The quick brown fox", 12)
            .expect("runs");
        assert_eq!(a, b);
        assert_eq!(a.output_tokens, 12);
        assert_eq!(a.text.len(), 12);
        assert_eq!(a.input_tokens, 19);
        assert!(a.text.bytes().all(|c| (0x20..0x7f).contains(&c)), "{a:?}");
    }

    #[test]
    fn the_prompt_is_cut_to_leave_room_for_the_answer() {
        let model = TinyLm::new().expect("model builds");
        let long = "x".repeat(CONTEXT * 2);
        let c = model.complete(&long, MAX_TOKENS + 50).expect("runs");
        assert_eq!(c.output_tokens, MAX_TOKENS as u64);
        assert_eq!(c.input_tokens, (CONTEXT - MAX_TOKENS) as u64);
        let empty = model.complete("", 3).expect("an empty prompt works");
        assert_eq!((empty.input_tokens, empty.output_tokens), (0, 3));
    }

    #[test]
    fn the_cache_gives_the_same_answer_as_the_full_sequence() {
        // Decoding with the key/value cache must match rerunning the whole sequence each step.
        let model = TinyLm::new().expect("model builds");
        let prompt: Vec<u32> = b"abc def".iter().map(|&b| u32::from(b)).collect();
        let cached = model.complete("abc def", 5).expect("runs");
        let mut seq = prompt;
        let mut full = String::new();
        for _ in 0..5 {
            let next = model
                .next_token(&seq, 0, &mut KvCache::default())
                .expect("runs");
            full.push(char::from(next));
            seq.push(u32::from(next));
        }
        assert_eq!(cached.text, full);
    }
}
