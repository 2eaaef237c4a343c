#!/usr/bin/env bash
# The main job, end to end, on this machine: a loop device with ext4,
# hrl-agent and hrl-shipper into a local-directory repository, a workload,
# an app-consistent point, a restore checked with e2fsck and file checksums,
# a failback of changed files onto the original, and a short report.
# Cleans up everything it made, also on Ctrl-C.  Usage: sudo scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ "$(id -u)" -eq 0 ] || { echo "demo.sh needs root (loop devices, tracefs, freeze): sudo scripts/demo.sh" >&2; exit 2; }
install_test_deps

step "build (release)"
cargo build --release -q -p hrl-format -p hrl-agent -p hrl-shipper
bin=$PWD/target/release
t_start=$(date +%s.%N)

work=$(mktemp -d /var/tmp/hrl-demo-XXXXXX)
loop=""; rloop=""; apid=""; spid=""
cleanup() {
    set +e
    [ -n "$apid" ] && kill -TERM "$apid" 2>/dev/null && wait "$apid" 2>/dev/null
    [ -n "$spid" ] && kill -TERM "$spid" 2>/dev/null && wait "$spid" 2>/dev/null
    for m in "$work/check" "$work/mnt"; do mountpoint -q "$m" 2>/dev/null && umount "$m"; done
    [ -n "$rloop" ] && losetup -d "$rloop" 2>/dev/null
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; echo "interrupted: cleaning up"; exit 130' INT TERM

step "a 512 MiB disk: sparse file, loop device, ext4"
truncate -s 512M "$work/disk.img"
loop=$(losetup --find --show "$work/disk.img")
mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 -L demo "$loop"
mkdir -p "$work/mnt" "$work/check"
mount "$loop" "$work/mnt"
echo "disk $loop mounted on $work/mnt"

step "repository (local directory) and key"
repo="file://$work/repo"
key="$work/key"
"$bin/hrl-shipper" init --repo "$repo" --key-file "$key"

step "start hrl-agent (points every 5 s) and hrl-shipper"
"$bin/hrl-agent" run --device "$loop" --spool "$work/spool" --name demo --point-interval 5s \
    --pre-freeze 'sync; echo "HRL_LABEL=files=$(ls "$HRL_MOUNT" | grep -c "^file")"' 2>"$work/agent.log" &
apid=$!
for _ in $(seq 300); do
    "$bin/hrl-agent" status --json --spool "$work/spool" 2>/dev/null | grep -q '"mode": "data"' && break
    sleep 0.2
done
"$bin/hrl-agent" status --spool "$work/spool"
"$bin/hrl-shipper" run --repo "$repo" --key-file "$key" --spool "$work/spool" --json \
    >"$work/shipper.out" 2>"$work/shipper.log" &
spid=$!
# Disks are named HOST/NAME; the name alone is enough when it is unique.
disk=demo

step "workload: 60 files (up to 2 MiB each), checksums recorded after fsync"
python3 - "$work/mnt" "$work/sums" <<'PY'
import hashlib, os, random, sys
mnt, sums = sys.argv[1], sys.argv[2]
random.seed(7)
total = 0
with open(sums, "w") as out:
    for i in range(60):
        n = random.randint(1, 2 << 20)
        data = os.urandom(n // 2) + bytes(n - n // 2)   # half random, half zeros
        p = os.path.join(mnt, f"file{i:02d}.bin")
        with open(p, "wb") as f:
            f.write(data); f.flush(); os.fsync(f.fileno())
        out.write(f"{hashlib.sha256(data).hexdigest()}  {p}\n")
        total += n
        if i % 15 == 14:
            print(f"  wrote {i+1} files, {total >> 20} MiB")
open(sums + ".bytes", "w").write(str(total))
PY

step "app-consistent point"
pj=$("$bin/hrl-agent" point --app --json --disk demo --spool "$work/spool")
echo "$pj"
seq=$(python3 -c "import json,sys;print(json.loads(sys.argv[1])['seq'])" "$pj")
freeze=$(python3 -c "import json,sys;print(json.loads(sys.argv[1])['freeze_ms'])" "$pj")
echo -n "waiting for point $seq to be published"
for _ in $(seq 600); do
    "$bin/hrl-shipper" points --repo "$repo" --key-file "$key" --disk "$disk" --json 2>/dev/null |
        grep -q "\"seq\":$seq," && break
    echo -n "."; sleep 0.2
done
echo
"$bin/hrl-shipper" points --repo "$repo" --key-file "$key" --disk "$disk" | tail -4

step "restore point $seq to an image; e2fsck; compare every file's checksum"
t0=$(date +%s.%N)
"$bin/hrl-shipper" restore --repo "$repo" --key-file "$key" --disk "$disk" --point "$seq" --to "$work/restore.img"
t1=$(date +%s.%N)
e2fsck -fn "$work/restore.img" >/dev/null && echo "e2fsck -fn: clean"
rloop=$(losetup --find --show --read-only "$work/restore.img")
mount -o ro,noload "$rloop" "$work/check"
sed "s#$work/mnt#$work/check#" "$work/sums" | sha256sum --quiet -c && echo "all 60 files in the restored image match their checksums"
umount "$work/check"; losetup -d "$rloop"; rloop=""

step "failback: change files on the original, then bring it back to point $seq"
for i in 03 17 42; do head -c 300000 /dev/urandom > "$work/mnt/file$i.bin"; done
sync
kill -TERM "$apid"; wait "$apid" || true; apid=""
kill -TERM "$spid"; wait "$spid" || true; spid=""
umount "$work/mnt"
"$bin/hrl-shipper" verify --repo "$repo" --key-file "$key" --disk "$disk" --point "$seq" --against "$loop" | tail -1 || true
"$bin/hrl-shipper" failback --repo "$repo" --key-file "$key" --disk "$disk" --point "$seq" --to "$loop" | tee "$work/failback.out"
"$bin/hrl-shipper" verify --repo "$repo" --key-file "$key" --disk "$disk" --point "$seq" --against "$loop"
mount "$loop" "$work/mnt"
sha256sum --quiet -c "$work/sums" && echo "the original disk's files are back to point $seq"
umount "$work/mnt"

step "report"
python3 - "$work" "$seq" "$freeze" "$t0" "$t1" "$t_start" <<'PY'
import json, os, subprocess, sys
work, seq, freeze, t0, t1, t_start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
ship = json.loads(open(f"{work}/shipper.out").read().strip().splitlines()[-1])
wrote = int(open(f"{work}/sums.bytes").read())
stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(f"{work}/repo") for f in fs)
pts = [json.loads(l) for l in subprocess.run([f"{os.getcwd()}/target/release/hrl-shipper", "points", "--repo", f"file://{work}/repo", "--key-file", f"{work}/key", "--json"], capture_output=True, text=True).stdout.splitlines()]
lags = [(p["published_ns"] - p["time_ns"]) / 1e9 for p in pts]
fb = open(f"{work}/failback.out").read().strip()
mib = lambda b: f"{b / 1048576:.1f} MiB"
print(f"  points published        {len(pts)} (last app point {seq}, frozen {freeze:.1f} ms)")
print(f"  workload wrote          {mib(wrote)} in 60 files")
print(f"  chunk data shipped      {mib(ship['data_bytes'])} + {ship['zero_chunks']} zero chunks (flags only)")
print(f"  repository size         {mib(stored)} ({ship['chunks_new']} chunks stored, {ship['chunks_deduplicated']} deduplicated)")
print(f"  stored / shipped        {stored / max(ship['data_bytes'], 1):.2f} (lz4 + dedup, after encryption)")
print(f"  RPO lag (tag to publish) max {max(lags):.2f} s, median {sorted(lags)[len(lags)//2]:.2f} s")
print(f"  restore                 512 MiB in {t1 - t0:.2f} s ({512 / (t1 - t0):.0f} MiB/s), e2fsck clean, 60/60 checksums")
print(f"  failback                {fb.split(': ', 1)[1] if ': ' in fb else fb}")
print(f"  demo took               {__import__('time').time() - t_start:.0f} s after the build")
PY
