#!/usr/bin/env bash
# Tracker overhead: fio on a loop device over a file in tmpfs, with and
# without `hrl-agent track`, alternating runs; prints throughput ratios and
# the agent's CPU use. Called by `scripts/bench.sh tracker`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_test_deps
[ "$(id -u)" -eq 0 ] || { echo "bench tracker needs root (loop devices, tracefs)" >&2; exit 2; }

secs=${BENCH_SECONDS:-10}
rounds=${BENCH_ROUNDS:-2}
cargo build --release -q -p hrl-agent
agent=target/release/hrl-agent
work=$(mktemp -d /dev/shm/hrl-bench-XXXXXX)
spool=$(mktemp -d /dev/shm/hrl-bench-spool-XXXXXX)
loop=""
apid=""
cleanup() {
    [ -n "$apid" ] && kill -TERM "$apid" 2>/dev/null && wait "$apid" 2>/dev/null || true
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
    rm -rf "$work" "$spool"
}
trap cleanup EXIT
# An interrupted run stops here (cleanup runs on EXIT), never goes on
# with its loop devices detached.
trap 'exit 130' INT TERM
truncate -s 4G "$work/disk.img"
loop=$(losetup --find --show "$work/disk.img")
# Write the whole device once so fio measures overwrites, not tmpfs allocation.
dd if=/dev/zero of="$loop" bs=1M count=4096 oflag=direct status=none

fio_bw() { # name rw bs iodepth -> prints bytes/s
    fio --name="$1" --filename="$loop" --rw="$2" --bs="$3" --iodepth="$4" --ioengine=io_uring \
        --direct=1 --runtime="$secs" --time_based --size=4G --group_reporting --output-format=json 2>/dev/null |
        python3 -c 'import json,sys; j=json.load(sys.stdin); print(int(j["jobs"][0]["write"]["bw_bytes"]))'
}
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

declare -A base tracked cpu
for w in "rand4k randwrite 4k 32" "seq1m write 1m 8"; do
    set -- $w
    base[$1]=0; tracked[$1]=0; cpu[$1]=0
done
for r in $(seq "$rounds"); do
    for w in "rand4k randwrite 4k 32" "seq1m write 1m 8"; do
        set -- $w
        b=$(fio_bw "$1" "$2" "$3" "$4")
        "$agent" track --device "$loop" --spool "$spool" --segment-size 64MiB ${AGENT_ARGS:-} 2>"$work/agent.log" &
        apid=$!
        for _ in $(seq 100); do ls /sys/kernel/tracing/instances | grep -q "hrl-agent-$apid-" && break; sleep 0.05; done
        t0=$(ticks "$apid"); s0=$(date +%s.%N)
        t=$(fio_bw "$1" "$2" "$3" "$4")
        t1=$(ticks "$apid"); s1=$(date +%s.%N)
        kill -TERM "$apid"; wait "$apid"; apid=""
        find "$spool" -name '*.hrl' -delete
        c=$(python3 -c "print(($t1-$t0)/$(getconf CLK_TCK)/($s1-$s0)*100)")
        echo "round $r $1: untracked $((b/1000000)) MB/s, tracked $((t/1000000)) MB/s, agent CPU ${c}% of one core"
        base[$1]=$((${base[$1]} + b)); tracked[$1]=$((${tracked[$1]} + t))
        cpu[$1]=$(python3 -c "print(${cpu[$1]} + $c)")
    done
done
echo
echo "tracker overhead ($rounds rounds x ${secs}s, fio io_uring O_DIRECT on a tmpfs-backed loop device):"
for k in rand4k seq1m; do
    python3 -c "print(f'  $k: tracked/untracked throughput ratio {${tracked[$k]}/${base[$k]}:.3f}, agent CPU {${cpu[$k]}/$rounds:.1f}% of one core')"
done
