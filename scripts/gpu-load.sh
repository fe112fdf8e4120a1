#!/usr/bin/env bash
# Serving load on one GPU (both sides on GPU 0): Llama-3.1-8B requests with
# a 1k/8k/32k prompt mix arrive as a Poisson stream at rising rates, over
# ucx put (CUDA UCX, cuda_ipc) and tcp staged through pinned memory; each
# request's KV is held 50 ms after its last byte (decode taking it in), in
# a decode buffer of 8 GiB that spills to a pinned pool past it (P2pNccl).
# Then `kvxfer size` on each run: the measured peak next to its arithmetic.
# Needs a CUDA build of UCX (scripts/fetch-ucx-cuda.sh; KVXFER_UCX_DIR,
# default .cache/ucx-cu13) and the binaries in KVXFER_BIN (default
# target/release).
#
#   scripts/gpu-load.sh OUT_DIR
# Leaves OUT_DIR.tgz beside OUT_DIR, every log in one file.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-load.sh OUT_DIR}
. scripts/one-gpu-env.sh

{ nvidia-smi; uname -a; "$BIN/kvxfer" --version; } >"$OUT/machine.txt" 2>&1
LOAD=(-m llama-3.1-8b --prompt-mix 1k:60,8k:30,32k:10 -g layer -w 3 --decode-hold 50 --decode-buffer 8GiB)
run ucx-put -t ucx --ucx-op put --ucx-err-mode none "${LOAD[@]}" --arrivals poisson:25,50,100,200,400 -n 300
run tcp-staged -t tcp "${LOAD[@]}" --arrivals poisson:1,2,3,4,6,8 -n 30
for name in ucx-put tcp-staged; do
    "$BIN/kvxfer" size -m llama-3.1-8b -p 1k,8k,32k --mix 60,30,10 --concurrent 8 \
        --run "$OUT/$name.json" >"$OUT/$name.size.txt" 2>&1 || failed=$((failed + 1))
done
echo "gpu-load.sh: $failed failed"
tar czf "$OUT.tgz" -C "$(dirname "$OUT")" "$(basename "$OUT")"
