#!/usr/bin/env bash
# The whole test suite, set up from nothing: the Python peers' venv and Prometheus (scripts/test-env.sh), then
# every crate's unit, integration and end-to-end tests, and memspan once more with its optional probes (jemalloc,
# NVML: absent without a GPU driver, which the tests check) and twice without its OTLP setup. Extra arguments go
# to `cargo test`. Last, each fuzz target for MEMDRIFT_FUZZ_SECS (60 s; 0 skips them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/test-env.sh
cargo test --workspace --locked "$@"
cargo test -p memspan --all-features --locked "$@"
# memspan as an instrumentation library alone (no OTLP setup), with and without the counting allocator.
cargo test -p memspan --no-default-features --locked "$@"
cargo test -p memspan --no-default-features --features counting-allocator --locked "$@"
if [ "${MEMDRIFT_FUZZ_SECS:-60}" != 0 ]; then
  scripts/fuzz.sh "${MEMDRIFT_FUZZ_SECS:-60}"
fi
