#!/usr/bin/env bash
# Where kvxfer's block-mode WRITE loses to NIXL at 8k tokens (issue 15):
# Llama-3.1-8B, 8192 tokens, contiguous table (64 puts of 16 MiB), two
# processes on GPU 0, NIXL 1.5.1's UCX for both tools. Three rounds of:
#   nixl        scripts/nixl_anchor.py WRITE, timed at the initiator;
#   kvxfer      ucx put in error mode peer (as NIXL) and none, timed by the
#               receiver from its go to the sender's done, and -v's
#               per-request steps on the sender (go received, flushed, done);
#   ucx_bare    the same UCX with no kvxfer around it, error modes peer and
#               none: 64 puts of 16 MiB back to back (window), and the go
#               and done tags alone (go-done), the round trip in kvxfer's
#               request.
# Needs what scripts/gpu-nixl.sh needs, and ucx_bare in KVXFER_BIN.
#
#   scripts/gpu-nixl-write-8k.sh OUT_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-nixl-write-8k.sh OUT_DIR}
BIN=$(cd "${KVXFER_BIN:-target/release}" && pwd)
SITE=/tmp/nixl
mkdir -p "$SITE" && tar -C "$SITE" -xJf "${NIXL_ARCHIVE:-.whl/nixl-cu13-1.5.1-min.tar.xz}" || exit 1
CUDART=$(dirname "$(python3 -c "import glob, site; print(sorted(glob.glob(site.getsitepackages()[0] + '/nvidia/**/libcudart.so.13', recursive=True))[0])")")
export NIXL_PLUGIN_DIR=$SITE/.nixl_cu13.mesonpy.libs/plugins LD_LIBRARY_PATH=$SITE/extra:$CUDART:${LD_LIBRARY_PATH:-}
UCP=$(ls "$SITE"/nixl_cu13.libs/libucp-*.so* | head -1)
export KVXFER_UCX_LIB=$UCP PYTHONPATH=$SITE:${PYTHONPATH:-} KVXFER_BIN=$BIN NCCL_NVLS_ENABLE=0
export SEND_GPU=0 RECV_GPU=0
mkdir -p "$OUT"
{ nvidia-smi -L; "$BIN/kvxfer" --version; echo "UCX: $UCP"; } >"$OUT/machine.txt" 2>&1
"$BIN/kvxfer" plan -m llama-3.1-8b -g block -p 8192 --json "$OUT/plan.json" >"$OUT/plan.txt"
for round in 1 2 3; do
    port=$((18000 + RANDOM % 1000))
    timeout 90 python3 scripts/nixl_anchor.py target --plan "$OUT/plan.json" --point 0 \
        --port $port --op WRITE --backend UCX >>"$OUT/nixl-target.log" 2>&1 &
    timeout 90 python3 scripts/nixl_anchor.py initiator --plan "$OUT/plan.json" --point 0 \
        --port $port --op WRITE --backend UCX --iterations 20 --warmup 2 \
        >>"$OUT/nixl.jsonl" 2>>"$OUT/nixl-initiator.log"
    wait
    for mode in peer none; do
        timeout 120 scripts/two-gpus.sh "$OUT/kvxfer-$mode-$round" -t ucx --ucx-op put \
            --ucx-err-mode $mode -m llama-3.1-8b -g block -p 8192 -n 20 -w 2 -v
        for size in 16 1024; do
            port=$((19000 + RANDOM % 1000))
            timeout 90 "$BIN/ucx_bare" target $port --sizes $size --iterations 64 --gpu 0 \
                --lib "$UCP" --err-mode $mode >"$OUT/bare-target-$mode-$size-$round.txt" 2>&1 &
            sleep 2
            timeout 90 "$BIN/ucx_bare" drive 127.0.0.1:$port --sizes $size --iterations 64 --gpu 0 \
                --lib "$UCP" --err-mode $mode >"$OUT/bare-$mode-$size-$round.txt" 2>&1
            wait
        done
    done
    echo "round $round done"
done
