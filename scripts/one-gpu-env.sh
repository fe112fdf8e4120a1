# Sourced by the scripts that run both sides on GPU 0 (gpu-*.sh), with OUT
# set: the CUDA UCX (KVXFER_UCX_DIR, default .cache/ucx-cu13), the binaries
# (KVXFER_BIN, default target/release), and run NAME OPTIONS..., which
# runs kvxfer-send OPTIONS through scripts/two-gpus.sh into OUT/NAME.*,
# counting failures in $failed.
UCX=$(cd "${KVXFER_UCX_DIR:-.cache/ucx-cu13}" && pwd)
BIN=$(cd "${KVXFER_BIN:-target/release}" && pwd)
export KVXFER_UCX_LIB=$UCX/libucx/lib/libucp.so.0 KVXFER_BIN=$BIN SEND_GPU=0 RECV_GPU=0
export NCCL_NVLS_ENABLE=0
mkdir -p "$OUT"
failed=0

run() { # name, kvxfer-send options... (scripts/two-gpus.sh, both sides on GPU 0)
    local name=$1 t0=$(date +%s)
    shift
    echo "# kvxfer-send $*" >"$OUT/$name.cmd"
    scripts/two-gpus.sh "$OUT/$name" "$@" || failed=$((failed + 1))
    echo "   $name: $(( $(date +%s) - t0 )) s"
}
