#!/usr/bin/env bash
# kvxfer's block mode against NIXL on the same descriptors, in one call,
# two processes on GPU 0:
#   plans    `kvxfer plan --json` for Llama-3.1-8B, block granularity, with
#            a contiguous block table (the default pool; 1k and 8k tokens)
#            and a random one (random:1, pools of 4096 blocks; 1k tokens);
#   nixl     scripts/nixl_anchor.py, READ and WRITE, over NIXL's UCX and
#            LIBFABRIC backends (where they load), on those descriptors;
#   kvxfer   ucx get and put (error mode peer, as NIXL's UCX backend) with
#            the UCX bundled in the same NIXL wheel, and ofi read and write
#            over shm with the libfabric NIXL's LIBFABRIC plugin loads, on
#            the same plans.
# Needs NIXL from scripts/fetch-nixl-cu13.sh (NIXL_ARCHIVE, default
# .whl/nixl-cu13-1.5.1-min.tar.xz; unpacked into /tmp/nixl), libfabric 2.3
# with CUDA from scripts/fetch-ofi-cuda.sh (KVXFER_OFI_DIR, default
# .cache/ofi-cuda; NIXL's LIBFABRIC plugin loads it too), PyTorch with the
# CUDA 13 runtime, and the kvxfer binaries in KVXFER_BIN (default
# target/release).
#
#   scripts/gpu-nixl.sh OUT_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu-nixl.sh OUT_DIR}
BIN=$(cd "${KVXFER_BIN:-target/release}" && pwd)
SITE=/tmp/nixl
mkdir -p "$SITE" && tar -C "$SITE" -xJf "${NIXL_ARCHIVE:-.whl/nixl-cu13-1.5.1-min.tar.xz}" || exit 1
OFI_DIR=$(cd "${KVXFER_OFI_DIR:-.cache/ofi-cuda}" && pwd)
CUDART=$(dirname "$(python3 -c "import glob, site; print(sorted(glob.glob(site.getsitepackages()[0] + '/nvidia/**/libcudart.so.13', recursive=True))[0])")")
export NIXL_PLUGIN_DIR=$SITE/.nixl_cu13.mesonpy.libs/plugins LD_LIBRARY_PATH=$SITE/extra:$CUDART:$OFI_DIR:${LD_LIBRARY_PATH:-}
export KVXFER_UCX_LIB=$(ls "$SITE"/nixl_cu13.libs/libucp-*.so* | head -1) KVXFER_OFI_LIB=$OFI_DIR/libfabric.so.1
export PYTHONPATH=$SITE:${PYTHONPATH:-} KVXFER_BIN=$BIN NCCL_NVLS_ENABLE=0
export SEND_GPU=0 RECV_GPU=0
mkdir -p "$OUT"
failed=0
MODEL=(-m llama-3.1-8b -g block)
# A fragmented table costs some paths a lot per descriptor: 1k tokens only.
declare -A TABLE=([contiguous]="-p 1024,8192" [random]="-p 1024 --block-table random:1 --pool-blocks 4096")
declare -A POINTS=([contiguous]="0 1" [random]="0")

{ nvidia-smi -L; "$BIN/kvxfer" --version; python3 -c "import nixl_cu13, torch; print('nixl', nixl_cu13.__file__, 'torch', torch.__version__)"
  echo "UCX: $KVXFER_UCX_LIB"; echo "libfabric: $KVXFER_OFI_LIB"; } >"$OUT/machine.txt" 2>&1

anchor() { # plan point op backend -> one JSON line (or the failure)
    local port=$((18000 + RANDOM % 1000)) log="$OUT/nixl-target.log"
    timeout 90 python3 scripts/nixl_anchor.py target --plan "$1" --point "$2" \
        --port $port --op "$3" --backend "$4" >>"$log" 2>&1 &
    local target=$!
    timeout 90 python3 scripts/nixl_anchor.py initiator --plan "$1" --point "$2" \
        --port $port --op "$3" --backend "$4" --iterations 10 --warmup 2 2>>"$OUT/nixl-initiator.log" \
        || echo "{\"nixl_backend\": \"$4\", \"op\": \"$3\", \"plan\": \"$1\", \"point\": $2, \"failed\": true}"
    wait $target
}

for t in contiguous random; do
    # shellcheck disable=SC2086
    "$BIN/kvxfer" plan "${MODEL[@]}" ${TABLE[$t]} --json "$OUT/plan-$t.json" >"$OUT/plan-$t.txt"
    for point in ${POINTS[$t]}; do
        for op in READ WRITE; do
            for backend in UCX LIBFABRIC; do
                anchor "$OUT/plan-$t.json" $point $op $backend
            done
        done
    done >"$OUT/nixl-$t.jsonl"
    for run in "ucx get" "ucx put" "ofi read" "ofi write"; do
        set -- $run
        name=kvxfer-$1-$2-$t
        case $1 in
            ucx) via=(-t ucx --ucx-op "$2" --ucx-err-mode peer) ;;
            ofi) via=(-t ofi --ofi-op "$2" --ofi-provider shm) ;;
        esac
        # shellcheck disable=SC2086
        timeout 120 scripts/two-gpus.sh "$OUT/$name" "${via[@]}" "${MODEL[@]}" ${TABLE[$t]} -n 10 -w 2 \
            || failed=$((failed + 1))
    done
done
echo "gpu-nixl.sh: $failed failed kvxfer run(s)"
[ $failed = 0 ]
