//! `--selftest-requests N`: the service calls itself over HTTP, so a script gets a known number of instrumented
//! requests (and spans) without a load generator.

use std::net::SocketAddr;
use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::server::{CompletionRequest, CompletionResponse};

/// Requests in flight at once: enough that request attribution is exercised under concurrency.
const CONCURRENCY: usize = 4;

const WORDS: [&str; 24] = [
    "memory",
    "canary",
    "baseline",
    "tensor",
    "kernel",
    "buffer",
    "token",
    "cache",
    "request",
    "model",
    "latency",
    "spread",
    "window",
    "allocator",
    "heap",
    "resident",
    "leak",
    "growth",
    "batch",
    "prompt",
    "decode",
    "stream",
    "service",
    "instance",
];

/// What the run did, printed as one line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub sent: usize,
    pub ok: usize,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub elapsed_ms: u128,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "selftest: {} of {} requests ok, {} input tokens, {} output tokens, {} ms",
            self.ok, self.sent, self.input_tokens, self.output_tokens, self.elapsed_ms
        )
    }
}

/// The `index`-th request: a prompt of 1 to 40 words (unique through its index, so a response cache never
/// hits) and 4 to 32 tokens, so requests differ in size and in what they allocate.
pub fn request(index: usize) -> CompletionRequest {
    let mut rng = StdRng::seed_from_u64(index as u64);
    let words = rng.random_range(1..=40);
    let mut prompt = format!("request {index}:");
    for _ in 0..words {
        prompt.push(' ');
        prompt.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    CompletionRequest {
        prompt,
        max_tokens: rng.random_range(4..=32),
    }
}

pub async fn run(addr: SocketAddr, n: usize) -> anyhow::Result<Summary> {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/completions");
    let started = Instant::now();
    let results: Vec<anyhow::Result<CompletionResponse>> = stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let body = serde_json::to_vec(&request(i))?;
                let resp = client
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = resp.status();
                let bytes = resp.bytes().await?;
                anyhow::ensure!(
                    status.is_success(),
                    "request {i}: {status}: {}",
                    String::from_utf8_lossy(&bytes)
                );
                Ok(serde_json::from_slice(&bytes)?)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut summary = Summary {
        sent: n,
        elapsed_ms: started.elapsed().as_millis(),
        ..Summary::default()
    };
    for r in results {
        match r {
            Ok(resp) => {
                summary.ok += 1;
                summary.input_tokens += resp.usage.input_tokens;
                summary.output_tokens += resp.usage.output_tokens;
            }
            Err(e) => eprintln!("selftest: {e:#}"),
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_reproducible_unique_and_varied() {
        let reqs: Vec<CompletionRequest> = (0..40).map(request).collect();
        assert_eq!(request(7).prompt, reqs[7].prompt);
        let prompts: std::collections::HashSet<&str> =
            reqs.iter().map(|r| r.prompt.as_str()).collect();
        assert_eq!(prompts.len(), 40);
        let lens: Vec<usize> = reqs.iter().map(|r| r.prompt.len()).collect();
        assert!(lens.iter().max() > Some(&(3 * lens.iter().min().copied().unwrap_or(0))));
        assert!(reqs.iter().all(|r| (4..=32).contains(&r.max_tokens)));
    }
}
