#!/usr/bin/env bash
# The whole service over the network, side by side with Rotel (a Rust OTLP collector; `--exporter blackhole`
# decodes every request and drops it): each server pinned to one core (SERVER_CPUS, default 0), the load
# generator (tests/src/bin/loadgen.rs) on another (LOADER_CPUS, default 1). For each server and case, RUNS
# (default 3) runs of SECS (default 20) measured seconds after WARMUP (default 5) seconds; a fresh server per
# run. MEMDRIFT (default target/release/memdrift) is the binary run. Prints a
# Markdown table of medians: accepted spans/s, server CPU-s per million spans, server RSS (median over the run),
# export latency p50/p99, and memdrift / Rotel. Raw results (one JSON object per run) go to OUT (default
# target/bench-e2e/results.jsonl).
#
#   scripts/bench-e2e.sh                     # the standard cases (about 15 minutes)
#   CASES="grpc:50000" RUNS=1 scripts/bench-e2e.sh
#   CASES="grpc:10000 grpc:200000" WARMUP=90 SECS=30 scripts/bench-e2e.sh   # steady memory: windows full
#   SERVERS=memdrift SERVER_CPUS=0,1 LOADER_CPUS=1 CONNECTIONS=4 CASES="grpc:closed" scripts/bench-e2e.sh   # two cores
#
# A case is PROTOCOL:LOAD, PROTOCOL one of grpc, http-protobuf, http-json, http-protobuf-gzip, grpc-gzip and
# LOAD a rate in spans/s or `closed` (closed loop, CONCURRENCY exports in flight, default 16: the saturation rate).
# Over gRPC the loader shares one HTTP/2 connection among its exports unless CONNECTIONS (default 1) opens more;
# a test of scaling with cores needs several (one connection's frames are one task's work in the server).
# Besides rate, CPU, RSS and latency, each cell gives the server's cores, memdrift's engine thread's, the
# loader's and the machine's idle share: where the cores went when the rate stops rising.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS="${RUNS:-3}"
SECS="${SECS:-20}"
WARMUP="${WARMUP:-5}"
SERVERS="${SERVERS:-memdrift rotel}"
SERVER_CPUS="${SERVER_CPUS:-0}"
LOADER_CPUS="${LOADER_CPUS:-1}"
CASES="${CASES:-grpc:10000 grpc:50000 http-protobuf:50000 http-json:50000 grpc:200000 grpc:closed}"
OUT="${OUT:-target/bench-e2e/results.jsonl}"
VENV="${VENV:-.venv}"
MEMDRIFT="${MEMDRIFT:-target/release/memdrift}"
CONCURRENCY="${CONCURRENCY:-16}"
# gRPC connections the loader opens (exports take them in turn); over HTTP it opens one per export in flight.
CONNECTIONS="${CONNECTIONS:-1}"

log() { printf 'bench-e2e: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

command -v taskset >/dev/null || die "taskset is missing (util-linux)"
cargo build --release -q -p memdrift --bin memdrift
cargo build --release -q -p memdrift-e2e --bin loadgen
rotel="$(ls "$VENV"/lib/python3*/site-packages/rotel/rotel-agent 2>/dev/null | head -n 1 || true)"
if [[ " $SERVERS " == *" rotel "* && ! -x $rotel ]]; then
    die "rotel-agent is not in $VENV (scripts/test-env.sh installs it), or set SERVERS=memdrift"
fi
mkdir -p "$(dirname "$OUT")"
: >"$OUT"
state="$(mktemp -d)"
trap 'kill "${server_pid:-}" 2>/dev/null || true; rm -rf "$state"' EXIT

# Starts SERVER on ports 4317/4318, pinned; sets server_pid once both ports answer.
start() {
    local name=$1
    case $name in
        memdrift)
            # The embedded default pipeline, its anomaly output to a file (not the terminal).
            RUST_LOG=warn MEMDRIFT_GRPC_ENDPOINT=127.0.0.1:4317 MEMDRIFT_HTTP_ENDPOINT=127.0.0.1:4318 \
                MEMDRIFT_PROMETHEUS_ENDPOINT=127.0.0.1:9464 MEMDRIFT_GATE_ENDPOINT=127.0.0.1:0 taskset -c "$SERVER_CPUS" "$MEMDRIFT" run \
                >"$state/memdrift.out" 2>"$state/memdrift.err" &
            ;;
        rotel)
            env -u ROTEL_EXPORTER taskset -c "$SERVER_CPUS" "$rotel" start --exporter blackhole \
                --otlp-grpc-endpoint 127.0.0.1:4317 --otlp-http-endpoint 127.0.0.1:4318 \
                >"$state/rotel.out" 2>"$state/rotel.err" &
            ;;
    esac
    server_pid=$!
    for _ in $(seq 100); do
        if (exec 3<>/dev/tcp/127.0.0.1/4317) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/4318) 2>/dev/null; then
            return 0
        fi
        kill -0 "$server_pid" 2>/dev/null || die "$name exited at start: $(tail -n 5 "$state/$name.err")"
        sleep 0.1
    done
    die "$name did not open 4317 and 4318 within 10 s"
}

