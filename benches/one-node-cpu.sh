#!/usr/bin/env bash
# CPU per message of one node: one `mqctl bench --size 1KiB ARGS` run against a fresh node
# (MQD picks another mqd binary), printing the run's msgs/s, end-to-end p99 in ms, the
# node's CPU during the run in ticks (100 a second is a whole core, from /proc/PID/stat)
# and the client's CPU per message in µs. Without arguments: --messages 200000
# --in-flight 256 --consumers 1 --warmup 50000 (workload (a), warmed).
# Needs release binaries: cargo build --release --workspace --bins
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/node.sh
start_node
[ "$#" -gt 0 ] || set -- --messages 200000 --in-flight 256 --consumers 1 --warmup 50000
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
before=$(ticks)
out=$($MQCTL bench --size 1KiB "$@" --output json)
after=$(ticks)
echo "$out" | python3 -c 'import json, sys
d = json.load(sys.stdin)
print("msgs/s", round(d["msgs_per_sec"]), "end-to-end p99 ms", d["end_to_end_ms"]["p99"],
      "node ticks", sys.argv[1], "client us/msg", round(d.get("client_cpu_us_per_message") or 0, 2))' "$((after - before))"
