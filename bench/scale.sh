#!/usr/bin/env bash
# Scale benchmark: N virtual keys (default 1 000 000), each with a budget and a rate limit,
# under 10 000 teams and 1 000 customers (each with a budget), inserted straight into a fresh
# PostgreSQL database; then the release binary is started on it and each figure of the
# "million keys" targets is measured and printed beside its target:
#   start to /readyz (windows current, then every window expired), RSS after start and after
#   load, idle CPU over 10 s, /v1/usage and /v1/check over random keys as a share of /healthz,
#   one admin PUT, and the flush after 100 000 random keys were charged.
#
#   bench/scale.sh                           # 1 000 000 keys on postgres://postgres@127.0.0.1:5432
#   KEYS=100000 DURATION=5s bench/scale.sh   # smaller, quicker
#   BENCH_POSTGRES=postgres://user@host:5432 HEIMDALL_BIN=/path/to/heimdall bench/scale.sh
# Needs psql, curl, wrk and python3; the database is dropped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
TEAMS=${TEAMS:-10000}
CUSTOMERS=${CUSTOMERS:-1000}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
PORT=${PORT:-18090}
BENCH_POSTGRES=${BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}
TOKEN=bench-token

for tool in psql curl wrk python3; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
if [ -z "${HEIMDALL_BIN:-}" ]; then
    cargo build --release --locked --quiet
fi
BIN=${HEIMDALL_BIN:-./target/release/heimdall}
work=$(mktemp -d)
db="heimdall_scale_$$"
url="$BENCH_POSTGRES/$db"
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
    psql "$BENCH_POSTGRES/postgres" -qc "drop database if exists $db with (force)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
