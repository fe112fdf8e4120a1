#!/usr/bin/env bash
# kvxfer's nixl transport on one GPU (issue 34), two processes on GPU 0, in
# one call per model list:
#   nixl    kvxfer -t nixl over NIXL's UCX backend, WRITE (NixlPushConnector)
#           at 1k, 8k and 32k tokens, READ (NixlConnector) at 1k (on one GPU
#           UCX reads GPU memory by software emulation, 0.4 GB/s);
#   ucx     kvxfer -t ucx put and get on the UCX bundled in the same wheel
#           (NIXL's, through --ucx-lib), error mode peer as NIXL's backend;
#   anchor  scripts/nixl_anchor.py (NIXL's Python API) on the same
#           descriptors (`kvxfer plan --json`);
# each with a contiguous and a random block table, Llama-3.1-8B and -70B
# (MODELS), block granularity. Then `kvxfer doctor` and the LIBFABRIC
# backend tried (NIXL 1.5.1's plugin needs a libfabric newer than any
# CUDA build on a registry: kept as a finding).
# Needs the archive of scripts/fetch-nixl-cu13.sh (NIXL_ARCHIVE, default
# .whl/nixl-cu13-1.5.1-min.tar.xz, unpacked into /tmp/nixl), libfabric 2.3
# from scripts/fetch-ofi-cuda.sh (KVXFER_OFI_DIR, default .cache/ofi-cuda),
# PyTorch with the CUDA 13 runtime (the machine's python3), and the kvxfer
# binaries in KVXFER_BIN (default target/release).
#
#   MODELS="llama-3.1-8b llama-3.1-70b" scripts/gpu-nixl-transport.sh OUT_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-nixl-transport.sh OUT_DIR}
MODELS=${MODELS:-llama-3.1-8b llama-3.1-70b}
BIN=$(cd "${KVXFER_BIN:-target/release}" && pwd)
SITE=/tmp/nixl
mkdir -p "$SITE" && tar -C "$SITE" -xJf "${NIXL_ARCHIVE:-.whl/nixl-cu13-1.5.1-min.tar.xz}" || exit 1
OFI_DIR=$(cd "${KVXFER_OFI_DIR:-.cache/ofi-cuda}" && pwd)
CUDART=$(dirname "$(python3 -c "import glob, site; print(sorted(glob.glob(site.getsitepackages()[0] + '/nvidia/**/libcudart.so.13', recursive=True))[0])")")
export LD_LIBRARY_PATH=$SITE/extra:$CUDART:$OFI_DIR:${LD_LIBRARY_PATH:-}
export KVXFER_NIXL_LIB=$SITE/.nixl_cu13.mesonpy.libs/libnixl_capi.so
export KVXFER_UCX_LIB=$(ls "$SITE"/nixl_cu13.libs/libucp-*.so* | head -1) KVXFER_OFI_LIB=$OFI_DIR/libfabric.so.1
export PYTHONPATH=$SITE:${PYTHONPATH:-} KVXFER_BIN=$BIN NCCL_NVLS_ENABLE=0 SEND_GPU=0 RECV_GPU=0
export KVXFER_TIMEOUT=120s
mkdir -p "$OUT"
failed=0

{ nvidia-smi -L; "$BIN/kvxfer" --version; python3 -c "import torch; print('torch', torch.__version__)"
  echo "NIXL: $KVXFER_NIXL_LIB"; echo "UCX: $KVXFER_UCX_LIB"; echo "libfabric: $KVXFER_OFI_LIB"; } >"$OUT/machine.txt" 2>&1
"$BIN/kvxfer" doctor >"$OUT/doctor.txt" 2>&1

run() { # name, kvxfer-send options...
    local name=$1 t0=$(date +%s)
    shift
    echo "# kvxfer-send $*" >"$OUT/$name.cmd"
    timeout 300 scripts/two-gpus.sh "$OUT/$name" "$@"
    local rc=$?
    [ $rc = 0 ] || failed=$((failed + 1))
    echo "   $name: $(( $(date +%s) - t0 )) s, exit $rc"
}

anchor() { # plan point op -> one JSON line (or the failure)
    local port=$((18000 + RANDOM % 1000))
    timeout 120 python3 scripts/nixl_anchor.py target --plan "$1" --point "$2" --port $port --op "$3" \
        >>"$OUT/anchor-target.log" 2>&1 &
    local target=$!
    timeout 120 python3 scripts/nixl_anchor.py initiator --plan "$1" --point "$2" --port $port --op "$3" \
        --iterations 10 --warmup 2 2>>"$OUT/anchor-initiator.log" \
        || echo "{\"op\": \"$3\", \"plan\": \"$1\", \"point\": $2, \"failed\": true}"
    wait $target
}

# The LIBFABRIC backend: what kvxfer says where its plugin cannot load (exit 1 expected).
echo "# kvxfer-send -t nixl --nixl-backend LIBFABRIC -m llama-3.1-8b -g block -p 1024 -n 2" >"$OUT/nixl-libfabric.cmd"
timeout 120 scripts/two-gpus.sh "$OUT/nixl-libfabric" -t nixl --nixl-backend LIBFABRIC -m llama-3.1-8b -g block -p 1024 -n 2
echo "   nixl-libfabric: exit $?"

declare -A TABLE=([contiguous]="" [random]="--block-table random:1")
for model in $MODELS; do
    short=${model#llama-3.1-}
    for t in contiguous random; do
        # shellcheck disable=SC2086
        "$BIN/kvxfer" plan -m "$model" -g block -p 1024,8192,32768 ${TABLE[$t]} --json "$OUT/plan-$short-$t.json" \
            >"$OUT/plan-$short-$t.txt"
        w=(-m "$model" -g block -p 1024,8192,32768 -n 10 -w 2)
        r=(-m "$model" -g block -p 1024 -n 5 -w 1)
        # shellcheck disable=SC2086
        {
            run "nixl-write-$short-$t" -t nixl --nixl-op write "${w[@]}" ${TABLE[$t]}
            run "ucx-put-$short-$t" -t ucx --ucx-op put --ucx-err-mode peer "${w[@]}" ${TABLE[$t]}
            run "nixl-read-$short-$t" -t nixl --nixl-op read "${r[@]}" ${TABLE[$t]}
            run "ucx-get-$short-$t" -t ucx --ucx-op get --ucx-err-mode peer "${r[@]}" ${TABLE[$t]}
        }
        for point in 0 1 2; do
            anchor "$OUT/plan-$short-$t.json" $point WRITE
        done >"$OUT/anchor-write-$short-$t.jsonl"
        anchor "$OUT/plan-$short-$t.json" 0 READ >"$OUT/anchor-read-$short-$t.jsonl"
    done
done
echo "gpu-nixl-transport.sh: $failed failed kvxfer run(s)"
[ $failed = 0 ]
