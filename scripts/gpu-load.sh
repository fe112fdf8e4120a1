#!/usr/bin/env bash
# Serving load on one GPU (both sides on GPU 0): Llama-3.1-8B requests with
# a 1k/8k/32k prompt mix arrive as a Poisson stream at rising rates, over
# ucx put (CUDA UCX, cuda_ipc) and tcp staged through pinned memory, with 4
# requests in flight at once (--concurrency 4, a lane each) and one at a
# time (--concurrency 1); each request's KV is held 50 ms after its last
# byte (decode taking it in). The decode buffer is 64 GiB, above any peak
# here, so that the knee is the transport's; one more ucx run has an 8 GiB
# buffer that spills to a pinned pool past it (P2pNccl). Then `kvxfer
# size` on each run: the measured peak next to its arithmetic. Last,
# arrivals composed with emulated prefill (the GPU kernel at 809 TFLOP/s,
# the bf16 matmul rate measured in results/h200/prefill) for 1k prompts,
# one request at a time, over both transports.
# Needs a CUDA build of UCX (scripts/fetch-ucx-cuda.sh; KVXFER_UCX_DIR,
# default .cache/ucx-cu13) and the binaries in KVXFER_BIN (default
# target/release).
#
#   scripts/gpu-load.sh OUT_DIR
# UCX_RATES and TCP_RATES replace the rates swept (default below), ONLY
# names the runs to make (default all).
# Leaves OUT_DIR.tgz beside OUT_DIR, every log in one file, remade after
# each run so that a call cut short still returns what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-load.sh OUT_DIR}
. scripts/one-gpu-env.sh

pack() { tar czf "$OUT.tgz" -C "$(dirname "$OUT")" "$(basename "$OUT")"; }
sized() { # run name: kvxfer size against its JSON, then pack
    "$BIN/kvxfer" size -m llama-3.1-8b -p 1k,8k,32k --mix 60,30,10 --concurrent 8 \
        --run "$OUT/$1.json" >"$OUT/$1.size.txt" 2>&1 || failed=$((failed + 1))
    pack
}
{ nvidia-smi; uname -a; "$BIN/kvxfer" --version; } >"$OUT/machine.txt" 2>&1
UCX_RATES=${UCX_RATES:-25,50,100,200,400,800,1600,3200}
TCP_RATES=${TCP_RATES:-1,2,3,4,6,8,12,16}
ONLY=${ONLY:-ucx-put-c4 ucx-put-c1 tcp-staged-c4 ucx-put-c4-spill tcp-staged-c1 ucx-put-prefill tcp-staged-prefill}
wanted() { [[ " $ONLY " == *" $1 "* ]]; }
LOAD=(-m llama-3.1-8b --prompt-mix 1k:60,8k:30,32k:10 -g layer -w 3 --decode-hold 50)
UCX_PUT=(-t ucx --ucx-op put --ucx-err-mode none)
for lanes in 4 1; do
    wanted ucx-put-c$lanes && run ucx-put-c$lanes "${UCX_PUT[@]}" "${LOAD[@]}" --decode-buffer 64GiB \
        --concurrency $lanes --arrivals poisson:$UCX_RATES -n 300 && sized ucx-put-c$lanes
    wanted tcp-staged-c$lanes && run tcp-staged-c$lanes -t tcp "${LOAD[@]}" --decode-buffer 64GiB \
        --concurrency $lanes --arrivals poisson:$TCP_RATES -n 30 && sized tcp-staged-c$lanes
done
wanted ucx-put-c4-spill && run ucx-put-c4-spill "${UCX_PUT[@]}" "${LOAD[@]}" --decode-buffer 8GiB \
    --concurrency 4 --arrivals poisson:50,100,200 -n 300 && sized ucx-put-c4-spill
PREFILL=(-m llama-3.1-8b -p 1024 -g layer -w 2 --decode-hold 50 --prefill-tflops 809 --overlap layer)
wanted ucx-put-prefill && run ucx-put-prefill "${UCX_PUT[@]}" "${PREFILL[@]}" \
    --arrivals poisson:10,20,40,60 -n 100 && pack
wanted tcp-staged-prefill && run tcp-staged-prefill -t tcp "${PREFILL[@]}" \
    --arrivals poisson:5,10,20,40 -n 60 && pack
echo "gpu-load.sh: $failed failed"
pack