stop() {
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    # Let the ports go before the next server binds them.
    sleep 1
}

for case in $CASES; do
    proto="${case%%:*}"
    load="${case#*:}"
    args=(--seconds "$SECS" --warmup "$WARMUP" --connections "$CONNECTIONS")
    case $proto in
        grpc) args+=(--protocol grpc --endpoint 127.0.0.1:4317) ;;
        grpc-gzip) args+=(--protocol grpc --gzip --endpoint 127.0.0.1:4317) ;;
        http-protobuf) args+=(--protocol http-protobuf --endpoint 127.0.0.1:4318) ;;
        http-protobuf-gzip) args+=(--protocol http-protobuf --gzip --endpoint 127.0.0.1:4318) ;;
        http-json) args+=(--protocol http-json --endpoint 127.0.0.1:4318) ;;
        *) die "unknown protocol in case $case" ;;
    esac
    if [[ $load == closed ]]; then args+=(--concurrency "$CONCURRENCY"); else args+=(--rate "$load"); fi
    for run in $(seq "$RUNS"); do
        for server in $SERVERS; do
            start "$server"
            log "$server $case run $run/$RUNS"
            result="$(taskset -c "$LOADER_CPUS" target/release/loadgen "${args[@]}" --pid "$server_pid")" \
                || die "loadgen failed against $server ($case)"
            stop
            printf '{"server":"%s","case":"%s","run":%s,"result":%s}\n' "$server" "$case" "$run" "$result" >>"$OUT"
        done
    done
done

python3 - "$OUT" "$SERVER_CPUS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cases = list(dict.fromkeys(r["case"] for r in rows))
servers = list(dict.fromkeys(r["server"] for r in rows))
def med(case, server, f):
    vals = [f(r["result"]) for r in rows if r["case"] == case and r["server"] == server]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None
fields = [
    # (row, value of a run, format, whether memdrift / rotel means anything for it)
    ("accepted spans/s", lambda r: r["spans_per_s"], "{:,.0f}", True),
    ("CPU-s per M spans", lambda r: r["server_cpu_s_per_million_spans"], "{:.2f}", True),
    ("RSS MiB", lambda r: r["server_rss_mib"]["median"], "{:.0f}", True),
    ("p50 ms", lambda r: r["latency_ms"]["p50"], "{:.2f}", True),
    ("p99 ms", lambda r: r["latency_ms"]["p99"], "{:.2f}", True),
    ("server cores", lambda r: r.get("server_cpu_cores"), "{:.2f}", True),
    # Where the cores went when the rate stops rising: memdrift's one engine thread, the loader, nobody.
    ("engine thread cores", lambda r: r.get("server_thread_cpu_cores", {}).get("memdrift-engine"), "{:.2f}", False),
    ("loader cores", lambda r: r.get("loader_cpu_cores"), "{:.2f}", False),
    ("machine idle %", lambda r: None if r.get("machine_idle_share") is None else 100 * r["machine_idle_share"], "{:.0f}", False),
]
runs = max(r["run"] for r in rows)
print(f"\nServer on CPU {sys.argv[2]}, medians of {runs} run(s) per cell.\n")
head = ["case", "measure"] + servers + (["memdrift / rotel"] if {"memdrift", "rotel"} <= set(servers) else [])
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for c in cases:
    for name, f, fmt, ratio in fields:
        vals = [med(c, s, f) for s in servers]
        cells = [fmt.format(v) if v is not None else "-" for v in vals]
        if len(head) > len(servers) + 2:
            m, r = med(c, "memdrift", f), med(c, "rotel", f)
            cells.append(f"{m / r:.2f}" if ratio and m is not None and r else "-")
        print(f"| {c} | {name} | " + " | ".join(cells) + " |")
bad = [r for r in rows if r["result"]["requests_refused"] or r["result"]["spans_rejected"]]
for r in bad:
    res = r["result"]
    print(f"\nnote: {r['server']} {r['case']} run {r['run']}: {res['requests_refused']} exports refused, "
          f"{res['spans_rejected']} spans rejected ({res.get('first_error')})")
EOF
