#!/usr/bin/env bash
# What a leader hand-over costs the sends of its shard (docs/BENCHMARKS.md, "Leader
# balancing"): a fresh cluster of three processes on loopback (16 shards, 3 replicas),
# a queue in shard group 9 (whose preferred leader is node 3), and a paced
# `mqctl bench --rate R --in-flight 64 --consumers 1` on it through node 1.
#   benches/handover.sh restart  node 3 is killed (SIGKILL) before the run and started
#                                again 3 s into it; 5 s after it has caught up, nodes 1
#                                and 2 hand its groups back, the queue's among them
#   benches/handover.sh none     nothing happens: the same run's own tail
# RATE (default 2000) and DURATION (default 25s) change the run; MQD picks another mqd
# binary (to compare a build without balancing). Prints the bench's JSON, then the
# hand-overs the nodes logged. Needs release binaries: cargo build --release --workspace --bins
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-restart}
case "$MODE" in restart | none) ;; *) echo "usage: $0 [restart|none]" >&2; exit 2 ;; esac
LOG_LEVEL=info
. benches/cluster.sh
start_cluster
# "ho0" hashes to shard 8 of 16, group 9, whose leader slot (8) puts it on node 3.
$MQCTL queue create ho0 > /dev/null
if [ "$MODE" = restart ]; then
    kill -9 "${PIDS[2]}"
    wait "${PIDS[2]}" 2>/dev/null || true
    sleep 4
fi
$MQCTL bench --queue ho0 --size 1KiB --rate "${RATE:-2000}" --in-flight 64 --consumers 1 \
    --duration "${DURATION:-25s}" --output json &
BENCH=$!
sleep 3
if [ "$MODE" = restart ]; then start_node 3; fi
wait $BENCH
grep -h "handing the group's leadership" "$BASE"/*.log | sed -E 's/\x1b\[[0-9;]*m//g' || true
