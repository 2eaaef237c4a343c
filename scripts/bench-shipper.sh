#!/usr/bin/env bash
# Ship and restore throughput of hrl against restic on the same bytes, in one
# run; and an incremental case (1% of chunks changed). Called by
# `scripts/bench.sh shipper`. Needs root (loop device) and installs restic.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ "$(id -u)" -eq 0 ] || { echo "bench shipper needs root" >&2; exit 2; }
command -v restic >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic >/dev/null; }

gib=${BENCH_GIB:-4}
cargo build --release -q -p hrl-agent -p hrl-shipper -p hrl-format
bin=$PWD/target/release
work=$(mktemp -d /var/tmp/hrl-bench-shipper-XXXXXX)
loop=""; apid=""
cleanup() {
    stop_azurite
    [ -n "$apid" ] && kill -TERM "$apid" 2>/dev/null && wait "$apid" 2>/dev/null || true
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
# An interrupted run stops here (cleanup runs on EXIT), never goes on
# with its loop devices detached.
trap 'exit 130' INT TERM
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }

step "a ${gib} GiB image: half random (incompressible), a quarter base64 text (compressible), a quarter zeros"
python3 - "$work/disk.img" "$gib" <<'PY'
import base64, os, sys
path, gib = sys.argv[1], int(sys.argv[2])
mib = 1 << 20
with open(path, "wb") as f:
    for i in range(gib * 1024):
        k = i % 4
        if k < 2:
            f.write(os.urandom(mib))
        elif k == 2:
            f.write(base64.b64encode(os.urandom(mib * 3 // 4))[:mib])
        else:
            f.seek(mib, 1)
    f.truncate(gib << 30)
PY
data_bytes=$(python3 -c "print($gib * 3 // 4 * (1 << 30))")
loop=$(losetup --find --show "$work/disk.img")

step "agent: initial sync into a spool, then a point"
"$bin/hrl-agent" run --device "$loop" --spool "$work/spool" --name bench --point-interval 0 \
    --spool-limit 64GiB 2>"$work/agent.log" &
apid=$!
for _ in $(seq 3000); do
    "$bin/hrl-agent" status --json --spool "$work/spool" 2>/dev/null | grep -q '"mode": "data"' && break
    sleep 0.2
done
"$bin/hrl-agent" point --disk bench --spool "$work/spool"
disk=$(python3 -c "import json;print(json.load(open('$work/spool/bench.state.json'))['disk_id'])")

# A copy of the spool for the Azurite run (shipping deletes what it shipped).
cp -a "$work/spool" "$work/spool-az"

export RESTIC_PASSWORD=bench-only-password RESTIC_CACHE_DIR="$work/restic-cache"
"$bin/hrl-shipper" init --repo "file://$work/hrl-repo" --key-file "$work/key" >/dev/null
restic init --repo "$work/restic-repo" -q

step "initial: hrl ship vs restic backup of the same image"
sync
t0=$(now); "$bin/hrl-shipper" run --once --repo "file://$work/hrl-repo" --key-file "$work/key" --spool "$work/spool" 2>/dev/null; t1=$(now)
hrl_ship=$(secs "$t0" "$t1")
t0=$(now); restic backup --repo "$work/restic-repo" -q "$work/disk.img"; t1=$(now)
restic_backup=$(secs "$t0" "$t1")

step "incremental: 1% of the chunks change"
python3 - "$loop" "$gib" <<'PY'
import os, random, sys
dev, gib = sys.argv[1], int(sys.argv[2])
chunks = gib * 16384
random.seed(5)
fd = os.open(dev, os.O_WRONLY)
for c in random.sample(range(chunks), chunks // 100):
    os.pwrite(fd, os.urandom(65536), c * 65536)
os.fsync(fd)
os.close(fd)
PY
"$bin/hrl-agent" point --disk bench --spool "$work/spool"
t0=$(now); "$bin/hrl-shipper" run --once --repo "file://$work/hrl-repo" --key-file "$work/key" --spool "$work/spool" 2>/dev/null; t1=$(now)
hrl_incr=$(secs "$t0" "$t1")
t0=$(now); restic backup --repo "$work/restic-repo" -q "$work/disk.img"; t1=$(now)
restic_incr=$(secs "$t0" "$t1")
kill -TERM "$apid"; wait "$apid" || true; apid=""

step "restore of the latest point vs restic restore"
# Both restores are timed until their data is on disk: hrl restore fsyncs
# its target; a `sync` ends restic's timing (whatever it syncs itself).
sync
t0=$(now); "$bin/hrl-shipper" restore --repo "file://$work/hrl-repo" --key-file "$work/key" --disk "$disk" --to "$work/hrl-restore.img" >/dev/null; t1=$(now)
hrl_restore=$(secs "$t0" "$t1")
sync
t0=$(now); restic restore latest --repo "$work/restic-repo" -q --target "$work/restic-restore"; sync; t1=$(now)
restic_restore=$(secs "$t0" "$t1")
cmp "$work/hrl-restore.img" "$loop" && echo "hrl restore is identical to the device"
rm -rf "$work/hrl-restore.img" "$work/restic-restore"

step "Azurite: hrl ship of the first point vs a raw upload of the same non-zero bytes (16 MiB blobs, 4 at a time)"
cargo build --release -q -p hrl-shipper --example raw_upload
start_azurite
az="az://bench$(date +%s)"
"$bin/hrl-shipper" init --repo "$az/hrl" --key-file "$work/key-az" >/dev/null
t0=$(now); "$bin/hrl-shipper" run --once --repo "$az/hrl" --key-file "$work/key-az" --spool "$work/spool-az" 2>/dev/null; t1=$(now)
hrl_az=$(secs "$t0" "$t1")
read -r raw_bytes raw_az < <(target/release/examples/raw_upload "$az/raw" "$work/disk.img")
stop_azurite

python3 - "$gib" "$data_bytes" "$hrl_ship" "$restic_backup" "$hrl_incr" "$restic_incr" "$hrl_restore" "$restic_restore" "$(du -sb "$work/hrl-repo" | cut -f1)" "$(du -sb "$work/restic-repo" | cut -f1)" "$hrl_az" "$raw_bytes" "$raw_az" <<'PY'
import sys
gib, data, hs, rb, hi, ri, hr, rr, hsize, rsize, haz, rawb, rawaz = sys.argv[1:]
haz, rawb, rawaz = float(haz), int(rawb), float(rawaz)
gib=int(gib); data=int(data); hs,rb,hi,ri,hr,rr=map(float,(hs,rb,hi,ri,hr,rr))
mb = lambda b, s: b / s / 1e6
print()
print(f"{gib} GiB image, {data/1e9:.2f} GB of non-zero data (local repositories on the same disk):")
print(f"  initial   hrl ship {hs:6.1f} s ({mb(data,hs):5.0f} MB/s)   restic backup {rb:6.1f} s ({mb(data,rb):5.0f} MB/s)   ratio {rb/hs:.2f}x")
print(f"  1% change hrl ship {hi:6.1f} s                 restic backup {ri:6.1f} s                 ratio {ri/hi:.1f}x")
print(f"  restore   hrl      {hr:6.1f} s ({mb(gib<<30,hr):5.0f} MB/s)   restic restore {rr:6.1f} s ({mb(gib<<30,rr):5.0f} MB/s)   ratio {rr/hr:.2f}x")
print(f"  repository size: hrl {int(hsize)/1e9:.2f} GB, restic {int(rsize)/1e9:.2f} GB")
print(f"  Azurite   hrl ship {haz:6.1f} s ({mb(data,haz):5.0f} MB/s)   raw upload {rawaz:6.1f} s ({mb(rawb,rawaz):5.0f} MB/s)   ratio {mb(data,haz)/mb(rawb,rawaz):.2f} of raw")
PY
