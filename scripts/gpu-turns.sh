#!/usr/bin/env bash
# Multi-turn conversations on one GPU (both sides on GPU 0): the seed's
# scenario scaled up, 10 turns of 1,000 input tokens, Llama-3.1-8B and
# -70B, in the MODES (default all four), over ucx put (CUDA UCX, cuda_ipc)
# and tcp staged through pinned memory, in layer and block messages; then
# (ARRIVALS=1, the default) 8 Llama-3.1-8B conversations of 10 turns of
# 1,000:100 tokens taking turns under Poisson arrivals, each in a region
# of its own, over ucx put and get.
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
TURNS=(--turns 10 --turn-tokens 1000 --multi-turn "${MODES:-full,delta,bidirectional,d-direct}" -g layer,block -n 5 -w 1)
for model in ${MODELS:-llama-3.1-8b llama-3.1-70b}; do
    run "ucx-put-$model" -t ucx --ucx-op put --ucx-err-mode none -m "$model" "${TURNS[@]}" && pack
    run "tcp-staged-$model" -t tcp -m "$model" "${TURNS[@]}" && pack
done
if [ "${ARRIVALS:-1}" = 1 ]; then
    LOAD=(-m llama-3.1-8b --turns 10 --turn-tokens 1000:100 -n 8 -w 1 -g block --multi-turn delta,bidirectional)
    for op in put get; do
        run "ucx-$op-arrivals" -t ucx --ucx-op $op --ucx-err-mode none "${LOAD[@]}" --arrivals poisson:100,400 && pack
    done
fi
echo "gpu-turns.sh: $failed failed"
pack
