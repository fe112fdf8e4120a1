#!/usr/bin/env bash
# ofi over libfabric's tcp provider against kvxfer's own tcp transport on
# this host, host memory, two processes over loopback (issue 8's target:
# ofi tcp at least 90% of kvxfer tcp). ROUNDS rounds, each running every
# series once in turn, so that a slow spell of a small shared machine falls
# on all of them; the summary takes each point's median over the rounds.
#
#   scripts/ofi-vs-tcp.sh OUT_DIR [workload options]
#   default workload: -m llama-3.1-8b -p 512,2048,8192 -g request,layer -n 10
#
# Writes OUT_DIR/<series>.<round>.{txt,json,csv,recv.*} and OUT_DIR/summary.md.
# Environment: KVXFER_BIN (default target/release), ROUNDS=3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: ofi-vs-tcp.sh OUT_DIR [workload options]}
shift
workload=("$@")
[ ${#workload[@]} -gt 0 ] || workload=(-m llama-3.1-8b -p 512,2048,8192 -g request,layer -n 10)
export SEND_MEMORY=host RECV_MEMORY=host
mkdir -p "$out"
declare -A series=(
    [tcp]="-t tcp"
    [ofi-tcp-write]="-t ofi --ofi-provider tcp --ofi-op write"
    [ofi-tcp-read]="-t ofi --ofi-provider tcp --ofi-op read"
    [ofi-tcp-send]="-t ofi --ofi-provider tcp --ofi-op send"
)
order=(tcp ofi-tcp-write ofi-tcp-read ofi-tcp-send)
for round in $(seq "${ROUNDS:-3}"); do
    for s in "${order[@]}"; do
        # shellcheck disable=SC2086 # the series' options split on purpose
        "$here/two-gpus.sh" "$out/$s.$round" ${series[$s]} "${workload[@]}"
    done
done
python3 - "$out" "${order[@]}" >"$out/summary.md" <<'PY'
import glob, json, statistics, sys
out, order = sys.argv[1], sys.argv[2:]
gbps = {}  # series -> (granularity, prompt) -> [GB/s per round]
for s in order:
    for f in sorted(glob.glob(f"{out}/{s}.[0-9]*.json")):
        if f.endswith(".recv.json"):
            continue
        for p in json.load(open(f))["points"]:
            gbps.setdefault(s, {}).setdefault((p["granularity"], p["prompt_tokens"]), []).append(p["gbps"])
points = list(gbps["tcp"])
print("GB/s, median over rounds (each round's figure in brackets), and the ratio of medians to tcp\n")
print("| series | " + " | ".join(f"{g} {t}" for g, t in points) + " |")
print("|---" * (len(points) + 1) + "|")
for s in order:
    cells = []
    for k in points:
        runs = gbps[s][k]
        med = statistics.median(runs)
        ratio = med / statistics.median(gbps["tcp"][k])
        cells.append(f"{med:.2f} ({ratio:.0%}) [{', '.join(f'{r:.2f}' for r in runs)}]")
    print(f"| {s} | " + " | ".join(cells) + " |")
PY
cat "$out/summary.md"
