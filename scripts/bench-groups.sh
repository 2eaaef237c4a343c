#!/usr/bin/env bash
# Freeze durations of 3-member consistency-group points: three ext4 loop
# devices, three agent processes, one coordinator on loopback, a steady fio
# write load on every member. Called by `scripts/bench.sh groups`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_test_deps
[ "$(id -u)" -eq 0 ] || { echo "bench groups needs root" >&2; exit 2; }

points=${BENCH_POINTS:-30}
rate=${FIO_RATE:-20m}
cargo build --release -q -p hrl-agent
agent=$PWD/target/release/hrl-agent
work=$(mktemp -d /dev/shm/hrl-bench-groups-XXXXXX)
loops=(); pids=(); fios=()
cleanup() {
    for p in "${fios[@]}" "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${fios[@]}" "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for i in 0 1 2; do mountpoint -q "$work/m$i" 2>/dev/null && umount "$work/m$i" || true; done
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
# An interrupted run stops here (cleanup runs on EXIT), never goes on
# with its loop devices detached.
trap 'exit 130' INT TERM
"$agent" group-key "$work/group.key" >/dev/null
members=()
for i in 0 1 2; do
    truncate -s 1G "$work/d$i.img"
    l=$(losetup --find --show "$work/d$i.img"); loops+=("$l")
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$l"
    mkdir "$work/m$i"; mount "$l" "$work/m$i"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$agent" run --device "$l" --spool "$work/s$i" --name "m$i" --point-interval 0 --spool-limit 4GiB \
        --metrics-listen "" --group bench --group-listen "127.0.0.1:$port" --group-key "$work/group.key" \
        2>"$work/agent$i.log" &
    pids+=($!)
    members+=(--member "127.0.0.1:$port")
done
for i in 0 1 2; do
    for _ in $(seq 600); do
        "$agent" status --json --spool "$work/s$i" 2>/dev/null | grep -q '"mode": "data"' && break
        sleep 0.2
    done
    # Stand-in shipper: drop sealed segments so the spool stays small.
    ( while sleep 1; do find "$work/s$i" -name '*.hrl' -perm 0400 -delete 2>/dev/null || true; done ) &
    fios+=($!)
    fio --name=w --thread --directory="$work/m$i" --rw=randwrite --bs=64k --size=256m --ioengine=psync --direct=1 \
        --fsync=16 --time_based --runtime=3600 --rate="$rate" >/dev/null 2>&1 &
    fios+=($!)
done
sleep 2
step "$points group points, 3 members, fio randwrite 64k at $rate/s on each"
"$agent" coordinate --group bench "${members[@]}" --key-file "$work/group.key" --interval 1s \
    --count "$points" --json >"$work/points.jsonl" || true
python3 - "$work/points.jsonl" "$rate" <<'PY'
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
ok = [r for r in rs if r["ok"]]
def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
fr = [r["max_freeze_ms"] for r in ok]; win = [r["window_ms"] for r in ok]
print(f"3-member group points, fio randwrite 64k at {sys.argv[2]}/s per member: {len(ok)} of {len(rs)} ok")
print(f"  longest member freeze: p50 {pct(fr,50):.1f} ms  p99 {pct(fr,99):.1f} ms  max {max(fr):.1f} ms")
print(f"  freeze order to last commit (window): p50 {pct(win,50):.1f} ms  p99 {pct(win,99):.1f} ms")
PY