sql() { psql "$url" -qAt -v ON_ERROR_STOP=1 "$@"; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

psql "$BENCH_POSTGRES/postgres" -qc "create database $db"
"$BIN" migrate --database-url "$url" >/dev/null 2>&1

echo "seeding $KEYS keys, $TEAMS teams, $CUSTOMERS customers into $db"
seed_started=$(now)
sql <<SQL
\set keys $KEYS
\set teams $TEAMS
\set customers $CUSTOMERS
create temporary table t0 as select (extract(epoch from clock_timestamp()) * 1000000)::bigint as now;
insert into budgets (id, max_limit, reset_duration, last_reset, created_at, updated_at)
    select md5('cb' || i)::uuid::text, 1000000000000000, '1M', t0.now, t0.now, t0.now
    from generate_series(1, :customers) i, t0;
insert into customers (id, name, budget_id, created_at, updated_at)
    select md5('c' || i)::uuid::text, 'customer-' || i, md5('cb' || i)::uuid::text, t0.now, t0.now
    from generate_series(1, :customers) i, t0;
insert into budgets (id, max_limit, reset_duration, last_reset, created_at, updated_at)
    select md5('tb' || i)::uuid::text, 1000000000000000, '1d', t0.now, t0.now, t0.now
    from generate_series(1, :teams) i, t0;
insert into teams (id, name, customer_id, budget_id, created_at, updated_at)
    select md5('t' || i)::uuid::text, 'team-' || i, md5('c' || (i % :customers + 1))::uuid::text,
           md5('tb' || i)::uuid::text, t0.now, t0.now
    from generate_series(1, :teams) i, t0;
insert into budgets (id, max_limit, reset_duration, last_reset, created_at, updated_at)
    select md5('kb' || i)::uuid::text, 100000000000000, '1d', t0.now, t0.now, t0.now
    from generate_series(0, :keys - 1) i, t0;
insert into rate_limits (id, token_max_limit, token_reset_duration, token_last_reset,
                         request_max_limit, request_reset_duration, request_last_reset, created_at, updated_at)
    select md5('kr' || i)::uuid::text, 1000000000, '1h', t0.now, 1000000, '1h', t0.now, t0.now, t0.now
    from generate_series(0, :keys - 1) i, t0;
insert into virtual_keys (id, name, value_hash, value_prefix, team_id, budget_id, rate_limit_id,
                          created_at, updated_at)
    select md5('k' || i)::uuid::text, 'key-' || i,
           encode(sha256(convert_to('sk-hd-scale-' || i, 'UTF8')), 'hex'), 'sk-hd-scale…',
           md5('t' || (i % :teams + 1))::uuid::text, md5('kb' || i)::uuid::text,
           md5('kr' || i)::uuid::text, t0.now, t0.now
    from generate_series(0, :keys - 1) i, t0;
analyze;
SQL
echo "seeded in $(since "$seed_started") s"
seq 0 $((KEYS - 1)) | sed 's/^/sk-hd-scale-/' > "$work/keys.txt"

# Starts the service and waits for /readyz; the seconds it took are left in $took.
start_server() {
    local started
    started=$(now)
    HEIMDALL__AUTH__ADMIN_TOKENS=$TOKEN HEIMDALL__AUTH__GATEWAY_TOKENS=$TOKEN HEIMDALL__LOG_LEVEL=warn \
        "$BIN" serve --listen "127.0.0.1:$PORT" --database-url "$url" >>"$work/heimdall.log" 2>&1 &
    pid=$!
    until curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || { cat "$work/heimdall.log" >&2; exit 1; }
        sleep 0.05
    done
    took=$(since "$started")
}
stop_server() { kill "$pid"; wait "$pid" || true; pid=""; }
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
metric() { curl -fs "http://127.0.0.1:$PORT/metrics" | awk -v s="$1" 'index($0, s) == 1 {print $2}'; }

results=()
add() { results+=("$(printf '%-58s %14s   target %s' "$1" "$2" "$3")"); }

start_server
add "start to /readyz, windows current (s)" "$(printf '%.1f' "$took")" "< 8"
add "RSS after start (MiB)" "$(rss_mib)" "< 800"

# After the first ticks (the first runs at once, in the background): the steady idle cost.
sleep 5
ticks=$(cpu_ticks)
sleep 10
idle=$(echo "scale=2; 100 * ($(cpu_ticks) - $ticks) / $(getconf CLK_TCK) / 10" | bc)
add "idle CPU over 10 s (% of a core)" "$idle" "< 2"

run() {
    MODE=$1 KEYS=$work/keys.txt TOKEN=$TOKEN REQUESTS=100000 \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/load.lua "http://127.0.0.1:$PORT" \
        | awk '/^RESULT/ {split($3, r, "="); print r[2]}'
}
MODE=healthz KEYS=$work/keys.txt TOKEN=$TOKEN wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s bench/load.lua \
    "http://127.0.0.1:$PORT" >/dev/null
healthz=$(run healthz)
usage=$(run usage)
check=$(run check)
add "/healthz (req/s)" "$(printf '%.0f' "$healthz")" "(the ceiling)"
add "/v1/usage over random keys (% of /healthz)" "$(echo "scale=1; 100 * $usage / $healthz" | bc)" ">= 70"
add "/v1/check over random keys (% of /healthz)" "$(echo "scale=1; 100 * $check / $healthz" | bc)" ">= 70"
sleep 2
add "RSS after load (MiB)" "$(rss_mib)" "< 1024"

# One admin PUT (the median of five), at this size.
id=$(sql -c "select id from virtual_keys where name = 'key-42'")
put_ms=$(for i in 1 2 3 4 5; do
    curl -fs -o /dev/null -w '%{time_total}\n' -X PUT -H "authorization: Bearer $TOKEN" \
        -H 'content-type: application/json' -d "{\"budget\": {\"max_limit\": $((100 + i))}}" \
        "http://127.0.0.1:$PORT/api/governance/virtual-keys/$id"
done | sort -n | sed -n 3p)
add "admin PUT of one key (ms)" "$(echo "scale=1; 1000 * $put_ms / 1" | bc)" "< 5"

# 100 000 distinct random keys charged in batches, then the time the flushes that wrote them
# took (the flush histogram's sum over the next ticks).
flush_sum() { metric 'heimdall_flush_duration_seconds_sum{kind="full"}'; }
before=$(flush_sum)
python3 - "$PORT" "$TOKEN" "$KEYS" <<'PY'
import json, random, sys, urllib.request
port, token, keys = sys.argv[1], sys.argv[2], int(sys.argv[3])
chosen = random.sample(range(keys), min(100_000, keys))
for start in range(0, len(chosen), 1000):
    updates = [{"virtual_key": f"sk-hd-scale-{i}", "provider": "openai", "model": "gpt-4o",
                "tokens_used": 100, "cost": 0.001} for i in chosen[start:start + 1000]]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/usage/batch",
                                 data=json.dumps({"updates": updates}).encode(), method="POST",
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    urllib.request.urlopen(req).read()
PY
# The histogram's sum moves when its samples are folded (every 5 s).
sleep 8
add "flushes writing 100 000 charged keys (ms, total)" "$(awk -v a="$(flush_sum)" -v b="$before" 'BEGIN {printf "%.0f", 1000 * (a - b)}')" "(proportional to change)"

# Every window expired: as after a long downtime.
stop_server
sql -c "update budgets set last_reset = last_reset - 400::bigint * 86400 * 1000000;
        update rate_limits set token_last_reset = token_last_reset - 400::bigint * 86400 * 1000000,
                               request_last_reset = request_last_reset - 400::bigint * 86400 * 1000000;"
expired_started=$(now)
start_server
add "start to /readyz, every window expired (s)" "$(printf '%.1f' "$took")" "< 15"
# Serving meanwhile; when are the resets all written?
until [ "$(sql -c "select count(*) from budgets where last_reset < $(date +%s)000000 - 300::bigint * 86400 * 1000000")" = 0 ]; do
    sleep 0.2
done
add "  ... every reset written, from the start (s)" "$(printf '%.1f' "$(since "$expired_started")")" "(background)"
stop_server

printf '\n%s keys, %s teams, %s customers; %s connections; %s\n' "$KEYS" "$TEAMS" "$CUSTOMERS" "$CONNECTIONS" "$(nproc) cores"
printf '%s\n' "${results[@]}"
