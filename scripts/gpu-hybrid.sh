#!/usr/bin/env bash
# Hybrid models on one GPU (issue 35), two processes on GPU 0: gpt-oss-120b
# (sliding windows) with vLLM's hybrid KV cache manager on and off, and
# qwen3-next-80b-a3b (gated-delta-net state) with it on (off is refused:
# NixlConnector moves state only under HMA), at 8k and 32k tokens, layer and
# block messages, over UCX put (cuda_ipc, NIXL's bundled UCX) and NIXL WRITE
# (NixlPushConnector's pattern). `kvxfer plan` of each beside its runs.
# Needs the archive of scripts/fetch-nixl-cu13.sh (NIXL_ARCHIVE, default
# .whl/nixl-cu13-1.5.1-min.tar.xz), PyTorch's CUDA 13 runtime (the
# machine's python3) and the kvxfer binaries in KVXFER_BIN.
#
#   KVXFER_BIN=carry/bin scripts/gpu-hybrid.sh OUT_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-hybrid.sh OUT_DIR}
BIN=$(cd "${KVXFER_BIN:-target/release}" && pwd)
. scripts/nixl-site.sh
export KVXFER_BIN=$BIN NCCL_NVLS_ENABLE=0 SEND_GPU=0 RECV_GPU=0 KVXFER_TIMEOUT=120s
mkdir -p "$OUT"
failed=0
{ nvidia-smi -L; "$BIN/kvxfer" --version; echo "NIXL: $KVXFER_NIXL_LIB"; echo "UCX: $KVXFER_UCX_LIB"; } >"$OUT/machine.txt" 2>&1

run() { # name, expected exit, kvxfer-send options...
    local name=$1 want=$2 t0=$(date +%s)
    shift 2
    echo "# kvxfer-send $*" >"$OUT/$name.cmd"
    timeout 300 scripts/two-gpus.sh "$OUT/$name" "$@"
    local rc=$?
    [ $rc = "$want" ] || failed=$((failed + 1))
    echo "   $name: $(( $(date +%s) - t0 )) s, exit $rc (expected $want)"
}

w=(-p 8192,32768 -g layer,block -n 20 -w 2)
for model in gpt-oss-120b qwen3-next-80b-a3b; do
    short=${model%%-80b-a3b}
    for hma in on off; do
        want=0
        [ "$model.$hma" = qwen3-next-80b-a3b.off ] && want=2
        "$BIN/kvxfer" plan -m "$model" --hma $hma -p 8192,32768 -g block >"$OUT/plan-$short-hma-$hma.txt" 2>&1
        run "ucx-$short-hma-$hma" $want -t ucx --ucx-op put -m "$model" --hma $hma "${w[@]}"
        [ $want = 0 ] || continue
        run "nixl-write-$short-hma-$hma" 0 -t nixl --nixl-op write -m "$model" --hma $hma "${w[@]}"
        run "ucx-$short-hma-$hma-random" 0 -t ucx --ucx-op put -m "$model" --hma $hma --block-table random:1 -p 32768 -g block -n 20 -w 2
    done
done
echo "failed: $failed"
exit $((failed > 0))
