#!/usr/bin/env bash
# Two processes on one GPU (both sides on GPU 0), in one go:
#   machine  nvidia-smi, kvxfer links (the GPU memory ceiling), and the
#            GPU's own device-to-device copy rate through PyTorch;
#   anchor   ucx_perftest ucp_put_bw and ucp_get, both processes on GPU 0;
#   bare     examples/ucx_bare (put loops without kvxfer): plain, with
#            work in each process's CUDA context between iterations (in
#            kvxfer's order), and with the source rewritten before each put;
#   kvxfer   ucx put, Llama-3.1-8B, 512 to 32k tokens (64 MiB to 4 GiB
#            requests), request and layer granularity, with the default
#            check after each request and with --verify off; ucx send; ucx
#            get (the protocol UCX runs, the notice after the first
#            request); tcp staged; two senders into one receiver, all on
#            GPU 0 (the hub's ceiling);
#   rounds   (only when named) three rounds of perftest, the bare loop and
#            kvxfer put at 256 MiB and 1 GiB, each series once per round;
#   ofi      (only when named) libfabric 2.3 with CUDA over shm on GPU
#            memory (write, read, send), next to ucx put.
# Needs a CUDA build of UCX (scripts/fetch-ucx-cuda.sh; KVXFER_UCX_DIR,
# default .cache/ucx-cu13) and the binaries in KVXFER_BIN (kvxfer,
# kvxfer-send, kvxfer-recv, ucx_bare; default target/release).
#
#   scripts/gpu-one-gpu.sh OUT_DIR [machine] [anchor] [bare] [kvxfer] [rounds] [ofi]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-one-gpu.sh OUT_DIR [machine] [anchor] [bare] [kvxfer] [rounds] [ofi]}
shift
PARTS=${*:-machine anchor bare kvxfer}
. scripts/one-gpu-env.sh
SIZES_MIB="64 256 1024 4096"
TOKENS=512,2048,8192,32768 # Llama-3.1-8B: 128 KiB per token: 64 MiB to 4 GiB

perftest() { # test size iterations
    local port=$((13337 + RANDOM % 1000)) env=(LD_LIBRARY_PATH="$UCX/libucx/lib" CUDA_VISIBLE_DEVICES=0)
    env "${env[@]}" timeout 120 "$UCX/libucx/bin/ucx_perftest" -p $port >/dev/null 2>&1 &
    local server=$!
    sleep 1
    echo "# ucx_perftest 127.0.0.1 -p PORT -t $1 -m cuda -s $2 -n $3 -w 5 -f (both on GPU 0)"
    env "${env[@]}" timeout 120 "$UCX/libucx/bin/ucx_perftest" 127.0.0.1 -p $port \
        -t "$1" -m cuda -s "$2" -n "$3" -w 5 -f 2>&1
    wait $server
}

bare() { # options...
    local port=$((17000 + RANDOM % 1000))
    LD_LIBRARY_PATH="$UCX/libucx/lib" timeout 300 "$BIN/ucx_bare" target $port --lib "$KVXFER_UCX_LIB" "$@" &
    local target=$!
    sleep 1
    echo "# ucx_bare drive 127.0.0.1:PORT --lib \$KVXFER_UCX_LIB $*"
    LD_LIBRARY_PATH="$UCX/libucx/lib" timeout 300 "$BIN/ucx_bare" drive 127.0.0.1:$port \
        --lib "$KVXFER_UCX_LIB" "$@" 2>&1 || failed=$((failed + 1))
    wait $target
}

if [[ " $PARTS " == *" machine "* ]]; then
    { nvidia-smi; nvidia-smi -q -d CLOCK; uname -a; "$BIN/kvxfer" --version; "$BIN/kvxfer" links
      LD_LIBRARY_PATH="$UCX/libucx/lib" "$UCX/libucx/bin/ucx_info" -v
      PYTHONUNBUFFERED=1 python3 - <<'EOF'
import torch
# The GPU's own copy: bytes copied per second (each is read once and written once).
for mib in (64, 256, 1024, 4096):
    n = mib << 20
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(20):
        b.copy_(a)
    e.record()
    torch.cuda.synchronize()
    t = s.elapsed_time(e) / 1e3 / 20
    print(f"torch copy {mib:5d} MiB: {t * 1e6:8.1f} us, {n / t / 1e9:7.1f} GB/s copied")
EOF
    } >"$OUT/machine.txt" 2>&1
