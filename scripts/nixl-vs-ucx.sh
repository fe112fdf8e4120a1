#!/usr/bin/env bash
# NIXL's UCX backend against raw UCX on the same UCX (the one NIXL's wheel
# bundles), same plans, two processes on this host: kvxfer -t nixl
# (--nixl-op write and read, as NixlPushConnector and NixlConnector) beside
# -t ucx put and get in error mode peer (NIXL's UCX backend's mode), with
# UCX's defaults and with the UCX settings NIXL's backend makes, and NIXL
# with and without its progress thread.
# ROUNDS rounds, each running every series once in turn, so that a slow
# spell of a small shared machine falls on all of them; the summary takes
# each point's median over the rounds, with NIXL's steps (p50) beside.
#
#   scripts/nixl-vs-ucx.sh OUT_DIR [workload options]
#   default workload: -m llama-3.1-8b -p 1024,8192 -g block -n 10
#
# Writes OUT_DIR/<series>.<round>.{txt,json,csv,recv.*} and OUT_DIR/summary.md.
# Environment: KVXFER_NIXL_LIB (default: scripts/fetch-nixl.sh's),
# KVXFER_UCX_LIB (default: the libucp beside that NIXL), KVXFER_BIN
# (default target/release), ROUNDS=3, SEND_MEMORY/RECV_MEMORY (host).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: nixl-vs-ucx.sh OUT_DIR [workload options]}
shift
workload=("$@")
[ ${#workload[@]} -gt 0 ] || workload=(-m llama-3.1-8b -p 1024,8192 -g block -n 10)
: "${KVXFER_NIXL_LIB:=$("$here/fetch-nixl.sh")}"
: "${KVXFER_UCX_LIB:=$(ls "$(dirname "$KVXFER_NIXL_LIB")"/../nixl_cu13.libs/libucp-*.so* | head -1)}"
export KVXFER_NIXL_LIB KVXFER_UCX_LIB
export SEND_MEMORY=${SEND_MEMORY:-host} RECV_MEMORY=${RECV_MEMORY:-host}
mkdir -p "$out"
declare -A series=(
    [ucx-put]="-t ucx --ucx-op put --ucx-err-mode peer"
    [ucx-put-nixl-config]="-t ucx --ucx-op put --ucx-err-mode peer"
    [nixl-write]="-t nixl --nixl-op write"
    [nixl-write-no-progress-thread]="-t nixl --nixl-op write --nixl-progress-thread off"
    [ucx-get]="-t ucx --ucx-op get --ucx-err-mode peer"
    [ucx-get-nixl-config]="-t ucx --ucx-op get --ucx-err-mode peer"
    [nixl-read]="-t nixl --nixl-op read"
    [nixl-read-no-progress-thread]="-t nixl --nixl-op read --nixl-progress-thread off"
)
# What NIXL's UCX backend sets in its UCX context that moves data
# differently (src/plugins/ucx/ucx_utils.cpp, nixlUcxContext): with UCX
# 1.23 a rendezvous threshold of inf keeps cma for RMA in error mode peer.
NIXL_CONFIG="UCX_RNDV_THRESH=inf UCX_MAX_RMA_RAILS=2"
order=(ucx-put ucx-put-nixl-config nixl-write nixl-write-no-progress-thread
       ucx-get ucx-get-nixl-config nixl-read nixl-read-no-progress-thread)
{ "${KVXFER_BIN:-$here/../target/release}/kvxfer" --version; uname -a; nproc
  echo "NIXL: $KVXFER_NIXL_LIB"; echo "UCX: $KVXFER_UCX_LIB"; echo "workload: ${workload[*]}"; } >"$out/machine.txt"
for round in $(seq "${ROUNDS:-3}"); do
    for s in "${order[@]}"; do
        case $s in *-nixl-config) env=$NIXL_CONFIG ;; *) env="" ;; esac
        # shellcheck disable=SC2086 # the series' options split on purpose
        env $env "$here/two-gpus.sh" "$out/$s.$round" ${series[$s]} "${workload[@]}"
    done
done
python3 - "$out" "${order[@]}" >"$out/summary.md" <<'PY'
import glob, json, statistics, sys
out, order = sys.argv[1], sys.argv[2:]
gbps, steps = {}, {}  # series -> point -> [GB/s per round]; nixl series -> point -> step -> [p50s]
for s in order:
    for f in sorted(glob.glob(f"{out}/{s}.[0-9]*.json")):
        if f.endswith(".recv.json"):
            continue
        for p in json.load(open(f))["points"]:
            k = (p["granularity"], p["prompt_tokens"])
            gbps.setdefault(s, {}).setdefault(k, []).append(p["gbps"])
            for step, v in (p.get("nixl") or {}).items():
                if isinstance(v, dict) and "p50" in v:
                    steps.setdefault(s, {}).setdefault(k, {}).setdefault(step, []).append(v["p50"])
points = list(gbps[order[0]])
med = lambda xs: statistics.median(xs)
print("GB/s, median over rounds (each round's in brackets); NIXL over raw UCX on the same UCX\n")
print("| series | " + " | ".join(f"{g} {t}" for g, t in points) + " |")
print("|---" * (len(points) + 1) + "|")
for s in order:
    cells = [f"{med(gbps[s][k]):.2f} ({', '.join(f'{x:.2f}' for x in gbps[s][k])})" for k in points]
    print(f"| {s} | " + " | ".join(cells) + " |")
pairs = [(f"nixl-{op}{pt}", f"ucx-{raw}{cfg}") for op, raw in (("write", "put"), ("read", "get"))
         for pt in ("", "-no-progress-thread") for cfg in ("", "-nixl-config")]
for nixl, raw in pairs:
    print(f"| {nixl} / {raw} | " + " | ".join(f"{med(gbps[nixl][k]) / med(gbps[raw][k]):.2f}" for k in points) + " |")
print("\nNIXL's steps, p50 in us (median over rounds)\n")
names = ["ids_ns", "make_ns", "post_ns", "transfer_ns", "notified_ns", "nixl_post_ns", "nixl_xfer_ns"]
print("| series | point | " + " | ".join(n[:-3] for n in names) + " |")
print("|---" * (len(names) + 2) + "|")
for s in [s for s in order if s.startswith("nixl")]:
    for k in points:
        st = steps.get(s, {}).get(k, {})
        cells = [f"{med(st[n]) / 1e3:.1f}" if n in st else "-" for n in names]
        print(f"| {s} | {k[0]} {k[1]} | " + " | ".join(cells) + " |")
PY
cat "$out/summary.md"
