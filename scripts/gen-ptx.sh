#!/usr/bin/env bash
# Regenerates src/gpu/pattern.ptx from src/gpu/pattern.cu without a GPU or a
# CUDA toolkit: NVRTC and ptxas come from NVIDIA's PyPI wheels (cached under
# .cache/, which git ignores). The PTX targets compute_70 and declares PTX
# ISA 7.0, so drivers from CUDA 11.0 on can compile it; ptxas checks it for
# sm_70, sm_80 and sm_90. The source's FNV-1a hash is stamped into the PTX,
# and a unit test fails when the two drift apart.
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
python3 - "$CACHE/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" src/gpu/pattern.cu src/gpu/pattern.ptx <<'PY'
import ctypes, sys
lib, src_path, out_path = ctypes.CDLL(sys.argv[1]), sys.argv[2], sys.argv[3]
src = open(src_path, "rb").read()
prog = ctypes.c_void_p()
assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"pattern.cu", 0, None, None) == 0
opts = [b"--gpu-architecture=compute_70", b"-default-device", b"--std=c++11"]
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
head = ("// Generated from pattern.cu by scripts/gen-ptx.sh (NVRTC, compute_70, PTX ISA 7.0). Do not edit.\n"
        f"// source fnv1a64: {h:016x}\n")
open(out_path, "w").write(head + text)
PY
for arch in sm_70 sm_80 sm_90; do
    "$CACHE/nvidia/cuda_nvcc/bin/ptxas" --gpu-name $arch -o /dev/null src/gpu/pattern.ptx
done
echo "src/gpu/pattern.ptx regenerated and checked for sm_70, sm_80, sm_90"
