#!/usr/bin/env bash
# Time to the first new point after a reboot-like restart of the agent:
# a 64 GiB device with ext4 holding BENCH_DATA_GIB (default 8) GiB of
# files; the agent's initial sync, a point, a clean stop, unmount, mount,
# start, first point. Once with the clean-stop fingerprint (no resync) and
# once with --resume-after-clean-stop false (the full resync every restart
# did before), in the same run; the ratio is printed. The device is a
# sparse file on a loop device: its holes read at memory speed, so the
# resync here is faster than on a real 64 GiB disk (the ratio is a lower
# bound); BENCH_RATE (e.g. 200MiB) caps capture reads like a real disk.
# Called by `scripts/bench.sh reboot`. Needs root (loop devices, tracefs).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ "$(id -u)" -eq 0 ] || { echo "bench reboot needs root" >&2; exit 2; }

gib=${BENCH_GIB:-64}
data=${BENCH_DATA_GIB:-8}
rate=${BENCH_RATE:-0}
cargo build --release -q -p hrl-agent
bin=$PWD/target/release
work=$(mktemp -d /var/tmp/hrl-bench-reboot-XXXXXX)
loop=""; apid=""
cleanup() {
    [ -n "$apid" ] && kill -TERM "$apid" 2>/dev/null && wait "$apid" 2>/dev/null || true
    mountpoint -q "$work/mnt" 2>/dev/null && umount "$work/mnt"
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }

# start_agent EXTRA...: starts the agent (tracking $loop, spool $work/spool).
start_agent() {
    "$bin/hrl-agent" run --device "$loop" --spool "$work/spool" --name data --point-interval 0 \
        --metrics-listen "" --spool-limit 32GiB --max-freeze 10s "$@" 2>>"$work/agent.log" &
    apid=$!
}
# first_point: seconds from now until the first point is taken.
first_point() {
    local t0 out
    t0=$(now)
    while :; do
        kill -0 "$apid" 2>/dev/null || { echo "the agent exited:" >&2; tail -5 "$work/agent.log" >&2; exit 1; }
        out=$("$bin/hrl-agent" point --json --disk data --spool "$work/spool" 2>/dev/null || true)
        if grep -q '"ok": *true' <<<"$out"; then break; fi
        sleep 0.2
    done
    awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'
}
field() { "$bin/hrl-agent" status --json --spool "$work/spool" | python3 -c "import json,sys; print(json.load(sys.stdin)['disks'][0]['$1'])"; }
stop_agent() { kill -TERM "$apid"; wait "$apid" || true; apid=""; }
reboot_fs() { umount "$work/mnt"; mount "$loop" "$work/mnt"; }

step "$gib GiB sparse loop device, ext4, $data GiB of files"
truncate -s "${gib}G" "$work/disk.img"
loop=$(losetup --find --show "$work/disk.img")
mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0,nodiscard "$loop"
mkdir -p "$work/mnt"
mount "$loop" "$work/mnt"
for i in $(seq "$data"); do
    dd if=/dev/urandom of="$work/mnt/file$i" bs=4M count=256 status=none
done
sync

step "initial sync, then a clean stop"
start_agent
t=$(first_point)
echo "initial sync + first point: $t s"
stop_agent

args=()
[ "$rate" != 0 ] && args=(--capture-rate "$rate")
step "restart after a clean stop, unmount, mount: with the fingerprint"
reboot_fs
start_agent "${args[@]}"
t_after=$(first_point)
read_after=$(field capture_bytes)
why_after=$(field start)
stop_agent

step "the same with --resume-after-clean-stop false (a full resync, as before)"
reboot_fs
start_agent --resume-after-clean-stop false "${args[@]}"
t_before=$(first_point)
read_before=$(field capture_bytes)
why_before=$(field start)
stop_agent

echo
echo "with the fingerprint:    $why_after"
echo "without:                 $why_before"
awk -v a="$t_after" -v b="$t_before" -v ra="$read_after" -v rb="$read_before" -v g="$gib" -v d="$data" -v r="$rate" 'BEGIN {
    printf "%d GiB device, %d GiB of files, capture rate %s: first point after the restart: %.1f s with the fingerprint (read %.0f MiB) vs %.1f s with a resync (read %.0f MiB): %.0fx sooner\n",
        g, d, (r == "0" ? "unlimited" : r), a, ra / 1048576, b, rb / 1048576, b / (a > 0 ? a : 0.1) }'
