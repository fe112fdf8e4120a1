#!/usr/bin/env bash
# One kvxfer benchmark between two GPUs of this host, as two processes over
# loopback: the receiver (decode side) on GPU $RECV_GPU, the sender (prefill
# side) on GPU $SEND_GPU. Options after OUT_PREFIX go to kvxfer-send.
#
#   scripts/two-gpus.sh OUT_PREFIX [kvxfer-send options ...]
#   e.g. scripts/two-gpus.sh results/x/nccl-8b -t nccl -m llama-3.1-8b -p 128,8192 -g all
#
# Writes OUT_PREFIX.txt/.json/.csv (sender) and OUT_PREFIX.recv.txt/.recv.json;
# OUT_PREFIX.send.pid holds the sender's PID while it runs.
# Environment: KVXFER_BIN (folder of the binaries; default target/release),
# SEND_GPU=0, RECV_GPU=1, SEND_MEMORY=gpu, RECV_MEMORY=gpu, KVXFER_TIMEOUT=60s.
# NCCL_* variables pass through to both sides; NVLink multicast stays off.
set -uo pipefail
BIN=${KVXFER_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
prefix=${1:?usage: two-gpus.sh OUT_PREFIX [kvxfer-send options]}
shift
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
timeout=${KVXFER_TIMEOUT:-60s}

"$BIN/kvxfer-recv" --listen 127.0.0.1:0 --memory "${RECV_MEMORY:-gpu}" --device "${RECV_GPU:-1}" \
    --timeout "$timeout" --wait-for-sender 60s --json "$prefix.recv.json" \
    >"$prefix.recv.txt" 2>"$prefix.recv.err" &
recv=$!
addr=""
for _ in $(seq 100); do
    addr=$(sed -n 's/.*listening on //p' "$prefix.recv.err" | head -1)
    [ -n "$addr" ] && break
    kill -0 $recv 2>/dev/null || break
    sleep 0.1
done
if [ -z "$addr" ]; then
    echo "two-gpus.sh: the receiver did not start:" >&2
    cat "$prefix.recv.err" >&2
    kill $recv 2>/dev/null
    exit 1
fi
"$BIN/kvxfer-send" --connect "$addr" --memory "${SEND_MEMORY:-gpu}" --device "${SEND_GPU:-0}" \
    --timeout "$timeout" --json "$prefix.json" --csv "$prefix.csv" "$@" >"$prefix.txt" 2>&1 &
send=$!
# Its PID, for a caller that stops or kills it mid-run; Ctrl-C reaches both
# sides (a script's background jobs ignore SIGINT otherwise).
echo $send >"$prefix.send.pid"
trap 'kill -INT $send $recv 2>/dev/null' INT TERM
wait $send
send_rc=$?
rm -f "$prefix.send.pid"
wait $recv
recv_rc=$?
cat "$prefix.recv.err" >>"$prefix.recv.txt" && rm -f "$prefix.recv.err"
echo "two-gpus.sh: sender exit $send_rc, receiver exit $recv_rc ($prefix)"
[ $send_rc = 0 ] && [ $recv_rc = 0 ]
