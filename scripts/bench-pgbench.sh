#!/usr/bin/env bash
# What shipping off the machine gives a database back. PostgreSQL under
# pgbench on a one-CPU "machine" (CPU 0: postgres, pgbench, the agent and
# the machine's shipping process), with the blob store and the process
# server elsewhere (CPU 1: Azurite, `hrl-shipper serve`). In one run, on
# one database on an ext4 loop device: tps with no replication, with agent
# + local `run --repo`, with agent + forwarder through the process server,
# and with no replication again (the database's own drift). Called by
# `scripts/bench.sh pgbench`. BENCH_SECS (60) per run, PGBENCH_SCALE (20),
# PGBENCH_CLIENTS (4), AGENT_FLAGS (more `hrl-agent run` options, e.g.
# "--hot-delay 5s"), CHUNK_SIZE (65536: the repositories' and the agent's
# chunk); synchronous_commit is off so the database is bound by CPU, not
# by the disk's flushes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_test_deps
[ "$(id -u)" -eq 0 ] || { echo "bench pgbench needs root" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "bench pgbench needs two CPUs (the machine and elsewhere)" >&2; exit 2; }
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$pgbin" ]; then
    step "apt-get install postgresql"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

secs=${BENCH_SECS:-60}
scale=${PGBENCH_SCALE:-20}
clients=${PGBENCH_CLIENTS:-4}
chunk=${CHUNK_SIZE:-65536}
export INIT_FLAGS="--chunk-size $chunk"
cargo build --release -q -p hrl-agent -p hrl-shipper
agent=$PWD/target/release/hrl-agent
shipper=$PWD/target/release/hrl-shipper
work=$(mktemp -d /var/tmp/hrl-bench-pgbench-XXXXXX)
chmod 755 "$work"
loop=""; apid=""; spid=""; pg=""
as_pg() { runuser -u postgres -- "$@"; }
cleanup() {
    stop_pid "$spid"; stop_pid "$apid"
    [ -n "$pg" ] && as_pg "$pgbin/pg_ctl" -D "$pg" -m fast -w stop >/dev/null 2>&1 || true
    stop_pid "$GATEWAY_PID"
    mountpoint -q "$work/mnt" 2>/dev/null && umount "$work/mnt" || true
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
    stop_azurite
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_azurite
taskset -a -p -c 1 "$AZURITE_PID" >/dev/null
key="$work/key"
tag=$(date +%s)
start_bench_gateway "$shipper" "$work" "az://bench-pgbench-$tag/gw" "$key" taskset -c 1

truncate -s 2G "$work/disk.img"
loop=$(losetup --find --show "$work/disk.img")
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$loop"
mkdir "$work/mnt" "$work/sock"
mount "$loop" "$work/mnt"
pg="$work/mnt/pg"
mkdir "$pg"
chown postgres "$pg" "$work/sock"
port=$(free_port)
as_pg "$pgbin/initdb" -D "$pg" -A trust >/dev/null
as_pg taskset -c 0 "$pgbin/pg_ctl" -D "$pg" -l "$work/sock/pg.log" -w \
    -o "-k $work/sock -p $port -c listen_addresses='' -c synchronous_commit=off" start >/dev/null
step "pgbench -i -s $scale"
as_pg taskset -c 0 "$pgbin/pgbench" -h "$work/sock" -p "$port" -i -q -s "$scale" postgres >/dev/null 2>&1

tps() { # SECONDS: tps of one pgbench run on CPU 0 (its output kept in $work/pgbench.out)
    as_pg taskset -c 0 "$pgbin/pgbench" -h "$work/sock" -p "$port" -c "$clients" -j 1 -T "$1" -n postgres \
        >"$work/pgbench.out" 2>&1 || true
    awk '/^tps = / {print $3; exit}' "$work/pgbench.out"
}
check_tps() { # VALUE: stops the bench with pgbench's output when a run gave no tps
    [ -n "$1" ] || { echo "pgbench gave no tps:" >&2; cat "$work/pgbench.out" >&2; exit 1; }
}

# protect MODE: starts the agent and the machine's shipping process on
# CPU 0 and waits until the initial copy has left the spool.
protect() {
    local mode=$1 spool="$work/spool-$1"
    # shellcheck disable=SC2086 # AGENT_FLAGS is split into options
    taskset -c 0 "$agent" run --device "$loop" --spool "$spool" --name "pg-$mode" --point-interval 10s \
        --spool-limit 4GiB --chunk-size "$chunk" ${AGENT_FLAGS:-} 2>"$work/agent-$mode.log" &
    apid=$!
    wait_for_data "$agent" "$spool" 900 ||
        { echo "agent did not reach data mode:" >&2; cat "$work/agent-$mode.log" >&2; exit 1; }
    if [ "$mode" = local ]; then
        # shellcheck disable=SC2086 # INIT_FLAGS is split into options
        "$shipper" init --repo "az://bench-pgbench-$tag/local" --key-file "$key" $INIT_FLAGS >/dev/null
        taskset -c 0 "$shipper" run --repo "az://bench-pgbench-$tag/local" --key-file "$key" --spool "$spool" \
            --metrics-listen "" >/dev/null 2>"$work/shipper-$mode.log" &
    else
        taskset -c 0 "$shipper" run --identity "$work/machine.id" --spool "$spool" --metrics-listen "" \
            >/dev/null 2>"$work/shipper-$mode.log" &
    fi
    spid=$!
    for _ in $(seq 300); do
        [ "$(find "$spool" -name '*.hrl' -printf '%s\n' | awk '{s += $1} END {print s + 0}')" -lt $((64 << 20)) ] && break
        sleep 1
    done
}

captured() { # SPOOL: bytes the agent has read from the device so far
    "$agent" status --json --spool "$1" | python3 -c 'import json, sys; print(sum(d["capture_bytes"] for d in json.load(sys.stdin)["disks"]))'
}

# measure MODE: one pgbench run under protection; sets MEASURED to its
# tps, the agent's and shipping process's CPU ticks and the bytes the
# agent captured during it.
MEASURED=""
measure() {
    local mode=$1 a0 s0 c0 t
    protect "$mode"
    a0=$(ticks "$apid"); s0=$(ticks "$spid"); c0=$(captured "$work/spool-$mode")
    t=$(tps "$secs")
    check_tps "$t"
    MEASURED="$t $(($(ticks "$apid") - a0)) $(($(ticks "$spid") - s0)) $(($(captured "$work/spool-$mode") - c0))"
    stop_pid "$spid"; spid=""
    stop_pid "$apid"; apid=""
}

step "warm-up (20 s, not counted)"
tps 20 >/dev/null
step "no replication ($secs s)"
base1=$(tps "$secs")
check_tps "$base1"
step "agent + local run --repo ($secs s)"
measure local
local_run=$MEASURED
step "agent + forwarder through the process server ($secs s)"
measure gateway
gateway_run=$MEASURED
step "no replication again ($secs s)"
base2=$(tps "$secs")
check_tps "$base2"
python3 - "$base1" "$base2" $local_run $gateway_run "$secs" "$clients" "$scale" "$chunk" <<'EOF'
import sys
b1, b2 = float(sys.argv[1]), float(sys.argv[2])
lt, la, ls, lc, gt, ga, gs, gc = (float(x) for x in sys.argv[3:11])
secs, clients, scale, chunk = sys.argv[11:15]
base = (b1 + b2) / 2
print(f"pgbench -c {clients} -s {scale}, {secs} s per run, chunks of {chunk} bytes, the machine on one CPU:")
print(f"  no replication: {b1:.0f} tps before, {b2:.0f} after (mean {base:.0f})")
print(f"  agent + local run --repo: {lt:.0f} tps ({lt / base:.2f} of no replication); agent {la / 100:.1f} s CPU, local shipper {ls / 100:.1f} s; {lc / 1e9:.2f} GB captured")
print(f"  agent + forwarder:        {gt:.0f} tps ({gt / base:.2f} of no replication); agent {ga / 100:.1f} s CPU, forwarder {gs / 100:.1f} s; {gc / 1e9:.2f} GB captured")
print(f"tps lost to replication: local {100 * (1 - lt / base):.0f}%, through the process server {100 * (1 - gt / base):.0f}%")
EOF
