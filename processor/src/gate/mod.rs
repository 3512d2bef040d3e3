//! The rollout gate: "may this canary proceed?", answered per (service, baseline cohort, canary cohort) with one
//! of `continue`, `pass` or `fail` and the evidence behind it.
//!
//! The [`Board`] watches what the core produces, window by window: the cohorts' values of the spread signals
//! (one look per non-overlapping window, kept as a spread summary, not as values), which instances send to each
//! cohort, the findings open now (spread, growth, leak) and the latest time-to-limit forecast of each instance.
//! [`Board::verdict`] reads that state for one pair ([`verdict`] holds the rule). Like the detectors, the board is
//! pure: event times in, verdicts out; the only clock is the caller's (`api.rs` for a canary start it is told
//! about).
//!
//! Bounds: services (`max_services`, newcomers beyond are counted and ignored), cohorts per service
//! ([`MAX_COHORTS`]), instances remembered per cohort ([`MAX_INSTANCES`]), looks per (cohort, signal) (`history`
//! of event time, at most [`MAX_LOOKS`]), findings ([`MAX_FINDINGS`]), canary starts ([`MAX_STARTS`]). A service
//! silent for `idle_timeout` of event time is forgotten, and so are findings no event has refreshed for
//! `history`. Looks are kept only while a service has two cohorts or more in a window: a service without a
//! canary costs a few hundred bytes.

pub mod api;
mod board;
pub mod config;
mod verdict;

#[cfg(test)]
mod tests;

pub use board::{
    Board, BoardSize, Forecast, OpenFinding, SharedBoard, MAX_COHORTS, MAX_FINDINGS, MAX_INSTANCES,
    MAX_LOOKS, MAX_STARTS,
};
pub use config::GateSettings;
pub use verdict::{cs_radius, CanaryForecast, CanaryLeak, Decision, Query, SignalSpread, Verdict};
