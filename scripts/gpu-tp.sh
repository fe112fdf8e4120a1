#!/usr/bin/env bash
# Prefill and decode at different TP on one GPU: P sender and D receiver
# processes, all on GPU 0, ucx over cuda_ipc. Llama-3.1-70B at block
# granularity, HND and NHD. NixlConnector reads (get), but UCX 1.22 runs a
# get of GPU memory on one GPU as software emulation (results/h200/one-gpu:
# 0.5-0.9 GB/s, ucx_perftest alike), so put by default (UCX_OP=get to
# compare): the same pieces move, the prefill rank initiating them.
#   homo-tp1   one pair at TP 1: the whole KV, the bytes of each P x D run
#   homo-tp2   one pair at TP 2: one decode rank's share of P1->D2
#   p2d1-*     two prefill ranks into one decode rank (each a whole block
#              into half of decode's block)
#   p1d2-*     one prefill rank into two decode ranks (half of each block)
# Needs a CUDA UCX (scripts/fetch-ucx-cuda.sh) and the binaries in
# KVXFER_BIN (default target/release).
#
#   [LAYOUTS="hnd nhd"] [UCX_OP=put] scripts/gpu-tp.sh OUT_DIR [kvxfer-send options added to every run]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-tp.sh OUT_DIR [kvxfer-send options]}
shift
. scripts/one-gpu-env.sh
COMMON=(-t ucx --ucx-op "${UCX_OP:-put}" -m llama-3.1-70b -g block "$@")

# The decode ranks that read prefill rank $1 of P=$2, D=$3 (NixlConnector).
readers() {
    local p=$1 P=$2 D=$3
    if [ "$D" -ge "$P" ]; then seq $((p * D / P)) $(((p + 1) * D / P - 1)); else echo $((p / (P / D))); fi
}

tp_run() { # name P D layout options...
    local name=$1 P=$2 D=$3 layout=$4 t0=$(date +%s) pids=() addrs=()
    shift 4
    echo "# P=$P D=$D --kv-layout $layout ${COMMON[*]} $*" >"$OUT/$name.cmd"
    for d in $(seq 0 $((D - 1))); do
        "$BIN/kvxfer-recv" --listen 127.0.0.1:0 --memory gpu --device 0 --decode-rank "$d" --timeout 120s \
            --wait-for-sender 60s --json "$OUT/$name.d$d.json" >"$OUT/$name.d$d.txt" 2>"$OUT/$name.d$d.err" &
        pids+=($!)
        for _ in $(seq 100); do
            addr=$(sed -n 's/.*listening on //p' "$OUT/$name.d$d.err" | head -1)
            [ -n "$addr" ] && break
            sleep 0.1
        done
        addrs+=("$addr")
    done
    for p in $(seq 0 $((P - 1))); do
        local connect=()
        for d in $(readers "$p" "$P" "$D"); do connect+=(--connect "${addrs[$d]}"); done
        echo "kvxfer-send ${connect[*]} --prefill-tp $P --decode-tp $D --prefill-rank $p --kv-layout $layout \
--memory gpu --device 0 ${COMMON[*]} $*" >>"$OUT/$name.cmd"
        "$BIN/kvxfer-send" "${connect[@]}" --prefill-tp "$P" --decode-tp "$D" --prefill-rank "$p" \
            --kv-layout "$layout" --memory gpu --device 0 --timeout 120s --json "$OUT/$name.p$p.json" \
            "${COMMON[@]}" "$@" >"$OUT/$name.p$p.txt" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
    echo "   $name: $(($(date +%s) - t0)) s, failures so far $failed"
}

{ nvidia-smi; uname -a; "$BIN/kvxfer" --version; } >"$OUT/machine.txt" 2>&1
"$BIN/kvxfer" plan -m llama-3.1-70b --prefill-tp 2 --decode-tp 1 -p 1024,8192 >"$OUT/plan-p2d1.txt" 2>&1
"$BIN/kvxfer" plan -m llama-3.1-70b --prefill-tp 1 --decode-tp 2 -p 1024,8192 --kv-layout nhd \
    >"$OUT/plan-p1d2-nhd.txt" 2>&1
run homo-tp1 "${COMMON[@]}" --tp 1 -p 1024,8192 -n 10
run homo-tp2 "${COMMON[@]}" --tp 2 -p 1024,8192 -n 10
for layout in ${LAYOUTS:-hnd nhd}; do
    n=10
    [ $layout = nhd ] && n=5 # a piece per token: 16x the operations
    tp_run "p2d1-$layout" 2 1 $layout -p 1024,8192 -n $n
    tp_run "p1d2-$layout" 1 2 $layout -p 1024,8192 -n $n
done
echo "failed runs: $failed"
exit $((failed > 0))
