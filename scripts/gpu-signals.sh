#!/usr/bin/env bash
# Ctrl-C on GPU runs (issue 23), two processes on GPU 0 of one machine: for
# ucx put (UCX from scripts/fetch-ucx-cuda.sh) and ofi write over shm
# (libfabric 2.3 with CUDA from scripts/fetch-ofi-cuda.sh), a short run that
# must pass, then a long one whose sender gets SIGINT mid-point: it must exit
# 130 with its report kept (outcome interrupted), the receiver 1 naming the
# interruption, both within seconds.
#
#   KVXFER_BIN=carry/bin scripts/gpu-signals.sh OUT_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-signals.sh OUT_DIR}
export KVXFER_BIN=${KVXFER_BIN:-target/release} SEND_GPU=0 RECV_GPU=0 NCCL_NVLS_ENABLE=0
export KVXFER_UCX_LIB=${KVXFER_UCX_LIB:-$PWD/.cache/ucx-cu13/libucx/lib/libucp.so.0}
export KVXFER_OFI_LIB=${KVXFER_OFI_LIB:-$PWD/.cache/ofi-cuda/libfabric.so.1}
mkdir -p "$OUT"
{ nvidia-smi -L; "$KVXFER_BIN/kvxfer" --version; } >"$OUT/machine.txt" 2>&1
failed=0
for via in "ucx:-t ucx --ucx-op put" "ofi:-t ofi --ofi-provider shm --ofi-op write"; do
    name=${via%%:*}
    # shellcheck disable=SC2086
    scripts/two-gpus.sh "$OUT/$name-short" ${via#*:} -m llama-3.1-8b -p 1024,8192 -g layer -n 10 \
        || failed=$((failed + 1))
    # shellcheck disable=SC2086
    KVXFER_TIMEOUT=10s scripts/two-gpus.sh "$OUT/$name-int" ${via#*:} -m llama-3.1-8b -p 1024,8192 \
        -g block -n 100000 &
    runner=$!
    sleep 8
    kill -INT "$(cat "$OUT/$name-int.send.pid")"
    sent=$(date +%s.%N)
    wait $runner
    echo "$name: SIGINT at $sent, both sides ended by $(date +%s.%N)" >>"$OUT/signals.txt"
done
echo "gpu-signals.sh: $failed failed short run(s)"
[ $failed = 0 ]
