#!/usr/bin/env bash
# Regenerates src/gpu/*.ptx from src/gpu/*.cu without a GPU or a CUDA
# toolkit: NVRTC and ptxas come from NVIDIA's PyPI wheels (cached under
# .cache/, which git ignores). The PTX declares PTX ISA 7.0, so drivers from
# CUDA 11.0 on can compile it. pattern.cu targets compute_70 (checked for
# sm_70, sm_80, sm_90); prefill.cu uses bf16 tensor-core products, so it
# targets compute_80 (checked for sm_80, sm_90). Each source's FNV-1a hash is
# stamped into its PTX, and unit tests fail when the two drift apart.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=12.9.86
CACHE=.cache/cuda-wheels-$VERSION
if [ ! -x "$CACHE/nvidia/cuda_nvcc/bin/ptxas" ]; then
    mkdir -p "$CACHE"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
        --python-version 3.12 -d "$CACHE" "nvidia-cuda-nvrtc-cu12==$VERSION" "nvidia-cuda-nvcc-cu12==$VERSION"
    (cd "$CACHE" && for w in *.whl; do python3 -m zipfile -e "$w" .; done && chmod +x nvidia/cuda_nvcc/bin/ptxas)
fi
gen() { # NAME ARCH SM...
    local name=$1 arch=$2
    shift 2
    python3 - "$CACHE/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" "src/gpu/$name.cu" "src/gpu/$name.ptx" "$arch" <<'PY'
import ctypes, os, sys
lib, src_path, out_path, arch = ctypes.CDLL(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
name = os.path.basename(src_path)
src = open(src_path, "rb").read()
prog = ctypes.c_void_p()
assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, name.encode(), 0, None, None) == 0
opts = [f"--gpu-architecture={arch}".encode(), b"-default-device", b"--std=c++11"]
rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
n = ctypes.c_size_t()
lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
log = ctypes.create_string_buffer(n.value)
lib.nvrtcGetProgramLog(prog, log)
if rc != 0:
    sys.exit("nvrtc failed:\n" + log.value.decode())
lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
ptx = ctypes.create_string_buffer(n.value)
lib.nvrtcGetPTX(prog, ptx)
text = ptx.value.decode()
lines = text.splitlines()
assert ".version" in text
text = "\n".join(".version 7.0" if l.startswith(".version ") else l for l in lines) + "\n"
h = 0xcbf29ce484222325
for b in src:
    h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
head = (f"// Generated from {name} by scripts/gen-ptx.sh (NVRTC, {arch}, PTX ISA 7.0). Do not edit.\n"
        f"// source fnv1a64: {h:016x}\n")
open(out_path, "w").write(head + text)
PY
    for sm in "$@"; do
        "$CACHE/nvidia/cuda_nvcc/bin/ptxas" --gpu-name "$sm" -o /dev/null "src/gpu/$name.ptx"
    done
    echo "src/gpu/$name.ptx regenerated and checked for $*"
}
gen pattern compute_70 sm_70 sm_80 sm_90
gen prefill compute_80 sm_80 sm_90
