#!/usr/bin/env bash
# A fan on one host: N sender processes into one receiver (many-to-one), or
# one sender to N receivers (one-to-many), one process per GPU listed, over
# loopback control connections. Options after OUT_PREFIX go to the sender(s).
#
#   SEND_GPUS="0 0" RECV_GPUS=1 scripts/fan-gpus.sh OUT_PREFIX [kvxfer-send options]
#   SEND_GPUS="0 1 2" RECV_GPUS=3 ...      # 3 prefill GPUs into 1 decode GPU
#   SEND_GPUS=0 RECV_GPUS="1 2 3" ...      # 1 to 3
#
# The hub (the side with one process) holds the aggregate and every pair:
# OUT_PREFIX.recv.json/.txt (many-to-one) or OUT_PREFIX.json/.txt/.csv
# (one-to-many); every other process writes its own pair's OUT_PREFIX.pK.*.
# Environment: KVXFER_BIN (default target/release), SEND_MEMORY=gpu,
# RECV_MEMORY=gpu, KVXFER_TIMEOUT=60s; NCCL_*/UCX_* pass through.
set -uo pipefail
BIN=${KVXFER_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
prefix=${1:?usage: fan-gpus.sh OUT_PREFIX [kvxfer-send options]}
shift
read -ra senders <<<"${SEND_GPUS:-0 0}"
read -ra receivers <<<"${RECV_GPUS:-1}"
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
timeout=${KVXFER_TIMEOUT:-60s}
if [ ${#senders[@]} -gt 1 ] && [ ${#receivers[@]} -gt 1 ]; then
    echo "fan-gpus.sh: one side must be a single GPU (SEND_GPUS='${senders[*]}', RECV_GPUS='${receivers[*]}')" >&2
    exit 2
fi
recv_out() { # index -> output prefix of that receiver
    if [ ${#receivers[@]} -eq 1 ]; then echo "$prefix"; else echo "$prefix.p$1"; fi
}

pids=() addrs=()
for i in "${!receivers[@]}"; do
    out=$(recv_out "$i")
    "$BIN/kvxfer-recv" --listen 127.0.0.1:0 --memory "${RECV_MEMORY:-gpu}" --device "${receivers[$i]}" \
        --senders ${#senders[@]} --timeout "$timeout" --wait-for-sender 60s --json "$out.recv.json" \
        >"$out.recv.txt" 2>"$out.recv.err" &
    pids+=($!)
    addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*listening on //p' "$out.recv.err" | head -1)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "fan-gpus.sh: receiver $i did not start" >&2; cat "$out.recv.err" >&2; kill "${pids[@]}"; exit 1; }
    addrs+=("$addr")
done
connect=$(IFS=,; echo "${addrs[*]}")
send_pids=()
for i in "${!senders[@]}"; do
    out=$prefix
    [ ${#senders[@]} -gt 1 ] && out=$prefix.p$i
    "$BIN/kvxfer-send" --connect "$connect" --memory "${SEND_MEMORY:-gpu}" --device "${senders[$i]}" \
        --timeout "$timeout" --json "$out.json" --csv "$out.csv" "$@" >"$out.txt" 2>&1 &
    send_pids+=($!)
done
failed=0
for p in "${send_pids[@]}" "${pids[@]}"; do
    wait "$p" || failed=$((failed + 1))
done
for i in "${!receivers[@]}"; do
    out=$(recv_out "$i")
    cat "$out.recv.err" >>"$out.recv.txt" && rm -f "$out.recv.err"
done
echo "fan-gpus.sh: ${#senders[@]} sender(s) on GPU ${senders[*]} -> ${#receivers[@]} receiver(s) on GPU ${receivers[*]}: $failed failed ($prefix)"
[ $failed = 0 ]
