#!/usr/bin/env bash
# The chunk index: the local redb file against the in-memory map it
# replaces, at N synthetic entries (default 50 million; BENCH_INDEX_N).
# Each phase is its own process, so each peak RSS is its own. Called by
# `scripts/bench.sh index`. Needs about 300 bytes per entry of free disk
# in /var/tmp (and, for the map, about 250 bytes per entry of memory:
# BENCH_INDEX_MEMORY=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

n=${BENCH_INDEX_N:-50000000}
cargo build --release -q -p hrl-shipper --example bench_index
bin=$PWD/target/release/examples/bench_index
work=$(mktemp -d /var/tmp/hrl-bench-index-XXXXXX)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

step "index file: bulk load of $n entries (sorted runs merged), then open and 1M lookups in batches of 64"
"$bin" build "$work/index.redb" "$n"
"$bin" open "$work/index.redb" "$n"
step "index file: 100000 more entries, one index object of 1000 per transaction (what shipping adds)"
"$bin" add "$work/index.redb" 100000
if [ "${BENCH_INDEX_MEMORY:-1}" != 0 ]; then
    step "in-memory map (what the file replaces): $n entries, the same lookups"
    "$bin" memory "$n"
fi
