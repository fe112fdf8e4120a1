#!/usr/bin/env bash
# GPU checks of hybrid layouts' other paths: tcp staged through pinned memory, and the GPU
# pattern check naming a misplaced state region (exit 3).
set -uo pipefail
OUT=$(realpath -m "${1:?usage: gpu-hybrid-checks.sh OUT_DIR}"); mkdir -p "$OUT"
cd "$(dirname "$0")/.."
. scripts/nixl-site.sh
export KVXFER_BIN=$PWD/carry/bin SEND_GPU=0 RECV_GPU=0 KVXFER_TIMEOUT=120s NCCL_NVLS_ENABLE=0
run() { local name=$1; shift; echo "# kvxfer-send $*" > $OUT/$name.cmd; timeout 300 scripts/two-gpus.sh $OUT/$name "$@"; echo "   $name: exit $?"; }
run tcp-staged-qwen3-next -t tcp -m qwen3-next-80b-a3b -p 8192,32768 -g layer,block -n 10 -w 2
run tcp-staged-gpt-oss -t tcp -m gpt-oss-120b -p 8192,32768 -g layer,block -n 10 -w 2
run ucx-misplaced-state-qwen3-next -t ucx -m qwen3-next-80b-a3b -p 8192 -g block -n 3 --fault misplaced-state
run ucx-misplaced-window-gpt-oss -t ucx -m gpt-oss-120b -p 8192 -g layer -n 3 --fault misplaced-state
