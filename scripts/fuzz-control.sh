#!/usr/bin/env bash
# The control-protocol fuzz test (tests/control_fuzz.rs) for as long as you
# leave it: rounds of CASES mutated handshakes against one receiver in
# service mode, a new seed each round, until a round fails (its seed is
# printed: KVXFER_FUZZ_SEED=... cargo test --test control_fuzz replays it)
# or Ctrl-C.
#
#   scripts/fuzz-control.sh [CASES]      (default 20000 per round)
set -uo pipefail
cd "$(dirname "$0")/.."
CASES=${1:-20000}
cargo build --tests --quiet || exit 1
round=0
while true; do
    round=$((round + 1))
    seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
    echo "round $round: KVXFER_FUZZ_SEED=$seed KVXFER_FUZZ_CASES=$CASES"
    if ! KVXFER_FUZZ_SEED=$seed KVXFER_FUZZ_CASES=$CASES \
        cargo test --quiet --test control_fuzz -- --nocapture 2>&1 | tail -5; then
        echo "fuzz-control.sh: round $round failed; replay with KVXFER_FUZZ_SEED=$seed KVXFER_FUZZ_CASES=$CASES"
        exit 1
    fi
done
