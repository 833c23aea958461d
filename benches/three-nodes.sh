#!/usr/bin/env bash
# The three-node runs of docs/BENCHMARKS.md: a fresh cluster of three processes on
# loopback (16 shards, 3 replicas each), the same mqctl bench runs as single-node.sh,
# against node 1. Needs release binaries: cargo build --release --workspace --bins
# KILL=2 or KILL=3: that node is killed (SIGKILL) once the cluster is up, and the runs
# start once every group has a leader again: two of three nodes carrying the load after
# a failover. (The bench's queue, mqctl-bench, is in shard 11, group 12, whose preferred
# leader is node 3: KILL=3 moves its leader, KILL=2 takes one of its followers.)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=$(mktemp -d /tmp/mqd-bench3.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$BASE"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
P1=$(port); P2=$(port); P3=$(port)
PEERS="1=127.0.0.1:$P1,2=127.0.0.1:$P2,3=127.0.0.1:$P3"
mkdir -p "$BASE/1" "$BASE/2" "$BASE/3"
target/release/mqd --data-dir "$BASE/1" --listen "127.0.0.1:$P1" --node-id 1 --peer "$PEERS" --log-level warn > "$BASE/1.log" 2>&1 &
PIDS+=($!)
while [ ! -s "$BASE/1/admin.token" ] || [ ! -s "$BASE/1/ca.key" ]; do sleep 0.2; done
for n in 2 3; do
    cp "$BASE/1/ca.pem" "$BASE/1/ca.key" "$BASE/1/admin.token" "$BASE/$n/"
    P=$P2; [ $n = 3 ] && P=$P3
    target/release/mqd --data-dir "$BASE/$n" --listen "127.0.0.1:$P" --node-id $n --peer "$PEERS" --log-level warn > "$BASE/$n.log" 2>&1 &
    PIDS+=($!)
done
export MQ_DATA_DIR=$BASE/1 MQ_CONFIG=/dev/null
until target/release/mqctl cluster status --output json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["healthy"] and d["nodes_answering"] == 3 else 1)' 2>/dev/null; do sleep 0.5; done
if [ -n "${KILL:-}" ]; then
    case "$KILL" in 2 | 3) ;; *) echo "KILL must be 2 or 3 (the bench talks to node 1)" >&2; exit 2 ;; esac
    kill -9 "${PIDS[$((KILL - 1))]}"
    wait "${PIDS[$((KILL - 1))]}" 2>/dev/null || true
    until target/release/mqctl cluster status --output json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["nodes_answering"] == 2 and d["groups_with_leader"] == d["groups"] else 1)' 2>/dev/null; do sleep 0.5; done
    echo "node $KILL killed; every group has a leader on nodes 1 and 2"
fi
# With arguments: one run of `mqctl bench --size 1KiB ARGS` instead (the interleaved
# three-against-one runs of BENCHMARKS.md pass --in-flight 256 --consumers 1).
if [ "$#" -gt 0 ]; then
    echo "mqctl bench --size 1KiB $* (three nodes)"
    target/release/mqctl bench --size 1KiB "$@" --output json
    exit 0
fi
for args in "--messages 5000 --in-flight 1" "--messages 200000 --in-flight 256" \
    "--messages 200000 --in-flight 256" "--messages 500000 --batch 100 --in-flight 16"; do
    echo "mqctl bench --size 1KiB $args (three nodes)"
    # shellcheck disable=SC2086
    target/release/mqctl bench --size 1KiB $args --output json
done
