#!/usr/bin/env bash
# The reliability and security suite (docs/guarantees.md): endpoint faults
# through the fault proxy, the crash matrices (failpoints), damaged input,
# key and log checks, a full spool filesystem, a vanishing device, group
# members and coordinator killed mid-point, the soak (kill -9 of agent or
# shipper, faults on), and every fuzz target; then one table.
# Usage: sudo scripts/reliability.sh [--short]
#   full: soak 600 s, fuzz 60 s per target (about 20 minutes)
#   --short: soak 40 s, fuzz 10 s per target (what scripts/test.sh runs in CI)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ "$(id -u)" -eq 0 ] || { echo "reliability.sh needs root (loop devices, freezes)" >&2; exit 2; }

soak=${HRL_SOAK_SECONDS:-600}
fuzz=${FUZZ_SECONDS:-60}
if [ "${1:-}" = "--short" ]; then soak=40; fuzz=10; fi
install_test_deps
trap stop_azurite EXIT
start_azurite
report=$(mktemp "${TMPDIR:-/tmp}/hrl-reliability-XXXXXX.jsonl")
export HRL_RELIABILITY_REPORT=$report HRL_SOAK_SECONDS=$soak
t0=$(date +%s)
rc=0
step "reliability tests (soak ${soak}s)"
cargo nextest run --workspace --locked --no-fail-fast \
    --features hrl-agent/failpoints,hrl-shipper/failpoints,hrl-e2e/failpoints \
    -E 'binary(faults) | binary(crashpoints) | binary(security) | binary(badinput) | binary(soak) | binary(groups) | test(prune_beside) | test(flipped_byte) | test(kill9) | test(only_a_peer_with_the_group_key) | test(a_failed_prepare_aborts_one_round) | test(no_plaintext)' \
    || rc=1
step "fuzz (${fuzz}s per target)"
bash scripts/fuzz.sh "$fuzz" || rc=1
python3 - "$report" target/fuzz/summary.txt "$(( $(date +%s) - t0 ))" "$rc" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for l in open(sys.argv[2]).read().splitlines()[1:]:
    t, runs, corpus, crashes = l.split()
    rows.append({"test": f"fuzz {t}", "runs": int(runs) if runs.isdigit() else 0, "faults": 0, "verified": 0,
                 "lost": 0, "note": f"corpus {corpus}, crashes {crashes}", "crash": int(crashes)})
print()
print(f"| test | runs | faults injected | points verified | data lost | result |")
print(f"|---|---|---|---|---|---|")
for r in rows:
    ok = r["lost"] == 0 and r.get("crash", 0) == 0
    print(f"| {r['test']} | {r['runs']} | {r['faults']} | {r['verified']} | {r['lost']} | {'pass' if ok else 'FAIL'} |")
print()
for r in rows:
    print(f"- {r['test']}: {r['note']}")
print(f"\n{len(rows)} rows in {int(sys.argv[3])} s; tests {'all passed' if sys.argv[4] == '0' else 'FAILED (see above; a failing test writes no row)'}")
PY
exit $rc
