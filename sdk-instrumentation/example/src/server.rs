//! The HTTP API: `POST /v1/completions` runs the model under a memspan request span, `GET /healthz` reports
//! liveness and the size of what the switches make the service hold on to.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use opentelemetry::KeyValue;
use serde::{Deserialize, Serialize};

use crate::model::{self, Completion, TinyLm, MAX_TOKENS, MODEL_NAME};
use crate::patterns::{self, BufferPool, ResponseCache};

/// The semantic-conventions `gen_ai.operation.name` for a prompt-in, text-out completion.
pub const OPERATION: &str = "text_completion";
/// Prompts longer than this are refused (the model reads only the tail anyway).
const MAX_PROMPT_BYTES: usize = 64 * 1024;
const DEFAULT_MAX_TOKENS: usize = 16;

/// What the switches turn on; the defaults are the well-behaved service.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    pub pool_no_reset: bool,
    pub unbounded_tasks: bool,
    pub growing_cache: bool,
    pub native_leak_bytes: usize,
    pub spread_factor: f64,
}

#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    model: Arc<TinyLm>,
    memspan: memspan::Memspan,
    cohort: Option<String>,
    behaviour: Behaviour,
    pool: BufferPool,
    cache: ResponseCache,
    /// Background tasks started by `--unbounded-tasks`, none of which ever ends.
    stuck_tasks: std::sync::atomic::AtomicU64,
}

impl App {
    pub fn new(
        model: TinyLm,
        memspan: memspan::Memspan,
        cohort: Option<String>,
        behaviour: Behaviour,
    ) -> App {
        App {
            inner: Arc::new(Inner {
                model: Arc::new(model),
                memspan,
                cohort,
                pool: BufferPool::new(!behaviour.pool_no_reset),
                cache: ResponseCache::new(behaviour.growing_cache),
                behaviour,
                stuck_tasks: Default::default(),
            }),
        }
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/completions", post(complete))
            .route("/healthz", get(healthz))
            .with_state(self)
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub prompt: String,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
}

fn default_max_tokens() -> usize {
    DEFAULT_MAX_TOKENS
}

#[derive(Debug, Deserialize, Serialize)]
pub struct CompletionResponse {
    pub model: String,
    pub text: String,
    pub usage: Usage,
    /// Served from the response cache (`--growing-cache`).
    pub cached: bool,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct Health {
    pub status: String,
    pub cohort: Option<String>,
    pub pool_retained_bytes: u64,
    pub cache_entries: usize,
    pub stuck_tasks: u64,
    pub native_leaked_bytes: u64,
}

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

async fn healthz(State(app): State<App>) -> Json<Health> {
    let inner = &app.inner;
    Json(Health {
        status: "ok".into(),
        cohort: inner.cohort.clone(),
        pool_retained_bytes: inner.pool.retained_bytes(),
        cache_entries: inner.cache.len(),
        stuck_tasks: inner.stuck_tasks.load(std::sync::atomic::Ordering::Relaxed),
        native_leaked_bytes: patterns::native_leaked_bytes(),
    })
}

async fn complete(
    State(app): State<App>,
    Json(req): Json<CompletionRequest>,
) -> Result<Json<CompletionResponse>, ApiError> {
    if req.prompt.len() > MAX_PROMPT_BYTES {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("prompt is longer than {MAX_PROMPT_BYTES} bytes"),
        ));
    }
    if req.max_tokens == 0 || req.max_tokens > MAX_TOKENS {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("max_tokens must be between 1 and {MAX_TOKENS}"),
        ));
    }
    let mut guard = app.inner.memspan.request(OPERATION, MODEL_NAME);
    guard.set_attribute(KeyValue::new(
        "gen_ai.request.max_tokens",
        req.max_tokens as i64,
    ));
    // The model has no stop token and reads a known tail of the prompt, so the usage is known before it runs;
    // `instrument` takes the guard, and this is the last moment it can be given.
    let input = model::prompt_window(req.prompt.len(), req.max_tokens) as u64;
    guard.record_tokens(input, req.max_tokens as u64);
    let inner = app.inner.clone();
    guard
        .instrument(serve(inner, req))
        .await
        .map(Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The request's own work; everything it allocates, here and in the tasks it starts through memspan's spawn
/// helpers, counts toward the request's `memspan.request.allocated`.
async fn serve(inner: Arc<Inner>, req: CompletionRequest) -> anyhow::Result<CompletionResponse> {
    let behaviour = &inner.behaviour;
    let tokens = model::prompt_window(req.prompt.len(), req.max_tokens) + req.max_tokens;
    let mut buf = inner.pool.take();
    patterns::fill_token_buffer(
        &mut buf,
        req.prompt.as_bytes(),
        patterns::token_buffer_len(tokens),
    );
    let workspace = patterns::workspace(patterns::workspace_len(
        tokens,
        behaviour.spread_factor,
        &mut rand::rng(),
    ));

    let (completion, cached) = match inner.cache.get(&req.prompt, req.max_tokens) {
        Some(hit) => (hit, true),
        None => {
            let model = inner.model.clone();
            let prompt = req.prompt.clone();
            let max_tokens = req.max_tokens;
            let completion: Completion =
                memspan::spawn_blocking(move || model.complete(&prompt, max_tokens)).await??;
            inner.cache.insert(&req.prompt, req.max_tokens, &completion);
            (completion, false)
        }
    };

    patterns::leak_native(behaviour.native_leak_bytes);
    if behaviour.unbounded_tasks {
        // A "fire and forget" follow-up that waits on something that never comes, holding a copy of the
        // request's buffers for ever.
        let held = buf.len();
        let text = completion.text.clone();
        inner
            .stuck_tasks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(memspan::spawn(async move {
            let held = (vec![0xa5u8; held], text);
            std::future::pending::<()>().await;
            drop(held);
        }));
    }
    inner.pool.give(buf);
    // Held across the model's run, as a decode workspace is, and released with the request.
    drop(workspace);

    Ok(CompletionResponse {
        model: MODEL_NAME.into(),
        text: completion.text,
        usage: Usage {
            input_tokens: completion.input_tokens,
            output_tokens: completion.output_tokens,
        },
        cached,
    })
}
