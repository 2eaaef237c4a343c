#!/usr/bin/env bash
# The process server under a fleet's load, against the direct path, in one
# run: simulated machines (20 at 2 MB/s, one at 25 MB/s, 30% of chunks
# shared across machines) for BENCH_SECS (120) s, first forwarded through
# one `hrl-shipper serve`, then shipped by one local `run --repo` each,
# both into Azurite. Called by `scripts/bench.sh gateway`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
cargo build --release -q -p hrl-shipper --bin hrl-shipper --example bench_gateway
work=$(mktemp -d /var/tmp/hrl-bench-gateway-XXXXXX)
cleanup() {
    stop_azurite
    rm -rf "$work"
}
trap cleanup EXIT
# An interrupted run stops here (cleanup runs on EXIT), never goes on
# with its loop devices detached.
trap 'exit 130' INT TERM
start_azurite
target/release/examples/bench_gateway "$PWD/target/release" "$work" \
    "az://bench-gw-$(date +%s)/repo"
