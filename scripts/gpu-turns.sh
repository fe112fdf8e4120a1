#!/usr/bin/env bash
# Multi-turn conversations on one GPU (both sides on GPU 0): the seed's
# scenario scaled up, 10 turns of 1,000 input tokens, Llama-3.1-8B and
# -70B, in full, delta and d-direct, over ucx put (CUDA UCX, cuda_ipc) and
# tcp staged through pinned memory, in layer and block messages.
# Needs a CUDA build of UCX (scripts/fetch-ucx-cuda.sh; KVXFER_UCX_DIR,
# default .cache/ucx-cu13) and the binaries in KVXFER_BIN (default
# target/release).
#
#   scripts/gpu-turns.sh OUT_DIR
# Leaves OUT_DIR.tgz beside OUT_DIR, remade after each run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-turns.sh OUT_DIR}
. scripts/one-gpu-env.sh

pack() { tar czf "$OUT.tgz" -C "$(dirname "$OUT")" "$(basename "$OUT")"; }
{ nvidia-smi; uname -a; "$BIN/kvxfer" --version; } >"$OUT/machine.txt" 2>&1
TURNS=(--turns 10 --turn-tokens 1000 --multi-turn full,delta,d-direct -g layer,block -n 5 -w 1)
for model in llama-3.1-8b llama-3.1-70b; do
    run "ucx-put-$model" -t ucx --ucx-op put --ucx-err-mode none -m "$model" "${TURNS[@]}" && pack
    run "tcp-staged-$model" -t tcp -m "$model" "${TURNS[@]}" && pack
done
echo "gpu-turns.sh: $failed failed"
pack
