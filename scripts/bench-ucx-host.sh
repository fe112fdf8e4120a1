#!/usr/bin/env bash
# UCX on host memory on this machine: kvxfer's ucx put/get/send (one
# message of 64 MiB and 1 GiB per request, both endpoint error modes) next to
# ucx_perftest ucp_put_bw / ucp_get at the same sizes, in one go.
#   scripts/bench-ucx-host.sh OUT_DIR      (needs ucx-utils for ucx_perftest)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench-ucx-host.sh OUT_DIR}
BIN=${KVXFER_BIN:-target/release}
mkdir -p "$OUT"
{ uname -a; nproc; "$BIN/kvxfer" --version; ucx_info -v; ucx_info -d | grep -E "Transport|Device"; } >"$OUT/machine.txt" 2>&1
for test in ucp_put_bw ucp_get; do
    for size in 67108864 1073741824; do
        port=$((14000 + RANDOM % 1000))
        timeout 120 ucx_perftest -p $port >/dev/null 2>&1 &
        sleep 1
        echo "# ucx_perftest 127.0.0.1 -p PORT -t $test -m host -s $size -n 20 -w 3 -f"
        timeout 120 ucx_perftest 127.0.0.1 -p $port -t $test -m host -s $size -n 20 -w 3 -f 2>&1
        wait
    done
done >"$OUT/perftest.txt"
for mode in none peer; do
    for op in put get send; do
        "$BIN/kvxfer-recv" --listen 127.0.0.1:0 >"$OUT/$op-$mode.recv.txt" 2>"$OUT/recv.err" &
        sleep 0.5
        addr=$(sed -n 's/.*listening on //p' "$OUT/recv.err" | head -1)
        "$BIN/kvxfer-send" --connect "$addr" -t ucx --ucx-op $op --ucx-err-mode $mode -p 512,8192 -g request \
            -n 20 -w 3 --json "$OUT/$op-$mode.json" >"$OUT/$op-$mode.txt" 2>&1
        wait
    done
done
rm -f "$OUT/recv.err"
grep -h -E "^ +request|path" "$OUT"/*-*.txt
