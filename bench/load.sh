#!/usr/bin/env bash
# Load benchmark: Heimdall on SQLite (or PostgreSQL) with 10 000 keys in a customer/team hierarchy, measured
# with wrk against /healthz (the machine's ceiling), /v1/usage, /v1/check and /v1/usage/batch,
# then /v1/usage again after a restart with ack = "durable", all in one run, with the ratios the
# targets are stated in.
#   bench/load.sh                    # defaults below
#   DURATION=20s CONNECTIONS=64 BATCH_CONNECTIONS=8 KEYS=10000 bench/load.sh
#   LOG_LEVEL=info bench/load.sh      # with the access log (one line per request, to a file)
#   BENCH_POSTGRES=postgres://postgres@127.0.0.1:5432 bench/load.sh
#                                     # on PostgreSQL: a fresh database there, dropped afterwards
#   BENCH_POSTGRES_QUERY='?sslmode=disable' ...   # URL parameters for Heimdall's connections
#   HEIMDALL_BIN=/path/to/heimdall bench/load.sh   # another build (an A/B against this one)
# Batches come from a few senders (gateways flushing their buffers), so /v1/usage/batch is
# driven by BATCH_CONNECTIONS (default 8) rather than the 64 connections of the per-request
# endpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
BATCH_CONNECTIONS=${BATCH_CONNECTIONS:-8}
THREADS=${THREADS:-2}
KEYS=${KEYS:-10000}
BATCH=${BATCH:-1000}
PORT=${PORT:-18080}
LOG_LEVEL=${LOG_LEVEL:-warn}
TOKEN=bench-token

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
if [ -z "${HEIMDALL_BIN:-}" ]; then
    cargo build --release --locked --quiet
fi
BIN=${HEIMDALL_BIN:-./target/release/heimdall}
work=$(mktemp -d)
database_url="sqlite://$work/bench.db"
bench_db=""
pid=""
if [ -n "${BENCH_POSTGRES:-}" ]; then
    bench_db="heimdall_bench_$$"
    psql "$BENCH_POSTGRES/postgres" -qc "create database $bench_db"
    database_url="$BENCH_POSTGRES/$bench_db${BENCH_POSTGRES_QUERY:-}"
fi
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$work"
    if [ -n "$bench_db" ]; then psql "$BENCH_POSTGRES/postgres" -qc "drop database $bench_db"; fi
}
trap cleanup EXIT

start_server() {
    HEIMDALL__AUTH__ADMIN_TOKENS=$TOKEN HEIMDALL__AUTH__GATEWAY_TOKENS=$TOKEN HEIMDALL__LOG_LEVEL=$LOG_LEVEL \
        HEIMDALL__ACK=$1 "$BIN" serve --listen "127.0.0.1:$PORT" \
        --database-url "$database_url" 2>>"$work/heimdall.log" &
    pid=$!
    for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
}
start_server buffered

start=$(date +%s.%N)
python3 bench/setup.py 127.0.0.1 "$PORT" "$TOKEN" "$KEYS" "$work/keys.txt"
echo "setup took $(echo "$(date +%s.%N) - $start" | bc) s"

run() {
    local conns=$CONNECTIONS
    [ "$1" = batch ] && conns=$BATCH_CONNECTIONS
    MODE=$1 KEYS=$work/keys.txt TOKEN=$TOKEN BATCH=$BATCH \
        wrk -t"$THREADS" -c"$conns" -d"$DURATION" --latency -s bench/load.lua "http://127.0.0.1:$PORT" \
        | grep '^RESULT'
}
# Warm up, then measure each endpoint once.
MODE=healthz KEYS=$work/keys.txt TOKEN=$TOKEN wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s bench/load.lua "http://127.0.0.1:$PORT" >/dev/null
export KEYS_TOTAL=$KEYS BATCH_CONNECTIONS
results=$(for mode in healthz usage check batch; do run "$mode"; done)
echo "$results"
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
kill "$pid"; wait "$pid" || true
start_server durable
durable=$(run usage | sed 's/^RESULT usage/RESULT durable/')
echo "$durable"
# What the group commits cost, from the service's own histogram.
curl -fs "http://127.0.0.1:$PORT/metrics" | awk '
    /^heimdall_flush_duration_seconds_sum\{kind="durable"\}/ { sum = $2 }
    /^heimdall_flush_duration_seconds_count\{kind="durable"\}/ { n = $2 }
    END { if (n > 0) printf "durable flushes: %d, mean %.2f ms\n", n, 1000 * sum / n }'
results="$results
$durable"

echo "$results" | awk -v batch="$BATCH" -v rss="$rss_kib" -v conns="$CONNECTIONS" '
    { split($3, r, "="); split($5, p, "="); rps[$2] = r[2]; p99[$2] = p[2] }
    END {
        printf "\n%s connections, %s keys\n", conns, ENVIRON["KEYS_TOTAL"]
        printf "usage: %.0f req/s = %.0f%% of healthz (target >= 60%%); p99 %.2f ms = %.2fx healthz p99 (target <= 2x)\n", rps["usage"], 100 * rps["usage"] / rps["healthz"], p99["usage"], p99["usage"] / p99["healthz"]
        printf "check: %.0f req/s = %.0f%% of healthz (target >= 60%%); p99 %.2f ms = %.2fx healthz p99 (target <= 2x)\n", rps["check"], 100 * rps["check"] / rps["healthz"], p99["check"], p99["check"] / p99["healthz"]
        printf "batch: %.0f events/s in batches of %d from %s connections (target >= 1000000)\n", rps["batch"] * batch, batch, ENVIRON["BATCH_CONNECTIONS"]
        printf "durable usage: %.0f req/s = %.0f%% of buffered (target >= 20%%); p99 %.2f ms (target < 20 ms)\n", rps["durable"], 100 * rps["durable"] / rps["usage"], p99["durable"]
        printf "rss after load: %.1f MiB (target < 100 MiB)\n", rss / 1024
    }'
