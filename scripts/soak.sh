#!/usr/bin/env bash
# The soak (processor/tests/soak.rs): memdrift under steady load over HTTP and gRPC, hostile clients throughout
# and an OTLP backend that is down 20 s of every 40 s, for MEMDRIFT_SOAK_SECS (default 600) seconds. It fails
# unless resident memory stays within 10% of its median after the warm-up, every accepted span is counted and
# every anomaly event reaches the backend. Prints the memory readings and a one-line summary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export MEMDRIFT_SOAK_SECS="${MEMDRIFT_SOAK_SECS:-600}"
cargo test --release -p memdrift --test soak -- --ignored --nocapture "$@"
