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
. "$repo/scripts/test-env.sh"
venv="$repo/target/litellm-venv"

pinned_venv "$venv" "$here/requirements-test.txt" "LiteLLM and the test tools"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --editable "$here"

heimdall_bin "$repo"

cd "$here"
"$venv/bin/mypy" --cache-dir "$repo/target/litellm-mypy-cache"
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider tests
