#!/usr/bin/env bash
# Features together on one GPU (every process on GPU 0, ucx put over
# cuda_ipc), issue 36:
#   queue-*     one lane, Poisson arrivals of equal 1 GiB requests
#               (Llama-3.1-8B, 8k tokens, layer messages): the mean queueing
#               delay against M/G/1 (Pollaczek-Khinchine) and an ideal
#               server on the same arrivals, from the run's own service
#               times; checks after each request (default) and none.
#   fan2to1     two senders, each its own Poisson arrivals of a 1k/8k mix,
#               into one receiver with one 4 GiB decode buffer (wait).
#   p2d1        prefill TP 2 into decode TP 1 under Poisson arrivals of a
#               1k/8k mix, blocks, one 4 GiB decode buffer (wait).
#   deploy      two prefill instances at TP 2 into one decode instance at
#               TP 4 (8 processes): each instance its own Poisson arrivals
#               of a 1k/8k mix, emulated prefill (a kernel per prefill rank,
#               all four on the one GPU) with layer overlap, a 2 GiB
#               decode buffer per decode rank (wait).
# Needs a CUDA UCX (scripts/fetch-ucx-cuda.sh) and the binaries in
# KVXFER_BIN (default target/release).
#
#   scripts/gpu-combinations.sh OUT_DIR
# Leaves OUT_DIR.tgz beside OUT_DIR, remade after each run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-combinations.sh OUT_DIR}
. scripts/one-gpu-env.sh
pack() { tar czf "$OUT.tgz" -C "$(dirname "$OUT")" "$(basename "$OUT")"; }
{ nvidia-smi; uname -a; "$BIN/kvxfer" --version; } >"$OUT/machine.txt" 2>&1
UCX_PUT=(-t ucx --ucx-op put --ucx-err-mode none)
QUEUE=(-m llama-3.1-8b -p 8192 -g layer -w 5 --concurrency 1 --arrivals "poisson:${QUEUE_RATES:-250,400,550}" -n 5000)
ONLY=${ONLY:-queue-after queue-off fan2to1 p2d1 deploy}
wanted() { [[ " $ONLY " == *" $1 "* ]]; }
wanted queue-after && run queue-after "${UCX_PUT[@]}" "${QUEUE[@]}" && pack
wanted queue-off && run queue-off "${UCX_PUT[@]}" "${QUEUE[@]}" --verify off && pack

MIX=(-m llama-3.1-8b --prompt-mix 1k:50,8k:50 --arrivals "poisson:${MIX_RATES:-100,200}" -n 300 -w 2 --decode-buffer 4GiB
    --on-full wait --decode-hold 20)
hub() { # name, then each sender's extra options (one word list each); HUB_ARGS the receiver's
    local name=$1 t0=$(date +%s) pids=()
    shift
    "$BIN/kvxfer-recv" --listen 127.0.0.1:0 --memory gpu --device 0 --timeout 120s --wait-for-sender 60s \
        --json "$OUT/$name.hub.json" "${HUB_ARGS[@]}" >"$OUT/$name.hub.txt" 2>"$OUT/$name.hub.err" &
    pids+=($!)
    local addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*listening on //p' "$OUT/$name.hub.err" | head -1)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    local i=0
    for extra in "$@"; do
        # shellcheck disable=SC2086
        echo "kvxfer-send --connect $addr --memory gpu --device 0 ${UCX_PUT[*]} ${MIX[*]} $extra" >>"$OUT/$name.cmd"
        # shellcheck disable=SC2086
        "$BIN/kvxfer-send" --connect "$addr" --memory gpu --device 0 --timeout 120s --json "$OUT/$name.s$i.json" \
            "${UCX_PUT[@]}" "${MIX[@]}" $extra >"$OUT/$name.s$i.txt" 2>&1 &
        pids+=($!)
        i=$((i + 1))
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
    echo "   $name: $(($(date +%s) - t0)) s, failures so far $failed"
}
HUB_ARGS=(--senders 2)
wanted fan2to1 && hub fan2to1 "-g layer" "-g layer" && pack
HUB_ARGS=()
wanted p2d1 && hub p2d1 "-g block --prefill-tp 2 --decode-tp 1 --prefill-rank 0" \
    "-g block --prefill-tp 2 --decode-tp 1 --prefill-rank 1"

DEPLOY=(-m llama-3.1-8b -g block --prompt-mix 1k:50,8k:50 --arrivals "poisson:${DEPLOY_RATE:-1.5}" -n "${DEPLOY_N:-30}"
    -w 1 --concurrency 2 --prefill-ms 1k:30,8k:300 --overlap layer --decode-buffer 2GiB --on-full wait
    --decode-hold 20)
# shellcheck disable=SC2206
DEPLOY+=(${DEPLOY_EXTRA:-})
deploy() {
    local name=${DEPLOY_NAME:-deploy} t0=$(date +%s) pids=() addrs=()
    for d in 0 1 2 3; do
        "$BIN/kvxfer-recv" --decode-rank $d --listen 127.0.0.1:0 --memory gpu --device 0 --timeout 120s \
            --wait-for-sender 60s --json "$OUT/$name.d$d.json" >"$OUT/$name.d$d.txt" 2>"$OUT/$name.d$d.err" &
        pids+=($!)
    done
    for d in 0 1 2 3; do
        local addr=""
        for _ in $(seq 100); do
            addr=$(sed -n 's/.*listening on //p' "$OUT/$name.d$d.err" | head -1)
            [ -n "$addr" ] && break
            sleep 0.1
        done
        addrs+=("$addr")
    done
    for i in 0 1; do
        for p in 0 1; do
            local args=(--prefill-instances 2 --prefill-instance $i --prefill-rank $p --prefill-tp 2 --decode-tp 4
                -c "${addrs[$((2 * p))]}" -c "${addrs[$((2 * p + 1))]}" --memory gpu --device 0 --timeout 120s
                "${UCX_PUT[@]}" "${DEPLOY[@]}")
            echo "kvxfer-send ${args[*]}" >>"$OUT/$name.cmd"
            "$BIN/kvxfer-send" "${args[@]}" --json "$OUT/$name.p$i-$p.json" >"$OUT/$name.p$i-$p.txt" 2>&1 &
            pids+=($!)
        done
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
    echo "   $name: $(($(date +%s) - t0)) s, failures so far $failed"
}
wanted deploy && deploy
echo "gpu-combinations.sh: $failed failed"
pack
