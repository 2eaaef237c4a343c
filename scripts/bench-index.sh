#!/usr/bin/env bash
# The chunk index: the local redb file against the in-memory map it
# replaces, at N synthetic entries (default 50 million; BENCH_INDEX_N);
# then `check` and `prune` on a synthetic repository of N index entries,
# and an index file following the prune (BENCH_PRUNE=0 skips them). Each
# phase is its own process, so each peak RSS is its own. Called by `scripts/bench.sh index`. Needs about 300
# bytes per entry of free disk in /var/tmp (and, for the map, about 250
# bytes per entry of memory: BENCH_INDEX_MEMORY=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

n=${BENCH_INDEX_N:-50000000}
cargo build --release -q -p hrl-shipper --example bench_index --example bench_prune
bin=$PWD/target/release/examples/bench_index
prune_bin=$PWD/target/release/examples/bench_prune
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
if [ "${BENCH_PRUNE:-1}" != 0 ]; then
    rm -f "$work/index.redb"
    step "check and prune on a repository of $n index entries (2000 disks referencing half the packs), sorted on disk in TMPDIR"
    "$prune_bin" make "$work/prune" "$n" 2000
    step "a process server's index file: first load from the index objects; check; prune; the file follows the prune; check"
    TMPDIR=$work "$prune_bin" index "$work/prune" "$n"
    TMPDIR=$work "$prune_bin" check "$work/prune" "$n"
    TMPDIR=$work "$prune_bin" prune "$work/prune" "$n"
    TMPDIR=$work "$prune_bin" index "$work/prune" "$n"
    TMPDIR=$work "$prune_bin" check "$work/prune" "$n"
fi
