#!/usr/bin/env bash
# The agent's memory on big disks: peak RSS (VmHWM) of `hrl-agent run` on
# sparse loop devices of 1 TiB and just under 16 TiB (ext4's file size
# limit), from start through the first part of the initial sync (capture
# rate-limited), printed per TiB. Then a whole life cycle with a 1 TiB
# disk's chunk count: 64 GiB at 4 KiB chunks (16 Mi chunks, as 1 TiB at
# 64 KiB): initial sync, points, a clean stop, the resync after restart,
# a point; VmHWM of each run. Called by `scripts/bench.sh memory`.
# Needs root (loop devices, tracefs).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ "$(id -u)" -eq 0 ] || { echo "bench memory needs root" >&2; exit 2; }

secs=${BENCH_SECS:-60}
rate=${BENCH_RATE:-200MiB}
cargo build --release -q -p hrl-agent
bin=$PWD/target/release
work=$(mktemp -d /var/tmp/hrl-bench-memory-XXXXXX)
loop=""; apid=""
cleanup() {
    [ -n "$apid" ] && kill -TERM "$apid" 2>/dev/null && wait "$apid" 2>/dev/null || true
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
# An interrupted run stops here (cleanup runs on EXIT).
trap 'exit 130' INT TERM

kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }

results=()
for gib in 1024 16383; do
    step "$gib GiB sparse loop device: agent for ${secs}s, capture at $rate"
    rm -f "$work/disk.img"
    truncate -s "${gib}G" "$work/disk.img"
    loop=$(losetup --find --show "$work/disk.img")
    "$bin/hrl-agent" run --device "$loop" --spool "$work/spool-$gib" --name big --point-interval 2s \
        --capture-rate "$rate" --metrics-listen "" 2>"$work/agent.log" &
    apid=$!
    peak_rss=0
    for _ in $(seq "$secs"); do
        sleep 1
        kill -0 "$apid" 2>/dev/null || { echo "the agent exited:" >&2; tail -5 "$work/agent.log" >&2; exit 1; }
        rss=$(kib "$apid" VmRSS)
        [ "$rss" -gt "$peak_rss" ] && peak_rss=$rss
    done
    hwm=$(kib "$apid" VmHWM)
    progress=$(grep -o 'progress="[0-9.]*%"' "$work/agent.log" | tail -1 || true)
    kill -TERM "$apid"; wait "$apid" || true; apid=""
    losetup -d "$loop"; loop=""
    hashes=$(stat -c %s "$work/spool-$gib/big.hashes")
    results+=("$gib $hwm $peak_rss $hashes ${progress:-progress=?}")
    rm -rf "$work/spool-$gib" "$work/disk.img"
done

# lifecycle SPOOL OUT: waits for data mode, takes 3 points; writes VmHWM
# and the scan's seconds to OUT (run in this shell, so cleanup sees apid).
lifecycle() {
    "$bin/hrl-agent" run --device "$loop" --spool "$1" --name big --point-interval 0 \
        --chunk-size 4KiB --metrics-listen "" --spool-limit 64GiB 2>>"$work/agent.log" &
    apid=$!
    local t0=$SECONDS
    until "$bin/hrl-agent" status --json --spool "$1" 2>/dev/null | grep -q '"mode": "data"'; do
        kill -0 "$apid" 2>/dev/null || { echo "the agent exited:" >&2; tail -5 "$work/agent.log" >&2; exit 1; }
        sleep 1
    done
    local scan=$((SECONDS - t0))
    for _ in 1 2 3; do "$bin/hrl-agent" point --disk big --spool "$1" >/dev/null; done
    local hwm
    hwm=$(kib "$apid" VmHWM)
    kill -TERM "$apid"; wait "$apid" || true; apid=""
    echo "$hwm $scan" >"$2"
}
step "life cycle: 64 GiB sparse at 4 KiB chunks (a 1 TiB disk's chunk count)"
truncate -s 64G "$work/disk.img"
loop=$(losetup --find --show "$work/disk.img")
lifecycle "$work/spool-life" "$work/life.1"
lifecycle "$work/spool-life" "$work/life.2"
read -r hwm_first scan_first <"$work/life.1"
read -r hwm_again scan_again <"$work/life.2"
losetup -d "$loop"; loop=""

echo
awk -v a="$hwm_first" -v b="$hwm_again" -v s1="$scan_first" -v s2="$scan_again" 'BEGIN {
    printf "life cycle, 16 Mi chunks: initial sync (%d s) + 3 points: VmHWM %.1f MiB; after a restart, resync (%d s) + 3 points: VmHWM %.1f MiB\n", s1, a / 1024, s2, b / 1024 }'
for r in "${results[@]}"; do
    read -r gib hwm rss hashes progress <<<"$r"
    python3 - "$gib" "$hwm" "$rss" "$hashes" "$progress" <<'PY'
import sys
gib, hwm, rss, hashes, progress = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
tib = gib / 1024
print(f"{gib:6d} GiB: VmHWM {hwm/1024:7.1f} MiB ({hwm/1024/tib:6.1f} MiB per TiB; target < 64)   "
      f"max sampled RSS {rss/1024:6.1f} MiB   .hashes file {hashes/2**20:.0f} MiB on disk   initial sync {progress}")
PY
done
