#!/usr/bin/env bash
# The protected machine's CPU per GB of changed data, as issue 15 defines
# it: agent + forwarder (shipping through a process server) against
# agent + local `run --repo`, on one real agent tracking an ext4 loop
# device under fio random 64 KiB writes at FIO_RATE (20m) for BENCH_SECS
# (60), points every 10 s, both into Azurite; and before the writes, the
# same processes' CPU per minute over BENCH_IDLE_SECS (20) with nothing
# written. The process server's own CPU is printed too but is not the
# machine's. Called by `scripts/bench.sh machine`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_test_deps
[ "$(id -u)" -eq 0 ] || { echo "bench machine needs root" >&2; exit 2; }

secs=${BENCH_SECS:-60}
rate=${FIO_RATE:-20m}
idle_secs=${BENCH_IDLE_SECS:-20}
cargo build --release -q -p hrl-agent -p hrl-shipper
agent=$PWD/target/release/hrl-agent
shipper=$PWD/target/release/hrl-shipper
work=$(mktemp -d /var/tmp/hrl-bench-machine-XXXXXX)
loop=""; apid=""; spid=""; gpid=""
cleanup() {
    stop_pid "$spid"; stop_pid "$apid"; stop_pid "$GATEWAY_PID"
    mountpoint -q "$work/mnt" 2>/dev/null && umount "$work/mnt" || true
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
    stop_azurite
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start_azurite
truncate -s 1G "$work/disk.img"
loop=$(losetup --find --show "$work/disk.img")
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$loop"
mkdir "$work/mnt"
mount "$loop" "$work/mnt"
key="$work/key"
tag=$(date +%s)

# The process server (run 2), started once.
start_bench_gateway "$shipper" "$work" "az://bench-machine-$tag/gw" "$key"
gpid=$GATEWAY_PID

# Requests the forwarder made so far (its status file, rewritten every
# second); 0 without one.
forwarder_requests() {
    python3 -c 'import json,sys
try: print(json.load(open(sys.argv[1] + "/hrl-forwarder.status.json"))["report"]["requests"])
except (OSError, ValueError, KeyError): print(0)' "$1"
}

# run MODE: agent + the machine's shipping process; writes its line to
# $work/line-MODE.
run() {
    local mode=$1 spool="$work/spool-$1"
    rm -f "$work/mnt/w.0.0"
    "$agent" run --device "$loop" --spool "$spool" --name "bench-$mode" --point-interval 10s \
        --spool-limit 4GiB 2>"$work/agent-$mode.log" &
    apid=$!
    wait_for_data "$agent" "$spool" 600 ||
        { echo "agent did not reach data mode:" >&2; cat "$work/agent-$mode.log" >&2; exit 1; }
    if [ "$mode" = local ]; then
        "$shipper" init --repo "az://bench-machine-$tag/local" --key-file "$key" >/dev/null
        "$shipper" run --repo "az://bench-machine-$tag/local" --key-file "$key" --spool "$spool" \
            --metrics-listen "" >/dev/null 2>"$work/shipper-$mode.log" &
    else
        "$shipper" run --identity "$work/machine.id" --spool "$spool" --metrics-listen "" \
            >/dev/null 2>"$work/shipper-$mode.log" &
    fi
    spid=$!
    # The initial copy is shipped and its first points published before
    # the count starts.
    sleep 25
    local a0 s0 g0 a1 s1 g1 bytes idle what
    what=$([ "$mode" = local ] && echo "local run --repo" || echo forwarder)
    # What the machine pays while nothing is written (points still taken).
    a0=$(ticks "$apid"); s0=$(ticks "$spid")
    sleep "$idle_secs"
    idle=$(python3 -c 'import sys; a, s, w, i = sys.argv[1:]; print(f"{int(a) * 0.6 / float(i):.2f} s/min agent, {int(s) * 0.6 / float(i):.2f} s/min {w}")' \
        "$(($(ticks "$apid") - a0))" "$(($(ticks "$spid") - s0))" "$what" "$idle_secs")
    a0=$(ticks "$apid"); s0=$(ticks "$spid"); g0=$(ticks "$gpid")
    local r0; r0=$(forwarder_requests "$spool")
    bytes=$(fio --name=w --directory="$work/mnt" --rw=randwrite --bs=64k --size=512m --ioengine=psync \
        --direct=1 --fsync=16 --time_based --runtime="$secs" --rate="$rate" --output-format=json 2>/dev/null |
        python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["write"]["io_bytes"]))')
    # The last point after the writes (10 s apart) and its shipping.
    sleep 15
    a1=$(ticks "$apid"); s1=$(ticks "$spid"); g1=$(ticks "$gpid")
    local requests=$(($(forwarder_requests "$spool") - r0))
    stop_pid "$spid"; spid=""
    stop_pid "$apid"; apid=""
    python3 - "$mode" "$bytes" "$a0" "$a1" "$s0" "$s1" "$g0" "$g1" "$idle" "$requests" >"$work/line-$mode" <<'EOF'
import sys
mode, b = sys.argv[1], int(sys.argv[2]) / 1e9
a0, a1, s0, s1, g0, g1 = (int(x) / 100 for x in sys.argv[3:9])
agent, ship, gw = a1 - a0, s1 - s0, g1 - g0
what = "local run --repo" if mode == "local" else "forwarder"
print(f"{mode}: {b:.2f} GB changed; agent {agent:.1f} s CPU ({agent / b:.2f} s/GB), {what} {ship:.1f} s ({ship / b:.2f} s/GB), machine {(agent + ship) / b:.2f} s/GB" + (f"; process server {gw:.1f} s ({gw / b:.2f} s/GB); {sys.argv[10]} requests ({b * 1e6 / max(int(sys.argv[10]), 1):.0f} KB each)" if mode != "local" else "") + f"; idle: {sys.argv[9]}")
EOF
}

run local
cat "$work/line-local"
run gateway
cat "$work/line-gateway"
python3 - "$(cat "$work/line-local")" "$(cat "$work/line-gateway")" <<'EOF'
import re, sys
m = [float(re.search(r"machine ([0-9.]+) s/GB", l).group(1)) for l in sys.argv[1:]]
print(f"protected machine's CPU per GB, (agent + forwarder) / (agent + local shipper): {m[1] / m[0]:.2f}")
EOF
