#!/usr/bin/env bash
# The expiry runs of docs/BENCHMARKS.md ("Expiry in one pass per table"): a fresh node,
# queue `old` filled with N messages of 100 B (default 1,000,000), 500 msgs/s sent to a
# queue Q of the same shard, and 2 s into that `old`'s retention set to 1 s, so that all
# of it expires at once. Prints how long until `old` is empty, the node's CPU meanwhile
# and Q's send latencies. MQD picks another mqd binary. Needs release binaries:
# cargo build --release --workspace --bins
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
. benches/node.sh
start_node
until $MQCTL cluster status > /dev/null 2>&1; do sleep 0.2; done
field() { $MQCTL queue describe "$1" --output json | python3 -c "import json,sys; d=json.load(sys.stdin); print($2)"; }
$MQCTL queue create old > /dev/null
SHARD=$(field old 'd["shard"]')
Q=""
for i in $(seq 0 999); do
    $MQCTL queue create "q$i" > /dev/null
    if [ "$(field "q$i" 'd["shard"]')" = "$SHARD" ]; then Q=q$i; break; fi
    $MQCTL queue delete "q$i" > /dev/null
done
[ -n "$Q" ] || { echo "no queue name found in shard $SHARD" >&2; exit 1; }
$MQCTL bench --queue old --size 100 --messages "$N" --batch 100 --in-flight 16 --consumers 0 --output json > /dev/null
$MQCTL bench --queue "$Q" --size 100 --duration 14s --rate 500 --in-flight 64 --consumers 0 --output json > "$D.q.json" &
B=$!
sleep 2
t0=$(date +%s.%N)
c0=$(awk '{print $14+$15}' "/proc/$PID/stat")
$MQCTL queue set old --retention 1s > /dev/null
until [ "$(field old 'd["visible"] + d["in_flight"] + d["delayed"]')" = 0 ]; do sleep 0.1; done
t1=$(date +%s.%N)
c1=$(awk '{print $14+$15}' "/proc/$PID/stat")
wait $B
python3 - "$t0" "$t1" "$c0" "$c1" "$D.q.json" <<'PY'
import json, sys
t0, t1, c0, c1 = map(float, sys.argv[1:5])
q = json.load(open(sys.argv[5]))["send_latency_ms"]
print(f"emptied {t1 - t0:.2f} s after retention was set to 1s, node CPU {(c1 - c0) / 100:.2f} s; "
      f"Q's send p50/p99/max {q['p50']:.2f}/{q['p99']:.2f}/{q['max']:.2f} ms")
PY
rm -f "$D.q.json"
