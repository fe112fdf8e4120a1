#!/usr/bin/env bash
# One kvxfer pair across two hosts, started by Open MPI's mpirun: rank 0
# (prefill, sender) on PREFILL_HOST, rank 1 (decode, receiver) on
# DECODE_HOST, which also holds the rendezvous. MPI only starts the two
# processes; the data goes over the transport chosen (-t nccl|ucx|tcp).
# kvxfer must be at the same path on both hosts.
#
#   PREFILL_HOST=node-a DECODE_HOST=node-b scripts/mpirun-two-hosts.sh [kvxfer launch options ...]
#   e.g. ... -t nccl --memory gpu -m llama-3.1-70b -p 8k,32k -g layer --json run.json
#
# Environment passes through with -x (NCCL_*, UCX_*, FI_*): add what your
# fabric needs, e.g. -x NCCL_IB_HCA=mlx5_0 or -x UCX_NET_DEVICES=mlx5_0:1, in
# MPIRUN_ARGS (word-split; also --allow-run-as-root where you run as root).
set -euo pipefail
: "${PREFILL_HOST:?set PREFILL_HOST}" "${DECODE_HOST:?set DECODE_HOST}"
KVXFER=${KVXFER:-$(command -v kvxfer || echo "$(cd "$(dirname "$0")/.." && pwd)/target/release/kvxfer")}
PORT=${KVXFER_PORT:-7477}
exec mpirun -np 2 --host "$PREFILL_HOST:1,$DECODE_HOST:1" --map-by node ${MPIRUN_ARGS:-} \
    -x NCCL_NVLS_ENABLE=0 -x KVXFER_UCX_LIB \
    "$KVXFER" launch --rendezvous "$DECODE_HOST:$PORT" "$@"
