#!/usr/bin/env bash
# Initial-sync (scan) throughput of the agent, io_uring vs pread, against
# `dd iflag=direct` of the same device with the agent's chunk size as the
# baseline, all in one run. Called by `scripts/bench.sh capture`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ "$(id -u)" -eq 0 ] || { echo "bench capture needs root" >&2; exit 2; }

mib=${BENCH_MIB:-2048}
cargo build --release -q -p hrl-agent
agent=target/release/hrl-agent
# The image lives on disk (real reads); the spool on tmpfs so spool writes
# do not compete with the reads being measured.
work=$(mktemp -d "${TMPDIR:-/var/tmp}/hrl-bench-capture-XXXXXX")
spool=$(mktemp -d /dev/shm/hrl-bench-spool-XXXXXX)
loop=""; apid=""
cleanup() {
    [ -n "$apid" ] && kill -TERM "$apid" 2>/dev/null && wait "$apid" 2>/dev/null || true
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
    rm -rf "$work" "$spool"
}
trap cleanup EXIT
# An interrupted run stops here (cleanup runs on EXIT), never goes on
# with its loop devices detached.
trap 'exit 130' INT TERM

step "a $mib MiB image of random data on $(df --output=source "$work" | tail -1)"
head -c "$((mib << 20))" /dev/urandom >"$work/disk.img"
sync
loop=$(losetup --find --show --direct-io=on "$work/disk.img")

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }

scan() { # label [env...]
    rm -rf "${spool:?}"/*
    drop
    local t0 t1
    t0=$(now)
    env "${@:2}" "$agent" run --device "$loop" --spool "$spool" --name bench --point-interval 0 \
        --spool-limit 64GiB 2>"$work/agent.log" &
    apid=$!
    for _ in $(seq 6000); do
        "$agent" status --json --spool "$spool" 2>/dev/null | grep -q '"mode": "data"' && break
        sleep 0.05
    done
    t1=$(now)
    kill -TERM "$apid"; wait "$apid" || true; apid=""
    python3 -c "print(f'{$mib/($t1-$t0):.0f}')"
}

drop
t0=$(now); dd if="$loop" of=/dev/null bs=64K iflag=direct status=none; t1=$(now)
base=$(python3 -c "print(f'{$mib/($t1-$t0):.0f}')")
uring=$(scan io_uring)
used=$(grep -o 'io_uring=[a-z]*' "$work/agent.log" | head -1 || true)
pread=$(scan pread HRL_NO_IO_URING=1)
step "results ($mib MiB of random data, 64 KiB chunks)"
printf '%-46s %8s %8s\n' case MiB/s ratio
printf '%-46s %8s %8s\n' "dd iflag=direct bs=64K (baseline)" "$base" 1.00
printf '%-46s %8s %8s\n' "agent initial sync, io_uring ($used)" "$uring" "$(python3 -c "print(f'{$uring/$base:.2f}')")"
printf '%-46s %8s %8s\n' "agent initial sync, pread" "$pread" "$(python3 -c "print(f'{$pread/$base:.2f}')")"
