#!/usr/bin/env bash
# First checks on a host with two GPUs, in about two minutes: GPU memory over
# tcp, pinned memory, NCCL at every granularity, a corrupted byte caught on
# the GPU, a killed and a stopped peer under NCCL, and the NCCL figures next
# to a bare ncclSend/ncclRecv loop (examples/nccl_bare.rs).
#
#   scripts/gpu-smoke.sh OUT_DIR        (KVXFER_BIN: folder of the binaries)
set -uo pipefail
cd "$(dirname "$0")/.."
export KVXFER_BIN=$(realpath "${KVXFER_BIN:-target/release}")
OUT=${1:?usage: gpu-smoke.sh OUT_DIR}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
K=$KVXFER_BIN/kvxfer
summary=()
step() { # name, expected exit code, command...
    local name=$1 want=$2
    shift 2
    local t0=$(date +%s%N)
    "$@" >"$OUT/$name.log" 2>&1
    local rc=$? t=$(( ($(date +%s%N) - t0) / 1000000 ))
    local verdict=ok
    [ "$rc" = "$want" ] || verdict="UNEXPECTED (wanted $want)"
    summary+=("$(printf '%-24s exit %-3s %7s ms  %s' "$name" "$rc" "$t" "$verdict")")
    echo "== $name: exit $rc in ${t} ms ($verdict)"
    tail -n 6 "$OUT/$name.log"
}
interrupt() { # signal: run a long NCCL transfer, then signal the sender mid-run
    local sig=$1 p=$OUT/interrupt-$1
    "$KVXFER_BIN/kvxfer-recv" --listen 127.0.0.1:0 --memory gpu --device 1 --timeout 5s >"$p.recv" 2>&1 &
    local recv=$!
    sleep 1
    local addr=$(sed -n 's/.*listening on //p' "$p.recv" | head -1)
    "$KVXFER_BIN/kvxfer-send" --connect "$addr" -t nccl --memory gpu --device 0 --timeout 5s \
        -p 8192 -g layer -n 100000 >"$p.send" 2>&1 &
    local send=$!
    for _ in $(seq 200); do grep -q "# iterations" "$p.send" && break; sleep 0.1; done
    sleep 2
    kill -$sig $send
    local t0=$(date +%s%N)
    wait $recv
    local rc=$?
    echo "receiver exit $rc $(( ($(date +%s%N) - t0) / 1000000 )) ms after SIG$sig to the sender"
    kill -CONT $send 2>/dev/null
    wait $send
    echo "sender exit $?"
    tail -n 3 "$p.recv" "$p.send"
    [ $rc != 0 ]
}

step machine 0 bash -c 'nvidia-smi; nvidia-smi topo -m; ldconfig -p | grep -i nccl; uname -a; nproc'
step tcp-gpu 0 "$K" pair --memory gpu -p 64,1024 -g all -n 3
step tcp-pinned 0 "$K" pair --memory pinned -p 64,1024 -g all -n 3
step nccl-all-granularities 0 "$K" pair -t nccl --memory gpu -p 64,1024 -g all -n 3
step nccl-corrupt-byte 3 "$K" pair -t nccl --memory gpu -p 64 -n 2 --fault corrupt-byte
step nccl-bare-blocking 0 "$KVXFER_BIN/nccl_bare" 32,64,256,1024,4096 20 blocking
step nccl-bare-nonblocking 0 "$KVXFER_BIN/nccl_bare" 32,64,256,1024,4096 20 nonblocking
step nccl-request-2proc 0 scripts/two-gpus.sh "$OUT/nccl-request-2proc" -t nccl -m llama-3.1-8b \
    -p 512,2048,8192,32768 -g request -n 20
step nccl-request-1proc 0 "$K" pair -t nccl --memory gpu -m llama-3.1-8b -p 512,2048,8192,32768 -g request -n 20
step nccl-layer-8k 0 scripts/two-gpus.sh "$OUT/nccl-layer-8k" -t nccl -m llama-3.1-8b -p 8192 -g layer -n 20
step nccl-layer-8k-group32 0 scripts/two-gpus.sh "$OUT/nccl-layer-8k-g32" -t nccl -m llama-3.1-8b -p 8192 \
    -g layer -n 20 --nccl-group 32
step nccl-sender-killed 0 interrupt KILL
step nccl-sender-stopped 0 interrupt STOP
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
# Non-zero when any step ended otherwise than expected.
! grep -q UNEXPECTED "$OUT/summary.txt"
