//! Where data comes in. Each receiver decodes, extracts samples on its own task, and hands them to the engine
//! over a bounded channel; when the channel is full it answers "retry later" (gRPC UNAVAILABLE, HTTP 503), the
//! OTLP way to push back, instead of buffering without bound.

pub mod listener;
pub mod memory_limit;
pub mod otlp;
pub mod security;
