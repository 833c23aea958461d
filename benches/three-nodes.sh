#!/usr/bin/env bash
# The three-node runs of docs/BENCHMARKS.md: a fresh cluster of three processes on
# loopback (16 shards, 3 replicas each), the same mqctl bench runs as single-node.sh,
# against node 1 (the cluster: benches/cluster.sh; MQD picks another mqd binary). Needs
# release binaries: cargo build --release --workspace --bins
# KILL=1, 2 or 3: that node is killed (SIGKILL) once the cluster is up, and the runs
# start once every group has a leader again: two of three nodes carrying the load after
# a failover. (The bench's queue, mqctl-bench, is in shard 11, group 12, whose leader
# slot (9) makes node 1 its preferred leader: KILL=1 moves its leader, and the bench then
# talks to node 2; KILL=2 or 3 takes one of its followers.)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/cluster.sh
start_cluster
if [ -n "${KILL:-}" ]; then
    case "$KILL" in 1 | 2 | 3) ;; *) echo "KILL must be 1, 2 or 3" >&2; exit 2 ;; esac
    kill -9 "${PIDS[$((KILL - 1))]}"
    wait "${PIDS[$((KILL - 1))]}" 2>/dev/null || true
    if [ "$KILL" = 1 ]; then export MQ_DATA_DIR=$BASE/2; fi
    wait_status 'd["nodes_answering"] == 2 and d["groups_with_leader"] == d["groups"]'
    echo "node $KILL killed; every group has a leader on the other two"
fi
# With arguments: one run of `mqctl bench --size 1KiB ARGS` instead (the interleaved
# three-against-one runs of BENCHMARKS.md pass --in-flight 256 --consumers 1).
if [ "$#" -gt 0 ]; then
    echo "mqctl bench --size 1KiB $* (three nodes)"
    $MQCTL bench --size 1KiB "$@" --output json
    exit 0
fi
for args in "--messages 5000 --in-flight 1" "--messages 200000 --in-flight 256" \
    "--messages 200000 --in-flight 256" "--messages 500000 --batch 100 --in-flight 16"; do
    echo "mqctl bench --size 1KiB $args (three nodes)"
    # shellcheck disable=SC2086
    $MQCTL bench --size 1KiB $args --output json
done
