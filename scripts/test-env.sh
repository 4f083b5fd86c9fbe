# Shared by the suites' run-tests.sh scripts (sourced, not run).

# pinned_venv VENV REQUIREMENTS WHAT: a virtualenv at VENV with exactly the pins of
# REQUIREMENTS, rebuilt only when that file changed since it was made.
pinned_venv() {
    local venv=$1 requirements=$2 what=$3
    if ! cmp -s "$requirements" "$venv/.requirements-test.txt" 2>/dev/null; then
        echo "installing $what into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
        cp "$requirements" "$venv/.requirements-test.txt"
    fi
}

# heimdall_bin REPO: exports HEIMDALL_BIN, building the debug binary of REPO when none is given.
heimdall_bin() {
    if [ -z "${HEIMDALL_BIN:-}" ]; then
        (cd "$1" && cargo build --quiet --locked)
        export HEIMDALL_BIN="$1/target/debug/heimdall"
    fi
}