fi
if [[ " $PARTS " == *" anchor "* ]]; then
    for size in $SIZES_MIB; do perftest ucp_put_bw $((size << 20)) $(( size >= 1024 ? 50 : 200 )); done \
        >"$OUT/perftest-ucp_put_bw.txt"
    perftest ucp_get $((64 << 20)) 10 >"$OUT/perftest-ucp_get.txt"
fi
if [[ " $PARTS " == *" bare "* ]]; then
    sizes=$(echo $SIZES_MIB | tr ' ' ,)
    { bare --gpu 0 --sizes "$sizes" --iterations 20
      bare --gpu 0 --sizes "$sizes" --iterations 20 --touch
      bare --gpu 0 --sizes "$sizes" --iterations 20 --touch --rewrite; } >"$OUT/ucx-bare.txt"
fi
if [[ " $PARTS " == *" kvxfer "* ]]; then
    common=(-t ucx --ucx-err-mode none -m llama-3.1-8b -p $TOKENS -n 50)
    run put "${common[@]}" --ucx-op put -g request,layer
    run put-verify-off "${common[@]}" --ucx-op put -g request,layer --verify off
    run send "${common[@]}" --ucx-op send -g request
    # get on one GPU: what UCX runs it as, and the notice after the first request.
    run get -t ucx --ucx-op get --ucx-err-mode none -m llama-3.1-8b -p 512,2048 -g request -n 3 -w 1
    run tcp-staged -t tcp -m llama-3.1-8b -p 512,8192 -g request -n 5
    # Two senders and their receiver, all on GPU 0: the hub's ceiling.
    t0=$(date +%s)
    SEND_GPUS="0 0" RECV_GPUS=0 scripts/fan-gpus.sh "$OUT/fan-2to1" -t ucx --ucx-op put --ucx-err-mode none \
        -m llama-3.1-8b -p 2048,8192 -g request -n 10 || failed=$((failed + 1))
    echo "   fan-2to1: $(( $(date +%s) - t0 )) s"
fi
if [[ " $PARTS " == *" rounds "* ]]; then
    # The 256 MiB and 1 GiB comparison in rounds, each running every series
    # once in turn (one call's machines differ by several percent).
    for r in 1 2 3; do
        for size in 256 1024; do perftest ucp_put_bw $((size << 20)) 200; done >"$OUT/rounds-$r-perftest.txt"
        { bare --gpu 0 --sizes 256,1024 --iterations 50
          bare --gpu 0 --sizes 256,1024 --iterations 50 --touch --rewrite; } >"$OUT/rounds-$r-bare.txt"
        for v in after off; do
            run rounds-$r-put-$v -t ucx --ucx-op put --ucx-err-mode none -m llama-3.1-8b -p 2048,8192 -g request \
                -n 50 --verify $v
        done
    done
fi
if [[ " $PARTS " == *" ofi "* ]]; then
    # libfabric 2.3 with CUDA (scripts/fetch-ofi-cuda.sh; KVXFER_OFI_DIR) over
    # shm on GPU memory, next to ucx put on the same requests.
    export KVXFER_OFI_LIB=$(cd "${KVXFER_OFI_DIR:-.cache/ofi-cuda}" && pwd)/libfabric.so.1
    work=(-m llama-3.1-8b -p 512,2048,8192 -g request,layer -n 10)
    for op in write read send; do
        run ofi-shm-$op -t ofi --ofi-provider shm --ofi-op $op "${work[@]}"
    done
    run ofi-ucx-put -t ucx --ucx-op put --ucx-err-mode none "${work[@]}"
fi
echo "gpu-one-gpu.sh: $failed failed run(s)"
[ $failed = 0 ]
