#!/usr/bin/env bash
# Runs memdrift's fuzz targets (fuzz/fuzz_targets) with libFuzzer on the stable toolchain: the same
# instrumentation cargo-fuzz adds (SanitizerCoverage, no sanitizer), debug assertions and overflow checks on.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 60 s each, every target
#
# The committed corpus (fuzz/corpus/<target>) seeds each run and is only read; what a run adds goes to
# target/fuzz-corpus/<target>. A crash leaves its input in target/fuzz-artifacts/<target>/ and fails the script;
# reproduce it with `target/fuzz/x86_64-unknown-linux-gnu/release/<target> <file>` (or `cargo fuzz run <target>
# <file>` on nightly). With nightly and cargo-fuzz installed, `cargo fuzz run <target>` works as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(otlp_protobuf otlp_json engine)
fi
host="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="$PWD/target/fuzz"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
echo "building the fuzz targets (${targets[*]})"
cargo build --locked --release --manifest-path fuzz/Cargo.toml --target "$host" \
  $(printf -- '--bin %s ' "${targets[@]}")
status=0
for t in "${targets[@]}"; do
  work="target/fuzz-corpus/$t"
  artifacts="target/fuzz-artifacts/$t/"
  mkdir -p "$work" "$artifacts" "fuzz/corpus/$t"
  echo "fuzzing $t for ${secs}s"
  # The engine target runs the detectors on every input: short inputs keep it at hundreds of runs a second.
  max_len=65536
  [ "$t" = engine ] && max_len=4096
  if ! "$CARGO_TARGET_DIR/$host/release/$t" "$work" "fuzz/corpus/$t" \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len="$max_len" \
      -artifact_prefix="$artifacts" -print_final_stats=1 2>"target/fuzz-$t.log"; then
    status=1
    echo "FAILED: $t (its input is in $artifacts; the log's end:)"
    tail -40 "target/fuzz-$t.log"
  else
    grep -E "stat::number_of_executed_units|cov:" "target/fuzz-$t.log" | tail -2
  fi
done
exit $status
