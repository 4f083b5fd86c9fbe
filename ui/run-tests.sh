#!/usr/bin/env bash
# The dashboard in a real browser: headless Chromium (Debian's chromium package) driven by
# Playwright for Python against the Heimdall binary. Screenshots of every page go to
# target/ui-screenshots/.
#
#   ui/run-tests.sh                                   # builds target/debug/heimdall if needed
#   HEIMDALL_BIN=target/release/heimdall ui/run-tests.sh
#
# Playwright and pytest are installed into target/ui-venv, pinned by requirements-test.txt
# (the virtualenv is reused while that file is unchanged); Playwright's own browser download
# is never used. Chromium is installed with apt when it is missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
. "$repo/scripts/test-env.sh"
venv="$repo/target/ui-venv"

if [ -z "${CHROMIUM:-}" ]; then
    if ! command -v chromium >/dev/null; then
        echo "installing Debian's chromium"
        sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
        $sudo_ apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium >/dev/null
    fi
    export CHROMIUM="$(command -v chromium)"
fi

pinned_venv "$venv" "$here/requirements-test.txt" "Playwright and pytest"

heimdall_bin "$repo"

export UI_SCREENSHOTS="$repo/target/ui-screenshots"
mkdir -p "$UI_SCREENSHOTS"
cd "$here"
PYTHONDONTWRITEBYTECODE=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider tests
