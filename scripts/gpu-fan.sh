#!/usr/bin/env bash
# The recorded many-to-one and one-to-many runs on a host with two GPUs, in
# one go, for nccl and ucx put: a single pair (GPU 0 -> GPU 1) for reference,
# two sender processes on GPU 0 into one receiver on GPU 1 (2->1), and one
# sender on GPU 0 to two receiver processes on GPU 1 (1->2). Llama-3.1-70B,
# 1024 to 131072 tokens, request and layer granularity.
# Needs a CUDA build of UCX for the ucx runs: scripts/fetch-ucx-cuda.sh
# (KVXFER_UCX_DIR, default .cache/ucx-cu13).
#
#   scripts/gpu-fan.sh OUT_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-fan.sh OUT_DIR}
UCX=$(cd "${KVXFER_UCX_DIR:-.cache/ucx-cu13}" && pwd)
export KVXFER_UCX_LIB=$UCX/libucx/lib/libucp.so.0
export NCCL_NVLS_ENABLE=0
BIN=${KVXFER_BIN:-target/release}
export KVXFER_BIN=$BIN
mkdir -p "$OUT"
WORK=(-m llama-3.1-70b -p 1024,8192,32768,131072 -g request,layer -n 10)
{ nvidia-smi; nvidia-smi topo -m; uname -a; "$BIN/kvxfer" --version; } >"$OUT/machine.txt" 2>&1

failed=0
for t in nccl ucx; do
    for shape in "0|1|pair" "0 0|1|2to1" "0|1 1|1to2"; do
        IFS='|' read -r send recv name <<<"$shape"
        t0=$(date +%s)
        SEND_GPUS=$send RECV_GPUS=$recv scripts/fan-gpus.sh "$OUT/$t-$name" -t "$t" "${WORK[@]}" \
            || failed=$((failed + 1))
        echo "   $t-$name: $(( $(date +%s) - t0 )) s"
    done
done
echo "gpu-fan.sh: $failed run(s) failed"
[ $failed = 0 ]
