#!/usr/bin/env bash
# kvxfer's tcp transport against iperf3 (the anchor), single stream over
# loopback, on this machine, in one run. Rounds alternate the two tools so
# that a noisy machine affects both alike; medians are reported.
#
#   scripts/bench-tcp-loopback.sh [ROUNDS] [OUT_DIR]
#
# Writes OUT_DIR/tcp-loopback-vs-iperf3.md (default results/) with the
# figures, the ratio, the commands and the machine, and the raw samples.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
OUT=${2:-results}
PORT=5299
SECS=5
mkdir -p "$OUT"

if ! command -v iperf3 >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "iperf3 is missing: apt-get install iperf3" >&2; exit 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null
fi
cargo build --release --quiet
KVXFER=target/release/kvxfer
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Llama-3.1-8B at 512, 2048 and 8192 tokens: one message of 64 MiB, 256 MiB, 1 GiB.
KV_CMD=("$KVXFER" pair -m llama-3.1-8b -p 512,2048,8192 -g request -n 10 -w 2 -q)

iperf() { # extra client args...; prints receiver GB/s
    iperf3 -s -1 -p $PORT >/dev/null 2>&1 &
    local server=$!
    sleep 0.5
    iperf3 -c 127.0.0.1 -p $PORT -t $SECS -J "$@" >"$WORK/iperf.json"
    # A one-off server exits after its client; one whose client failed is ended here.
    kill $server 2>/dev/null
    wait $server 2>/dev/null || true
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/8e9)' "$WORK/iperf.json"
}

echo "round,tool,size,gbps" >"$WORK/samples.csv"
for r in $(seq 1 "$ROUNDS"); do
    echo "$r,iperf3 -l 128K (default),stream,$(iperf)" >>"$WORK/samples.csv"
    echo "$r,iperf3 -l 1M,stream,$(iperf -l 1M)" >>"$WORK/samples.csv"
    "${KV_CMD[@]}" --json "$WORK/kv.json"
    python3 - "$WORK/kv.json" "$r" >>"$WORK/samples.csv" <<'EOF'
import json, sys
for p in json.load(open(sys.argv[1]))["points"]:
    print(f'{sys.argv[2]},kvxfer tcp,{p["request_bytes"] >> 20} MiB,{p["gbps"]}')
EOF
    tail -5 "$WORK/samples.csv" >&2
done
cp "$WORK/samples.csv" "$OUT/tcp-loopback-vs-iperf3.samples.csv"

python3 - "$WORK/samples.csv" "$OUT/tcp-loopback-vs-iperf3.md" "$ROUNDS" "${KV_CMD[*]}" "$SECS" <<'EOF'
import csv, statistics, subprocess, sys, platform, datetime
samples, out, rounds, kv_cmd, secs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
rows = list(csv.DictReader(open(samples)))
med = {}
for r in rows:
    med.setdefault((r["tool"], r["size"]), []).append(float(r["gbps"]))
med = {k: (statistics.median(v), min(v), max(v)) for k, v in med.items()}
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception: return "?"
anchors = [k for k in med if k[0].startswith("iperf3")]
kv = sorted([k for k in med if k[0] == "kvxfer tcp"], key=lambda k: int(k[1].split()[0]))
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")
lines = [
    "# kvxfer tcp vs iperf3, single stream, loopback",
    "",
    f"Measured {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC by `scripts/bench-tcp-loopback.sh {rounds}`:",
    f"{rounds} rounds, each running iperf3 ({secs} s, default 128 KiB writes), iperf3 `-l 1M`, then kvxfer; medians over rounds (min-max in brackets). GB/s = 1e9 bytes/s.",
    "",
    f"- machine: {platform.node()}, {sh('nproc')} cores, {cpu}, {platform.platform()}",
    f"- kvxfer: {sh('target/release/kvxfer --version')}; command: `{kv_cmd}`",
    f"- iperf3: {sh('iperf3 --version | head -1')}; command: `iperf3 -c 127.0.0.1 -t {secs} [-l 1M]` against `iperf3 -s -1`",
    "",
    "| transfer | kvxfer GB/s | " + " | ".join(f"{a[0]} GB/s | kvxfer / {a[0]}" for a in anchors) + " |",
    "|---|---|" + "---|---|" * len(anchors),
]
for k in kv:
    m, lo, hi = med[k]
    cells = [f"{k[1]} (1 message)", f"{m:.2f} [{lo:.2f}-{hi:.2f}]"]
    for a in anchors:
        am, alo, ahi = med[a]
        cells += [f"{am:.2f} [{alo:.2f}-{ahi:.2f}]", f"{100*m/am:.0f}%"]
    lines.append("| " + " | ".join(cells) + " |")
lines += ["", "Raw samples: `tcp-loopback-vs-iperf3.samples.csv`.", ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
EOF
