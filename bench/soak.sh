#!/usr/bin/env bash
# Durability soak: two replicas with ack = "durable" on a private PostgreSQL, mixed traffic and
# three faults in turn (PostgreSQL crashed, a replica killed with SIGKILL, the other stopped
# with SIGTERM); prints updates acknowledged, faults injected and the difference between
# acknowledged and stored totals, and exits non-zero unless that difference is 0.
#   bench/soak.sh                        # 10 minutes, release build
#   MINUTES=1.5 PROFILE=debug bench/soak.sh   # the short run .ci/run makes, on the test build
# Other knobs (FAULT_EVERY, PG_DOWN, CLIENTS, KEYS, PG_SETTINGS, KEEP=1 to keep the logs) are
# described at the top of bench/soak.py. Needs the PostgreSQL server binaries (pg_config,
# initdb, pg_ctl) and psql.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v pg_config >/dev/null || { echo "pg_config is needed (PostgreSQL server binaries)" >&2; exit 1; }
case "${PROFILE:-release}" in
    release) cargo build --release --locked --quiet; export HEIMDALL_BIN=target/release/heimdall ;;
    debug) cargo build --locked --quiet; export HEIMDALL_BIN=target/debug/heimdall ;;
    *) echo "PROFILE is release or debug" >&2; exit 1 ;;
esac
exec python3 bench/soak.py
