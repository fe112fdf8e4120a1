#!/usr/bin/env bash
# The recorded sweep on a host with two GPUs: Llama-3.1-8B and -70B, prompt
# lengths 128 to 131072 tokens, request / layer / block granularity, over
#   nccl    NCCL as it comes (NVLink P2P here), one call per message and
#           grouped (--nccl-group), against the NVLink 4 peak;
#   socket  NCCL forced onto sockets (NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1);
#   tcp     kvxfer's tcp transport on GPU memory, staged through pinned memory.
# Each run is scripts/two-gpus.sh: receiver on GPU 1, sender on GPU 0.
#
#   scripts/gpu-sweep.sh OUT_DIR [nccl] [socket] [tcp]     (default: all three)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-sweep.sh OUT_DIR [nccl] [socket] [tcp]}
shift
PARTS=${*:-nccl socket tcp}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
ALL=128,512,2048,8192,32768,131072
SMALL=128,512,2048
LARGE=8192,32768,131072
failed=0

run() { # name, environment assignments..., --, kvxfer-send options...
    local name=$1 envs=()
    shift
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    local t0=$(date +%s)
    env "${envs[@]}" scripts/two-gpus.sh "$OUT/$name" "$@" || failed=$((failed + 1))
    echo "   $name: $(( $(date +%s) - t0 )) s"
}

{ nvidia-smi; nvidia-smi topo -m; ldconfig -p | grep -i nccl; uname -a; "$KVXFER_BIN/kvxfer" --version; } \
    >"$OUT/machine.txt" 2>&1

for model in llama-3.1-8b llama-3.1-70b; do
    m=${model#llama-3.1-}
    layers=$([ "$m" = 8b ] && echo 32 || echo 80)
    if [[ " $PARTS " == *" nccl "* ]]; then
        nccl=(-t nccl -m "$model" --link nvlink4 -n 10 -w 2)
        run "nccl-$m-request" -- "${nccl[@]}" -p "$ALL" -g request
        run "nccl-$m-layer" -- "${nccl[@]}" -p "$ALL" -g layer
        run "nccl-$m-layer-grouped" -- "${nccl[@]}" -p "$ALL" -g layer --nccl-group "$layers"
        run "nccl-$m-block-grouped" -- "${nccl[@]}" -p "$ALL" -g block --nccl-group 1024
        # One call per block costs a kernel launch each: small prompts show it.
        run "nccl-$m-block" -- "${nccl[@]}" -p "$SMALL" -g block
    fi
    if [[ " $PARTS " == *" socket "* ]]; then
        sock=(NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 --)
        for g in request layer block; do
            group=$([ $g = block ] && echo 1024 || echo 1)
            run "socket-$m-$g-small" "${sock[@]}" -t nccl -m "$model" -p "$SMALL" -g $g -n 10 -w 2 --nccl-group $group
            run "socket-$m-$g-large" "${sock[@]}" -t nccl -m "$model" -p "$LARGE" -g $g -n 2 -w 1 --nccl-group $group
        done
    fi
    if [[ " $PARTS " == *" tcp "* ]]; then
        for g in request layer block; do
            run "tcp-$m-$g-small" -- -t tcp -m "$model" -p "$SMALL" -g $g -n 10 -w 2
            run "tcp-$m-$g-large" -- -t tcp -m "$model" -p "$LARGE" -g $g -n 2 -w 1
        done
    fi
done
echo "gpu-sweep.sh: $failed failed run(s)"
[ $failed = 0 ]
