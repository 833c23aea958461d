#!/usr/bin/env bash
# What replication costs per message on the wire and on disk: one `mqctl bench --size 1KiB
# ARGS` run against node 1 of a fresh three-node cluster (benches/cluster.sh, METRICS=1;
# MQD picks another mqd binary), with every node's metrics read before and after. Prints
# the run's msgs/s, then per 1,000 messages (warm-up included): what the links carried,
# summed over the nodes by direction (dialed: a leader's replication and calls to its
# followers; accepted: the followers' answers), and each node's log writes and
# state-machine transactions.
# Without arguments: --messages 200000 --in-flight 256 --consumers 1 --warmup 50000
# (workload (a)). Needs release binaries: cargo build --release --workspace --bins
set -euo pipefail
cd "$(dirname "$0")/.."
export METRICS=1
. benches/cluster.sh
start_cluster
[ "$#" -gt 0 ] || set -- --messages 200000 --in-flight 256 --consumers 1 --warmup 50000
scrape() {
    for n in 1 2 3; do
        curl -sf "127.0.0.1:${METRICS_PORTS[$((n - 1))]}/metrics" |
            grep -E '^mqd_peer_(datagrams_sent|send_calls|bytes_sent)_total|^mqd_raft_(log_write|apply)_duration_seconds_count' |
            sed "s/^/$n /"
    done
}
scrape > "$BASE/before"
$MQCTL bench --size 1KiB "$@" --output json > "$BASE/bench.json"
scrape > "$BASE/after"
python3 - "$BASE" <<'PY'
import collections, json, sys
base = sys.argv[1]
def load(name):
    out = {}
    for line in open(f"{base}/{name}"):
        node, key, value = line.split()
        out[(node, key)] = float(value)
    return out
before, after = load("before"), load("after")
run = json.load(open(f"{base}/bench.json"))
messages = run["messages"] + run.get("warmup", 0)
sums = collections.Counter()
for (node, key), value in after.items():
    name = key.split("{")[0]
    if name.startswith("mqd_peer_"):
        part = "dialed" if 'direction="dialed"' in key else "accepted"
    else:
        part = f"node {node}"
    sums[(name, part)] += value - before.get((node, key), 0)
print(f"msgs/s {run['msgs_per_sec']:.0f}, {messages} messages")
for (name, part), value in sorted(sums.items()):
    print(f"{name:45} {part:9} {value:12.0f}  per 1,000 messages {1000 * value / messages:9.1f}")
PY
