#!/usr/bin/env bash
# The whole test suite, set up from nothing: the Python peers' venv and Prometheus (scripts/test-env.sh), then
# every crate's unit, integration and end-to-end tests, and memspan once more with its optional probes (jemalloc,
# NVML: absent without a GPU driver, which the tests check). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/test-env.sh
cargo test --workspace --locked "$@"
cargo test -p memspan --all-features --locked "$@"
