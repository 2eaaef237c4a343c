#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ on the stable toolchain (coverage
# instrumentation, no sanitizer: Rust code is memory-safe; what fuzzing
# finds here is panics, overflows and broken invariants) and runs each for
# a bounded time on its seed corpus in fixtures/fuzz/<target>.
# Usage: scripts/fuzz.sh [seconds per target] [target...]
# Prints one line per target: runs, new corpus entries, crashes. Exit 1 on
# any crash (the input is kept in target/fuzz/artifacts/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

secs=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(hrl_reader index manifest pack_trailer agent_config shipper_config vhd_footer recovery_plan)
triple=$(rustc -vV | sed -n 's/^host: //p')
out=$PWD/target/fuzz
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
step "build fuzz targets ($triple)"
# --target keeps the instrumentation off build scripts and proc macros.
(cd fuzz && cargo build --release --target "$triple" --target-dir "$out/build" \
    $(printf -- '--bin %s ' "${targets[@]}"))
failed=0
printf '%-16s %12s %10s %8s\n' target runs corpus crashes | tee "$out/summary.txt"
for t in "${targets[@]}"; do
    corpus=$out/corpus/$t
    art=$out/artifacts/$t
    mkdir -p "$corpus" "$art"
    log=$out/$t.log
    rc=0
    "$out/build/$triple/release/$t" -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix="$art/" "$corpus" "fixtures/fuzz/$t" >"$log" 2>&1 || rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    crashes=$(find "$art" -type f | wc -l)
    printf '%-16s %12s %10s %8s\n' "$t" "${runs:-?}" "$(find "$corpus" -type f | wc -l)" "$crashes" | tee -a "$out/summary.txt"
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed=1
        echo "  $t: libFuzzer exit $rc; see $log and $art" >&2
        grep -m5 -E "panicked|ERROR|SUMMARY" "$log" >&2 || true
    fi
done
exit $failed
