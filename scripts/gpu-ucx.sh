#!/usr/bin/env bash
# The recorded UCX runs on a host with two GPUs, in one go:
#   anchor   ucx_perftest ucp_put_bw / ucp_get, GPU 0 -> GPU 1 memory, at the
#            sizes of kvxfer's request-granularity points below;
#   target   kvxfer ucx put/get/send, Llama-3.1-8B, one message per request
#            of 64 MiB to 4 GiB, with each endpoint error mode;
#   sweep    put/get/send, Llama-3.1-8B, 128 to 131072 tokens, request, layer
#            and block granularity (block as NixlConnector: one RMA each);
#            put for Llama-3.1-70B; block-wise 8B at 1 to 4096 in flight;
#   checks   --require-transport refusing a fallback (UCX_TLS without
#            cuda_ipc), GPU memory refused by the system's UCX (no CUDA),
#            both sides in one process, and a sender killed mid-run.
# Needs a CUDA build of UCX: scripts/fetch-ucx-cuda.sh (KVXFER_UCX_DIR, default
# .cache/ucx-cu13). Each kvxfer run is scripts/two-gpus.sh.
#
#   scripts/gpu-ucx.sh OUT_DIR [anchor] [target] [sweep] [checks]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-ucx.sh OUT_DIR [anchor] [target] [sweep] [checks]}
shift
PARTS=${*:-anchor target sweep checks}
UCX=$(cd "${KVXFER_UCX_DIR:-.cache/ucx-cu13}" && pwd)
export KVXFER_UCX_LIB=$UCX/libucx/lib/libucp.so.0
export NCCL_NVLS_ENABLE=0
BIN=${KVXFER_BIN:-target/release}
mkdir -p "$OUT"
failed=0
SIZES="67108864 268435456 1073741824 4294967296"
TARGET_TOKENS=512,2048,8192,32768 # Llama-3.1-8B: 128 KiB per token

run() { # name, environment assignments..., --, kvxfer-send options...
    local name=$1 envs=()
    shift
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    local t0=$(date +%s)
    env "${envs[@]}" scripts/two-gpus.sh "$OUT/$name" "$@" || failed=$((failed + 1))
    echo "   $name: $(( $(date +%s) - t0 )) s"
}

perftest() { # test size iterations
    local port=$((13337 + RANDOM % 1000)) env=(LD_LIBRARY_PATH="$UCX/libucx/lib")
    env "${env[@]}" CUDA_VISIBLE_DEVICES=1 timeout 120 "$UCX/libucx/bin/ucx_perftest" -p $port >/dev/null 2>&1 &
    local server=$!
    sleep 1
    echo "# ucx_perftest 127.0.0.1 -p PORT -t $1 -m cuda -s $2 -n $3 -w 5 -f (client GPU 0, server GPU 1)"
    env "${env[@]}" CUDA_VISIBLE_DEVICES=0 timeout 120 "$UCX/libucx/bin/ucx_perftest" 127.0.0.1 -p $port \
        -t "$1" -m cuda -s "$2" -n "$3" -w 5 -f 2>&1
    wait $server
}

{ nvidia-smi; nvidia-smi topo -m; uname -a; "$BIN/kvxfer" --version
  LD_LIBRARY_PATH="$UCX/libucx/lib" "$UCX/libucx/bin/ucx_info" -v
  LD_LIBRARY_PATH="$UCX/libucx/lib" "$UCX/libucx/bin/ucx_info" -d | grep -E "Transport|Device|Memory domain"
} >"$OUT/machine.txt" 2>&1

if [[ " $PARTS " == *" anchor "* ]]; then
    for test in ucp_put_bw ucp_get; do
        for size in $SIZES; do
            n=$(( size >= 1073741824 ? 50 : 200 ))
            perftest $test $size $n
        done >"$OUT/perftest-$test.txt"
    done
fi
if [[ " $PARTS " == *" target "* ]]; then
    for mode in none peer; do
        for op in put get send; do
            run "target-$op-$mode" -- -t ucx --ucx-op $op --ucx-err-mode $mode -m llama-3.1-8b \
                -p $TARGET_TOKENS -g request -n 20 -w 3 --link nvlink4
        done
    done
fi
if [[ " $PARTS " == *" sweep "* ]]; then
    for op in put get send; do
        common=(-t ucx --ucx-op $op --ucx-err-mode none -m llama-3.1-8b --link nvlink4)
        run "sweep-$op-8b-request" -- "${common[@]}" -p 128,512,2048,8192,32768,131072 -g request -n 10 -w 2
        run "sweep-$op-8b-layer" -- "${common[@]}" -p 128,512,2048,8192,32768,131072 -g layer -n 10 -w 2
        run "sweep-$op-8b-block-small" -- "${common[@]}" -p 128,512,2048 -g block -n 10 -w 2
        run "sweep-$op-8b-block-large" -- "${common[@]}" -p 8192,32768,131072 -g block -n 2 -w 1
        for n in 1 8 32 256 4096; do
            run "inflight-$op-$n" -- "${common[@]}" -p 2048 -g block -n 10 -w 2 --in-flight $n
        done
    done
    for g in request layer; do
        run "sweep-put-70b-$g" -- -t ucx --ucx-op put --ucx-err-mode none -m llama-3.1-70b --link nvlink4 \
            -p 128,512,2048,8192,32768,131072 -g $g -n 10 -w 2
    done
fi
if [[ " $PARTS " == *" checks "* ]]; then
    # Expected to fail: UCX may not use cuda_ipc, so the requirement refuses the run.
    UCX_TLS=tcp,cuda_copy scripts/two-gpus.sh "$OUT/check-require" -t ucx --ucx-op put \
        --require-transport cuda_ipc -p 2048 -g request -n 2 -w 1
    echo "check-require: exit $? (non-zero expected)"
    # Expected to fail: the system UCX (no CUDA modules) cannot map GPU memory.
    KVXFER_UCX_LIB=libucp.so.0 scripts/two-gpus.sh "$OUT/check-system-ucx" -t ucx -p 2048 -n 2 -w 1
    echo "check-system-ucx: exit $? (non-zero expected)"
    # Both sides as two threads of one process (kvxfer pair), GPU 0 to GPU 1.
    "$BIN/kvxfer" pair -t ucx --memory gpu --device 0 --recv-device 1 -p 2048 -g request,layer -n 10 \
        >"$OUT/check-pair-one-process.txt" 2>&1
    echo "check-pair-one-process: exit $?"
    # A sender killed mid-run: the receiver must exit on its own, within its timeout.
    KVXFER_TIMEOUT=5s scripts/two-gpus.sh "$OUT/check-kill" -t ucx --ucx-op put -p 131072 -g block \
        -n 1000 -w 1 &
    sleep 8
    kill -9 "$(cat "$OUT/check-kill.send.pid")" && echo "killed the sender at $(date +%s.%N)"
    wait
    echo "receiver finished at $(date +%s.%N) (see check-kill.recv.txt)"
fi
echo "gpu-ucx.sh: $failed failed run(s)"
[ $failed = 0 ]
