#!/usr/bin/env bash
# kvxfer's nccl transport against a bare ncclSend/ncclRecv loop
# (examples/nccl_bare.rs) on a host with two GPUs, in one call, at the same
# message sizes: 64 MiB to 1 GiB (and 4 GiB for whole requests).
#
# The bare loop runs pipelined (back to back, as nccl-tests) and synced (an
# isolated send/recv each). kvxfer meets both shapes: a whole request is one
# isolated message (-g request: 512..32768 tokens of Llama-3.1-8B = 64 MiB..
# 4 GiB), and a request at layer granularity is 32 messages sent back to
# back, one ncclSend each, as P2pNcclConnector sends them (-g layer:
# 16k..256k tokens = 64 MiB..1 GiB per message).
#
#   scripts/gpu-nccl-reference.sh OUT_DIR     (KVXFER_BIN: folder of the binaries and nccl_bare)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-nccl-reference.sh OUT_DIR}
BIN=${KVXFER_BIN:-target/release}
export KVXFER_BIN=$BIN NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
mkdir -p "$OUT"
{ uname -a; "$BIN/kvxfer" --version; nvidia-smi topo -m; } >"$OUT/machine.txt" 2>&1
failed=0
step() { # name, command...
    local name=$1
    shift
    "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err" || { failed=$((failed + 1)); echo "$name failed" >&2; }
}
step bare-pipelined "$BIN/nccl_bare" 64,256,1024,4096 20 blocking pipelined
step bare-synced "$BIN/nccl_bare" 64,256,1024,4096 20 blocking synced
run() { # name, kvxfer-send options... (two processes: scripts/two-gpus.sh)
    local name=$1
    shift
    scripts/two-gpus.sh "$OUT/$name" "$@" || failed=$((failed + 1))
}
run kvxfer-request -t nccl -m llama-3.1-8b -p 512,2048,8192,32768 -g request -n 20
run kvxfer-layer -t nccl -m llama-3.1-8b -p 16k,64k,128k,256k -g layer -n 20
run kvxfer-layer-grouped -t nccl --nccl-group 32 -m llama-3.1-8b -p 16k,64k,128k,256k -g layer -n 20
echo "gpu-nccl-reference.sh: $failed step(s) failed"
[ $failed = 0 ]
