#!/usr/bin/env bash
# Freeze durations under a steady fio write load, spool on tmpfs and on
# disk; and the workload's throughput with the agent capturing vs not.
# Called by `scripts/bench.sh points`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_test_deps
[ "$(id -u)" -eq 0 ] || { echo "bench points needs root" >&2; exit 2; }

secs=${BENCH_SECONDS:-120}
interval=${POINT_INTERVAL:-10s}
rate=${FIO_RATE:-50m}
cargo build --release -q -p hrl-agent
agent=target/release/hrl-agent
work=$(mktemp -d /dev/shm/hrl-bench-XXXXXX)
loop=""; apid=""; spid=""; spool=""
cleanup() {
    [ -n "$apid" ] && kill -TERM "$apid" 2>/dev/null && wait "$apid" 2>/dev/null || true
    [ -n "$spid" ] && kill "$spid" 2>/dev/null || true
    mountpoint -q "$work/mnt" 2>/dev/null && umount "$work/mnt" || true
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
    [ -n "$spool" ] && rm -rf "$spool"
    rm -rf "$work"
}
trap cleanup EXIT
# An interrupted run stops here (cleanup runs on EXIT), never goes on
# with its loop devices detached.
trap 'exit 130' INT TERM
truncate -s 2G "$work/disk.img"
loop=$(losetup --find --show "$work/disk.img")
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$loop"
mkdir "$work/mnt"
mount "$loop" "$work/mnt"

start_agent() { # spool interval
    "$agent" run --device "$loop" --spool "$1" --name bench --point-interval "$2" \
        --spool-limit 4GiB 2>"$work/agent.log" &
    apid=$!
    # Stand-in shipper: drop sealed segments so the spool stays small.
    ( while sleep 1; do find "$1" -name '*.hrl' -perm 0400 -delete 2>/dev/null || true; done ) &
    spid=$!
    wait_for_data "$agent" "$1" 600 && return 0
    echo "agent did not reach data mode" >&2; cat "$work/agent.log" >&2; exit 1
}
stop_agent() {
    kill -TERM "$apid"; wait "$apid" || true; apid=""
    kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; spid=""
}
fio_write() { # seconds [rate]
    local r=()
    [ -n "${2:-}" ] && r=(--rate="$2")
    fio --name=w --directory="$work/mnt" --rw=randwrite --bs=64k --size=768m --ioengine=psync \
        --direct=1 --fsync=16 --time_based --runtime="$1" "${r[@]}" --output-format=json 2>/dev/null |
        python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"]))'
}
freezes() { # p50 p99 max n (ms) over the points the agent logged
    python3 -c '
import re,sys
f=sorted(float(m.group(1)) for m in re.finditer(r"freeze_ms=\"?([0-9.]+)", open(sys.argv[1]).read()))
if not f: print("no points"); sys.exit()
q=lambda p: f[min(len(f)-1,int(round(p*(len(f)-1))))]
print(f"p50 {q(.5):.1f} ms  p99 {q(.99):.1f} ms  max {f[-1]:.1f} ms  over {len(f)} points")' "$work/agent.log"
}

for where in ${SKIP_FREEZE:+none}; do :; done
for where in $([ -n "${SKIP_FREEZE:-}" ] || echo tmpfs disk); do
    if [ "$where" = tmpfs ]; then spool=$(mktemp -d /dev/shm/hrl-bench-spool-XXXXXX); else spool=$(mktemp -d /var/tmp/hrl-bench-spool-XXXXXX); fi
    start_agent "$spool" "$interval"
    fio_write "$secs" "$rate" >/dev/null
    stop_agent
    echo "freeze durations, fio randwrite 64k at $rate/s for ${secs}s, points every $interval, spool on $where: $(freezes)"
    rm -rf "$spool"; spool=""
done

# Throughput with vs without the agent (unthrottled, points every 10 s).
# A warm-up pass first allocates the file, so no run pays for allocation;
# then alternating rounds.
t=${THROUGHPUT_SECONDS:-20}
fio_write "$t" >/dev/null
base=0; with=0
for r in 1 2; do
    b=$(fio_write "$t")
    spool=$(mktemp -d /dev/shm/hrl-bench-spool-XXXXXX)
    start_agent "$spool" 10s
    w=$(fio_write "$t")
    stop_agent
    rm -rf "$spool"; spool=""
    echo "round $r: without agent $((b/1000000)) MB/s, with agent $((w/1000000)) MB/s"
    base=$((base + b)); with=$((with + w))
done
python3 -c "print(f'workload throughput, fio randwrite 64k O_DIRECT on ext4, 2 rounds of ${t}s: without agent {$base/2e6:.0f} MB/s, with agent capturing {$with/2e6:.0f} MB/s, ratio {$with/$base:.2f}')"
