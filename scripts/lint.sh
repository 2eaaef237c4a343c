#!/usr/bin/env bash
# The structure check (scripts/lint.py): no import cycle between the
# modules of a crate, no non-test file over 600 lines, no non-test function
# over 100 lines. Runs its own self-test first. scripts/test.sh calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/lint.py --self-test
python3 scripts/lint.py
