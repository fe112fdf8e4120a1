#!/usr/bin/env bash
# tcp on GPU memory against its two ceilings on this host, in one run:
# kvxfer's tcp transport on host memory over loopback, and the pinned-memory
# PCIe copy (device to host, host to device) timed by PyTorch with CUDA events.
# The staged GPU path can go no faster than the slower of the two.
#
#   scripts/gpu-tcp-anchors.sh OUT_DIR      (KVXFER_BIN: folder of the binaries)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-tcp-anchors.sh OUT_DIR}
mkdir -p "$OUT"
run=(-t tcp -m llama-3.1-8b -p 512,2048,8192 -g request -n 10 -w 2)
SEND_MEMORY=host RECV_MEMORY=host scripts/two-gpus.sh "$OUT/tcp-host" "${run[@]}"
SEND_MEMORY=gpu RECV_MEMORY=gpu scripts/two-gpus.sh "$OUT/tcp-gpu" "${run[@]}"
python3 - >"$OUT/pcie-copy.txt" <<'PY'
import torch
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, pinned host memory, median of 20 copies")
for mib in (64, 256, 1024):
    n = mib << 20
    g = torch.empty(n, dtype=torch.uint8, device="cuda:0")
    h = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    for name, copy in (("device to host", lambda: h.copy_(g, non_blocking=True)),
                       ("host to device", lambda: g.copy_(h, non_blocking=True))):
        times = []
        for i in range(23):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(); copy(); e.record(); e.synchronize()
            if i >= 3:
                times.append(s.elapsed_time(e))
        times.sort()
        print(f"{mib:5d} MiB {name}: {n / (times[len(times) // 2] * 1e-3) / 1e9:6.1f} GB/s")
PY
cat "$OUT/pcie-copy.txt"
grep -hE "^ +request" "$OUT/tcp-host.txt" "$OUT/tcp-gpu.txt"
