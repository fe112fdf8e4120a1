#!/usr/bin/env bash
# kvxfer compare on one GPU: tcp (staged through pinned memory) against
# ucx put, 6 rounds; ucx twice, to see the noise. Once against a
# kvxfer-recv --forever on the same GPU (--connect), once in pair mode,
# whose receiver is a process of its own: both should take cuda_ipc.
# Then one ucx pair alone, for its path line.
# Needs a CUDA build of UCX: scripts/fetch-ucx-cuda.sh (KVXFER_UCX_DIR,
# default .cache/ucx-cu13).
#
#   scripts/gpu-compare.sh OUT_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-compare.sh OUT_DIR}
UCX=$(cd "${KVXFER_UCX_DIR:-.cache/ucx-cu13}" && pwd)
export KVXFER_UCX_LIB=$UCX/libucx/lib/libucp.so.0
BIN=${KVXFER_BIN:-target/release}
mkdir -p "$OUT"
{ nvidia-smi; uname -a; "$BIN/kvxfer" --version; } >"$OUT/machine.txt" 2>&1

"$BIN/kvxfer-recv" --forever --listen 127.0.0.1:7477 --memory gpu --device 0 -q >"$OUT/service.log" 2>&1 &
service=$!
sleep 2
WORK=(--memory gpu --device 0 -m llama-3.1-8b -p 1k,8k -g layer -n 20 -w 2)
set -x
"$BIN/kvxfer" compare -t tcp,ucx,ucx --rounds 6 --json "$OUT/two-processes.json" \
    --connect 127.0.0.1:7477 "${WORK[@]}" >"$OUT/two-processes.txt" 2>"$OUT/two-processes.err"
echo "rc $?" >>"$OUT/two-processes.txt"
kill -TERM $service
wait $service
echo "service rc $?" >>"$OUT/service.log"
"$BIN/kvxfer" compare -t tcp,ucx,ucx --rounds 6 --json "$OUT/pair.json" --recv-device 0 "${WORK[@]}" \
    >"$OUT/pair.txt" 2>"$OUT/pair.err"
echo "rc $?" >>"$OUT/pair.txt"
"$BIN/kvxfer" pair -t ucx --memory gpu --device 0 --recv-device 0 -m llama-3.1-8b -p 8k -g layer -n 5 \
    >"$OUT/pair-ucx.txt" 2>&1
echo "rc $?" >>"$OUT/pair-ucx.txt"
