#!/usr/bin/env bash
# Idempotency keys at scale: EVENTS (10 M) usage events in batches, each with a request id never
# sent before, as fast as the machine takes them; then the keys held, their bytes and bytes per
# key, the process's RSS, the keys and rows in dedup_blocks, and the time a restart takes to
# load them;
# then, against the restarted service holding those keys, single /v1/usage requests (the hot
# path) with fresh request ids and without, alternately, twice each for DURATION (the machine
# is noisy: alternating is fairer than one run each; target: within 10 %); then the batches
# again without request ids on a fresh database.
#   bench/dedup.sh
#   EVENTS=2000000 BATCH=1000 CONNECTIONS=8 bench/dedup.sh
#   BENCH_POSTGRES=postgres://postgres@127.0.0.1:5432 bench/dedup.sh   # on PostgreSQL
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-10000000}
BATCH=${BATCH:-1000}
CONNECTIONS=${CONNECTIONS:-8}
THREADS=${THREADS:-2}
KEYS=${KEYS:-1000}
DURATION=${DURATION:-10s}
PORT=${PORT:-18090}
TOKEN=bench-token

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --locked --quiet
work=$(mktemp -d)
pid=""
bench_dbs=()
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$work"
    for db in "${bench_dbs[@]}"; do psql "$BENCH_POSTGRES/postgres" -qc "drop database $db"; done
}
trap cleanup EXIT

database() {
    if [ -n "${BENCH_POSTGRES:-}" ]; then
        local db="heimdall_dedup_bench_$$_$1"
        psql "$BENCH_POSTGRES/postgres" -qc "create database $db"
        bench_dbs+=("$db")
        echo "$BENCH_POSTGRES/$db"
    else
        echo "sqlite://$work/$1.db"
    fi
}

# Keys and rows (blocks) stored.
stored() {
    local sql="select coalesce(sum(length(keys)), 0) / 16, count(*) from dedup_blocks"
    if [ -n "${BENCH_POSTGRES:-}" ]; then
        psql "$1" -Atc "$sql" | tr '|' ' '
    else
        python3 -c "import sqlite3, sys; print(*sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone())" "${1#sqlite://}" "$sql"
    fi
}

# Starts the service on $1 and waits until it is ready; the time that took is in $ready_s.
start_server() {
    local started
    started=$(date +%s.%N)
    HEIMDALL__AUTH__ADMIN_TOKENS=$TOKEN HEIMDALL__AUTH__GATEWAY_TOKENS=$TOKEN HEIMDALL__LOG_LEVEL=warn \
        ./target/release/heimdall serve --listen "127.0.0.1:$PORT" --database-url "$1" \
        >/dev/null 2>>"$work/heimdall.log" &
    pid=$!
    for _ in $(seq 1 1200); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.05; done
    ready_s=$(echo "$(date +%s.%N) - $started" | bc)
}

metric() { curl -fs "http://127.0.0.1:$PORT/metrics" | awk -v name="$1" '$1 == name { print $2 }'; }

counted() {
    curl -fs "http://127.0.0.1:$PORT/metrics" | awk '/^heimdall_usage_updates_total\{result="(accepted|duplicate)"\}/ { n += $2 } END { print n + 0 }'
}

# Sends until the service has counted EVENTS more updates; prints the rate it took them at.
load() {
    local before target started elapsed wrk_pid
    before=$(counted)
    target=$((before + EVENTS))
    IDS=$1 KEYS=$work/keys.txt TOKEN=$TOKEN BATCH=$BATCH \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d1h --timeout 30s -s bench/dedup.lua "http://127.0.0.1:$PORT" >/dev/null &
    wrk_pid=$!
    started=$(date +%s.%N)
    while [ "$(counted)" -lt "$target" ]; do sleep 0.1; done
    elapsed=$(echo "$(date +%s.%N) - $started" | bc)
    kill "$wrk_pid"; wait "$wrk_pid" 2>/dev/null || true
    echo "RESULT events_per_s=$(echo "$EVENTS / $elapsed" | bc) seconds=$elapsed"
}

# A fresh service on database $1 with KEYS keys, sent EVENTS events (request ids: $2); the
# rate is in $result.
fresh_run() {
    start_server "$1"
    python3 bench/setup.py 127.0.0.1 "$PORT" "$TOKEN" "$KEYS" "$work/keys.txt" >/dev/null
    echo "sending $EVENTS events, request ids $2, $BATCH per batch, $CONNECTIONS connections"
    result=$(load "$2")
    echo "$result"
}

with_ids=$(database ids)
fresh_run "$with_ids" 1
ids_result=$result
sleep 3 # the last flushes
keys_held=$(metric heimdall_dedup_keys)
key_bytes=$(metric heimdall_dedup_bytes)
unwritten=$(metric heimdall_dedup_keys_unwritten_total)
evicted=$(metric heimdall_dedup_keys_evicted_total)
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
kill "$pid"; wait "$pid" || true
read -r keys_stored blocks < <(stored "$with_ids")
start_server "$with_ids"
restart_s=$ready_s
keys_loaded=$(metric heimdall_dedup_keys)
rss_restart_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
single() {
    IDS=$1 KEYS=$work/keys.txt TOKEN=$TOKEN BATCH=1 \
        wrk -t"$THREADS" -c64 -d"$DURATION" --latency -s bench/dedup.lua "http://127.0.0.1:$PORT" | grep '^RESULT'
}
single_ids=0
single_plain=0
for round in 1 2; do
    for ids in 1 0; do
        result=$(single "$ids")
        echo "single /v1/usage, request ids $ids, round $round: $result"
        rate=$(echo "$result" | sed 's/.*rps=\([0-9]*\).*/\1/')
        if [ "$ids" = 1 ]; then single_ids=$((single_ids + rate)); else single_plain=$((single_plain + rate)); fi
    done
done
kill "$pid"; wait "$pid" || true

fresh_run "$(database plain)" 0
plain_result=$result
rss_plain_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")

rate() { echo "$1" | sed 's/.*events_per_s=\([0-9]*\).*/\1/'; }
awk -v ids="$(rate "$ids_result")" -v plain="$(rate "$plain_result")" -v held="$keys_held" \
    -v bytes="$key_bytes" -v rss="$rss_kib" -v rss_plain="$rss_plain_kib" -v stored="$keys_stored" -v blocks="$blocks" \
    -v restart="$restart_s" -v loaded="$keys_loaded" -v rss_restart="$rss_restart_kib" \
    -v unwritten="$unwritten" -v evicted="$evicted" \
    -v single_ids="$single_ids" -v single_plain="$single_plain" 'BEGIN {
    printf "\n/v1/usage (one update a request, %d keys held): %.0f req/s with request ids, %.0f without: %.1f%% (target >= 90%%)\n", loaded, single_ids / 2, single_plain / 2, 100 * single_ids / single_plain
    printf "/v1/usage/batch: %.0f events/s with request ids, %.0f without: %.1f%%\n", ids, plain, 100 * ids / plain
    printf "keys held: %d, %.1f MiB, %.1f bytes per key\n", held, bytes / 1048576, bytes / held
    printf "RSS after the run: %.0f MiB with ids, %.0f MiB without (%.1f bytes per key more)\n", rss / 1024, rss_plain / 1024, (rss - rss_plain) * 1024 / held
    printf "stored: %d keys in %d rows of dedup_blocks (%d not written: queue full; %d evicted by the bound)\n", stored, blocks, unwritten, evicted
    printf "restart to /readyz: %.1f s, %d keys loaded, RSS %.0f MiB\n", restart, loaded, rss_restart / 1024
}'
