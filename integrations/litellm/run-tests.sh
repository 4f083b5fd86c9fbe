#!/usr/bin/env bash
# The LiteLLM integration's checks: mypy --strict over the package, its unit tests, and the
# end-to-end suite that starts the Heimdall binary and the real LiteLLM proxy (mock
# deployments, example/config.yaml) and drives them with OpenAI-format requests.
#
#   integrations/litellm/run-tests.sh              # builds target/debug/heimdall if needed
#   HEIMDALL_BIN=target/release/heimdall integrations/litellm/run-tests.sh
#
# The proxy and the test tools are installed into target/litellm-venv from PyPI, pinned by
# requirements-test.txt; the virtualenv is reused while that file is unchanged.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/target/litellm-venv"

if ! cmp -s "$here/requirements-test.txt" "$venv/.requirements-test.txt" 2>/dev/null; then
    echo "installing LiteLLM and the test tools into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements-test.txt"
    cp "$here/requirements-test.txt" "$venv/.requirements-test.txt"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --editable "$here"

if [ -z "${HEIMDALL_BIN:-}" ]; then
    (cd "$repo" && cargo build --quiet --locked)
    export HEIMDALL_BIN="$repo/target/debug/heimdall"
fi

cd "$here"
"$venv/bin/mypy" --cache-dir "$repo/target/litellm-mypy-cache"
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider tests
