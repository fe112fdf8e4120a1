#!/usr/bin/env bash
# The recorded libfabric runs on a host with GPUs, in one go: host-memory
# sweeps over ofi (shm and tcp providers; write, read, send), two processes,
# next to ucx put
# on host memory in the same call (the CUDA UCX build, KVXFER_UCX_DIR), and
# the refusal of GPU memory by a libfabric built without CUDA.
#
#   scripts/gpu-ofi.sh OUT_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-ofi.sh OUT_DIR}
UCX=$(cd "${KVXFER_UCX_DIR:-.cache/ucx-cu13}" && pwd)
export KVXFER_UCX_LIB=$UCX/libucx/lib/libucp.so.0
BIN=${KVXFER_BIN:-target/release}
mkdir -p "$OUT"
WORK=(-m llama-3.1-8b -p 512,2048,8192,32768 -g request,layer -n 10)
{ uname -a; "$BIN/kvxfer" --version; fi_info --version; fi_info -l; } >"$OUT/machine.txt" 2>&1
failed=0
export KVXFER_BIN=$BIN SEND_MEMORY=host RECV_MEMORY=host
run() { # name, kvxfer-send options... (two processes, host memory: scripts/two-gpus.sh)
    local name=$1
    shift
    scripts/two-gpus.sh "$OUT/$name" "$@" || failed=$((failed + 1))
}
for op in write read send; do
    for p in shm tcp; do
        run "ofi-$p-$op" -t ofi --ofi-provider "$p" --ofi-op "$op" "${WORK[@]}"
    done
done
for mode in none peer; do
    run "ucx-put-host-$mode" -t ucx --ucx-op put --ucx-err-mode "$mode" "${WORK[@]}"
done
# GPU memory: refused with the reason, not a crash (expected exit 2).
"$BIN/kvxfer" pair -t ofi --ofi-provider shm --memory gpu -p 512 -n 1 >"$OUT/ofi-gpu-refused.txt" 2>&1
echo "exit $?" >>"$OUT/ofi-gpu-refused.txt"
echo "gpu-ofi.sh: $failed run(s) failed"
[ $failed = 0 ]
