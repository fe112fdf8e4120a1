#!/usr/bin/env bash
# The TTFT that KV transfer adds, on one GPU (both sides on GPU 0): the
# sender's emulated prefill is the calibrated kernel of src/gpu/prefill.cu,
# its layer times set by --prefill-tflops from this GPU's own bf16 matrix
# product rate (PyTorch, 8192^3, measured first in the same call), and
# Llama-3.1-8B's KV moves layer by layer during it (--overlap layer) or
# after it (--overlap none), over ucx put (CUDA UCX, cuda_ipc) and tcp
# staged through pinned memory. nvidia-smi dmon logs clocks and power
# throughout.
# Needs a CUDA build of UCX (scripts/fetch-ucx-cuda.sh; KVXFER_UCX_DIR,
# default .cache/ucx-cu13) and the binaries in KVXFER_BIN (default
# target/release).
#
#   scripts/gpu-prefill.sh OUT_DIR [smoke]
# Leaves OUT_DIR.tgz beside OUT_DIR, every log in one file.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-prefill.sh OUT_DIR [smoke]}
MODE=${2:-full}
. scripts/one-gpu-env.sh

{ nvidia-smi; uname -a; "$BIN/kvxfer" --version; } >"$OUT/machine.txt" 2>&1
nvidia-smi dmon -s pc -d 1 >"$OUT/dmon.txt" 2>&1 &
dmon=$!
PYTHONUNBUFFERED=1 python3 - >"$OUT/matmul.txt" 2>&1 <<'PY'
import torch
# bf16 matrix product, 8192^3, random data: the mean of ten after three warm-ups.
n = 8192
a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
for _ in range(3):
    a @ b
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(10):
    a @ b
e.record()
torch.cuda.synchronize()
tf = 2 * n**3 * 10 / (s.elapsed_time(e) / 1e3) / 1e12
print(f"# torch {torch.__version__}, {torch.cuda.get_device_name()}: bf16 {n}^3 matmul")
print(f"tflops {tf:.0f}")
PY
TF=$(sed -n 's/^tflops //p' "$OUT/matmul.txt")
cat "$OUT/matmul.txt"
if [ -z "$TF" ]; then
    echo "gpu-prefill.sh: no matmul rate" >&2
    kill $dmon
    exit 1
fi

if [ "$MODE" = smoke ]; then
    run smoke-ucx-layer -t ucx --ucx-op put --ucx-err-mode none -m llama-3.1-8b -p 1024,8192 -g layer \
        -n 3 -w 1 --prefill-tflops "$TF" --overlap layer
else
    TOKENS=1024,2048,4096,8192,16384,32768
    for ov in layer none; do
        run ucx-put-$ov -t ucx --ucx-op put --ucx-err-mode none -m llama-3.1-8b -p $TOKENS -g layer \
            -n 8 -w 2 --prefill-tflops "$TF" --overlap $ov
        run tcp-staged-$ov -t tcp -m llama-3.1-8b -p $TOKENS -g layer \
            -n 8 -w 2 --prefill-tflops "$TF" --overlap $ov
    done
    # Blocks: a layer's blocks go together once the layer is computed.
    run ucx-put-block-layer -t ucx --ucx-op put --ucx-err-mode none -m llama-3.1-8b -p 1024,8192 -g block \
        -n 5 -w 1 --prefill-tflops "$TF" --overlap layer
fi
tar czf "$OUT.tgz" -C "$(dirname "$OUT")" "$(basename "$OUT")"
kill $dmon
echo "gpu-prefill.sh: $failed failed"
[ $failed = 0 ]
