#!/usr/bin/env bash
# API fuzzing: starts Heimdall (debug build, fresh SQLite file, tokens on) and runs schemathesis
# over every operation of the committed openapi/openapi.json, checking that no response is a
# 5xx and that every response matches its documented schema.
#
#   scripts/fuzz-api.sh                 # bounded run (FUZZ_EXAMPLES per operation, default 30)
#   FUZZ_EXAMPLES=500 FUZZ_SEED= scripts/fuzz-api.sh   # a longer run with a random seed
#
# schemathesis is installed into target/fuzz-venv on first use (PyPI), from
# scripts/requirements-fuzz.txt. Set SCHEMATHESIS to use another installation.
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${FUZZ_EXAMPLES:-30}"
seed="${FUZZ_SEED-20261128}"
repo="$(pwd)"
venv="$repo/target/fuzz-venv"
st="${SCHEMATHESIS:-$venv/bin/schemathesis}"
if [ ! -x "$st" ]; then
    echo "installing schemathesis into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-fuzz.txt
fi

cargo build --quiet --locked
work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
admin="fuzz-admin-token"
HEIMDALL__AUTH__ADMIN_TOKENS="$admin" HEIMDALL__AUTH__GATEWAY_TOKENS="fuzz-gateway-token" \
HEIMDALL__LOG_LEVEL=warn \
    target/debug/heimdall serve --listen "127.0.0.1:$port" --database-url "sqlite://$work/heimdall.db" \
    2> "$work/heimdall.log" &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

seed_args=()
[ -n "$seed" ] && seed_args=(--seed "$seed")
status=0
# From the scratch directory, so that schemathesis' own cache (.schemathesis/) stays out of the
# repository.
cd "$work"
"$st" run "$repo/openapi/openapi.json" \
    --url "http://127.0.0.1:$port" \
    --header "Authorization: Bearer $admin" \
    --checks not_a_server_error,response_schema_conformance,content_type_conformance \
    --phases examples,coverage,fuzzing \
    --max-examples "$examples" \
    "${seed_args[@]}" \
    --workers 1 \
    --request-timeout 10 \
    --no-color \
    --generation-database none \
    --report-dir "$work/report" || status=$?
cd "$repo"

if ! kill -0 "$pid" 2>/dev/null; then
    echo "Heimdall exited during the fuzz run:" >&2
    cat "$work/heimdall.log" >&2
    exit 1
fi
if grep -q '"status":5\|status=5[0-9][0-9]\|panic' "$work/heimdall.log"; then
    echo "Heimdall logged server errors during the fuzz run:" >&2
    grep '"status":5\|status=5[0-9][0-9]\|panic' "$work/heimdall.log" >&2 | head -20
    exit 1
fi
exit "$status"
