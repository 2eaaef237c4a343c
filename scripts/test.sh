#!/usr/bin/env bash
# Runs every test of hrl: formatting, lints, unit, property, integration and
# root tests. Installs what the tests need on a fresh machine (as root).
# Usage: sudo scripts/test.sh [extra nextest args]
# Starts Azurite on a free loopback port for the blob-store tests and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

install_test_deps browser

step "structure check (scripts/lint.sh)"
bash scripts/lint.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "azurite"
trap stop_azurite EXIT
start_azurite
install_py_deps

step "tests"
# Crash points (the `failpoints` features) are compiled into the test
# builds only; release builds never carry them.
features=(--features hrl-agent/failpoints,hrl-shipper/failpoints,hrl-e2e/failpoints)
# Tests that need root (loop devices, tracefs) or Azurite are reported as
# ignored when those are missing; under CI=true they run and fail instead.
if [ "$(id -u)" -ne 0 ]; then
    if [ "${CI:-}" = true ]; then
        echo "CI=true but not root: the root tests would fail; run as root" >&2
        exit 1
    fi
    echo "not root: the tests that need root are reported as ignored" >&2
fi
# The soak runs 40 s here; scripts/reliability.sh runs it for 10 minutes.
rc=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast "${features[@]}" "$@" || rc=$?
else
    cargo test --workspace --locked --no-fail-fast "${features[@]}" "$@" || rc=$?
fi

step "fuzz targets, 10 s each (scripts/reliability.sh runs them longer)"
bash scripts/fuzz.sh 10 || rc=1
exit $rc
