#!/usr/bin/env bash
# CPU per message of a three-node cluster: one `mqctl bench --size 1KiB ARGS` run against
# node 1 of a fresh cluster (benches/cluster.sh; MQD picks another mqd binary), printing
# the run's msgs/s and end-to-end p50, each node's CPU during the run in ticks (100 a
# second is a whole core, from /proc/PID/stat) and the client's user and system seconds.
# Without arguments: --messages 200000 --in-flight 256 --consumers 1 (workload (a)).
# Needs release binaries: cargo build --release --workspace --bins
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/cluster.sh
start_cluster
sleep 2
ticks() { for p in "${PIDS[@]}"; do awk '{printf "%d ", $14 + $15}' "/proc/$p/stat"; done; }
[ "$#" -gt 0 ] || set -- --messages 200000 --in-flight 256 --consumers 1
read -ra before <<< "$(ticks)"
out=$(/usr/bin/time -f "%U %S" -o "$BASE/client-time" $MQCTL bench --size 1KiB "$@" --output json)
read -ra after <<< "$(ticks)"
rate=$(echo "$out" | python3 -c 'import json, sys; d = json.load(sys.stdin); print(round(d["msgs_per_sec"]), d["end_to_end_ms"]["p50"])')
echo "msgs/s, end-to-end p50 ms: $rate"
echo "node CPU ticks during the run: $((after[0] - before[0])) $((after[1] - before[1])) $((after[2] - before[2]))"
echo "client user, system s: $(cat "$BASE/client-time")"
