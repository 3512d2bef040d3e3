//! The gate over HTTP: the verdict for scripts and Argo Rollouts' `web` provider, and Flagger's webhooks.
//!
//! - `GET /v1/gate?service=S&baseline=B&canary=C[&since=T]`, or `POST /v1/gate` with the same fields as JSON:
//!   200 with the verdict for every decision, fail included (Argo's web provider takes any other status for an
//!   error); 400 with `{"error": ...}` for a malformed question. `since` is RFC 3339 or Unix seconds.
//! - `POST /v1/flagger/{pre-rollout,rollout,confirm-promotion,rollback,event}`: Flagger's webhook payload
//!   (`name`, `namespace`, `phase`, `checksum`, `metadata`). The service is `metadata.service` or else `name`;
//!   the baseline cohort `metadata.baseline` or else `<name>-primary`; the canary `metadata.canary` or else
//!   `<name>` (Flagger's primary pods carry `app: <name>-primary`, the canary's `app: <name>`). Flagger reads
//!   2xx as "go on" and anything else as a failed check: `pre-rollout` answers 409 until baseline data has been
//!   seen, `rollout` 409 on `fail`, `confirm-promotion` 200 only on `pass`, `rollback` 200 (roll back now) only
//!   on `fail`, and `event` records the canary's start (its first `Progressing` event per checksum) and answers
//!   202.
//! - `GET /healthz`: 200.
//!
//! The handlers read the wall clock once, for a canary start Flagger reports without a timestamp; everything
//! else is the board's event time.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query as UrlQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use memdrift_anomaly::Interval;
use memdrift_exporter::anomaly::{parse_rfc3339, rfc3339};
use serde::Deserialize;
use serde_json::{json, Value};

use super::board::SharedBoard;
use super::verdict::{Decision, Query, Verdict};

/// The routes of the gate.
pub fn router(board: SharedBoard) -> Router {
    Router::new()
        .route("/v1/gate", get(gate_get).post(gate_post))
        .route("/v1/flagger/{hook}", post(flagger))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(board)
}

/// The question as a URL's query or a JSON body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateParams {
    pub service: Option<String>,
    pub baseline: Option<String>,
    pub canary: Option<String>,
    /// RFC 3339 or Unix seconds (JSON: a string or a number).
    pub since: Option<Value>,
}

async fn gate_get(
    State(board): State<SharedBoard>,
    params: Result<UrlQuery<GateParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match params {
        Ok(UrlQuery(p)) => answer(&board, &p),
        Err(e) => bad_request(format!(
            "cannot read the query: {} (expected service=, baseline=, canary= and optionally since=)",
            e.body_text()
        )),
    }
}

async fn gate_post(
    State(board): State<SharedBoard>,
    body: Result<Json<GateParams>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(p)) => answer(&board, &p),
        Err(e) => bad_request(format!(
            "cannot read the body: {} (expected JSON with service, baseline, canary and optionally since)",
            e.body_text()
        )),
    }
}

fn answer(board: &SharedBoard, p: &GateParams) -> Response {
    match query_of(p) {
        Ok(q) => {
            let verdict = board.lock().verdict(&q);
            (StatusCode::OK, Json(render(&verdict))).into_response()
        }
        Err(message) => bad_request(message),
    }
}

/// Checks the question: every name present and non-empty, `since` a time.
pub fn query_of(p: &GateParams) -> Result<Query, String> {
    let field = |name: &str, v: &Option<String>| match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(format!(
            "missing {name}: ask e.g. /v1/gate?service=checkout&baseline=stable&canary=canary"
        )),
    };
    Ok(Query {
        service: field("service", &p.service)?,
        baseline: field("baseline", &p.baseline)?,
        canary: field("canary", &p.canary)?,
        since: match &p.since {
            None => None,
            Some(v) => Some(parse_time(v).ok_or_else(|| {
                format!(
                    "since {v} is not a time: give RFC 3339 (2026-05-01T12:00:00Z) or Unix seconds"
                )
            })?),
        },
    })
}

/// RFC 3339, or Unix seconds as a number or a string of digits; event-time ns.
fn parse_time(v: &Value) -> Option<u64> {
    let seconds = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) if s.trim().parse::<f64>().is_ok() => s.trim().parse::<f64>().ok()?,
        Value::String(s) => return parse_rfc3339(s.trim()),
        _ => return None,
    };
    (0.0..1e10)
        .contains(&seconds)
        .then_some((seconds * 1e9) as u64)
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

fn interval(i: &Interval) -> Value {
    json!({ "estimate": finite(i.value), "low": finite(i.low), "high": finite(i.high) })
}

/// JSON has no infinity or NaN: they are null.
fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

