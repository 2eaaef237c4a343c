#!/usr/bin/env bash
# Benchmarks that print ratios against a baseline measured in the same run.
# Usage: scripts/bench.sh hrl [MiB]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

what=${1:-}
case "$what" in
hrl)
    mib=${2:-1024}
    step "hrl format: writer and reader vs write(2)/read(2) on tmpfs (/dev/shm), $mib MiB"
    cargo build --release -q -p hrl-format --example bench
    target/release/examples/bench /dev/shm "$mib"
    ;;
tracker)
    exec bash scripts/bench-tracker.sh
    ;;
capture)
    exec bash scripts/bench-capture.sh
    ;;
groups)
    exec bash scripts/bench-groups.sh
    ;;
points)
    exec bash scripts/bench-points.sh
    ;;
shipper)
    exec bash scripts/bench-shipper.sh
    ;;
gateway)
    exec bash scripts/bench-gateway.sh
    ;;
machine)
    exec bash scripts/bench-machine.sh
    ;;
pgbench)
    exec bash scripts/bench-pgbench.sh
    ;;
azure)
    exec bash scripts/bench-azure.sh
    ;;
index)
    exec bash scripts/bench-index.sh
    ;;
memory)
    exec bash scripts/bench-memory.sh
    ;;
reboot)
    exec bash scripts/bench-reboot.sh
    ;;
*)
    echo "usage: scripts/bench.sh hrl [MiB] | tracker | capture | points | groups | shipper | gateway | machine | pgbench | index | azure | memory | reboot" >&2
    exit 2
    ;;
esac