/// The verdict as the API's JSON.
pub fn render(v: &Verdict) -> Value {
    let spread: Vec<Value> = (v.spread.iter())
        .map(|s| {
            json!({
                "signal": s.signal.name(),
                "ratio": s.ratio.as_ref().map(interval),
                "equivalent": s.equivalent,
                "looks": s.looks,
                "baseline_samples": s.baseline_samples,
                "canary_samples": s.canary_samples,
                "finding": s.finding.map(|(sd, p)| json!({ "sd_ratio": interval(&sd), "p_value": finite(p) })),
            })
        })
        .collect();
    let forecast: Vec<Value> = (v.forecast.iter())
        .map(|f| {
            json!({
                "instance": f.instance,
                "time_to_limit_s": finite(f.time_to_limit_s),
                "interval": f.interval.as_ref().map(interval),
                "warning": f.warning,
            })
        })
        .collect();
    let leak: Vec<Value> = (v.leak.iter())
        .map(|l| {
            json!({
                "instance": l.instance,
                "signal": l.signal,
                "classification": l.classification,
                "growth_bytes_per_s": finite(l.growth_bytes_per_s),
                "p_value": finite(l.p_value),
            })
        })
        .collect();
    json!({
        "decision": v.decision.name(),
        "reasons": v.reasons,
        "service": v.query.service,
        "baseline": v.query.baseline,
        "canary": v.query.canary,
        "tolerance": v.tolerance,
        "confidence": v.confidence,
        "spread": spread,
        "forecast": forecast,
        "leak": leak,
        "samples": { "baseline": v.samples.0, "canary": v.samples.1 },
        "window": {
            "since": v.since.map(rfc3339),
            "until": v.until.map(rfc3339),
            "now": (v.now > 0).then(|| rfc3339(v.now)),
        },
    })
}

/// Flagger's webhook payload.
#[derive(Debug, Default, Deserialize)]
pub struct FlaggerPayload {
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub checksum: String,
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl FlaggerPayload {
    /// The question a Flagger canary asks: see the module docs for the mapping.
    pub fn query(&self) -> Query {
        let meta = |k: &str| {
            self.metadata
                .get(k)
                .filter(|v| !v.trim().is_empty())
                .cloned()
        };
        Query {
            service: meta("service").unwrap_or_else(|| self.name.clone()),
            baseline: meta("baseline").unwrap_or_else(|| format!("{}-primary", self.name)),
            canary: meta("canary").unwrap_or_else(|| self.name.clone()),
            since: None,
        }
    }
}

/// What a Flagger hook answers, given the verdict.
pub fn flagger_status(hook: &str, v: &Verdict, baseline_seen: bool) -> Option<StatusCode> {
    let ok = |yes: bool| {
        if yes {
            StatusCode::OK
        } else {
            StatusCode::CONFLICT
        }
    };
    Some(match hook {
        "pre-rollout" => ok(baseline_seen),
        "rollout" => ok(v.decision != Decision::Fail),
        "confirm-promotion" => ok(v.decision == Decision::Pass),
        "rollback" => ok(v.rollback),
        "event" => StatusCode::ACCEPTED,
        _ => return None,
    })
}

const HOOKS: &str = "pre-rollout, rollout, confirm-promotion, rollback, event";

async fn flagger(
    State(board): State<SharedBoard>,
    Path(hook): Path<String>,
    body: Result<Json<FlaggerPayload>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let payload = match body {
        Ok(Json(p)) if !p.name.trim().is_empty() => p,
        Ok(_) => return bad_request("Flagger's payload has no name".into()),
        Err(e) => {
            return bad_request(format!(
                "cannot read Flagger's payload: {} (expected JSON with name, namespace, phase, metadata)",
                e.body_text()
            ))
        }
    };
    let q = payload.query();
    let mut board = board.lock();
    if hook == "event" && payload.phase == "Progressing" {
        let at = payload
            .metadata
            .get("timestamp")
            .and_then(|ms| ms.trim().parse::<u64>().ok())
            .map(|ms| ms.saturating_mul(1_000_000))
            .unwrap_or_else(wall_clock_ns);
        board.record_start(&q.service, &q.canary, at, &payload.checksum);
    }
    let verdict = board.verdict(&q);
    let baseline_seen = board.has_cohort(&q.service, &q.baseline);
    drop(board);
    let Some(status) = flagger_status(&hook, &verdict, baseline_seen) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no Flagger hook {hook:?}: the hooks are {HOOKS}") })),
        )
            .into_response();
    };
    let mut body = render(&verdict);
    if hook == "pre-rollout" && !baseline_seen {
        body["reasons"] = json!([format!(
            "no data yet from baseline cohort {:?} of service {:?}",
            q.baseline, q.service
        )]);
    }
    (status, Json(body)).into_response()
}

fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64)
}
