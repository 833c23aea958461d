#!/usr/bin/env bash
# Workload (b) with its four queues placed by hash (four shards, so four Raft groups)
# against the same four queues placed in one group, on three nodes and on one: what one
# round for every group of a node could be worth at most (docs/BENCHMARKS.md, "(b)'s four
# queues in one group"). A queue with a dead-letter queue is placed in that queue's
# shard, so `co-0` to `co-3` are created with `--dlq co-dead` before the run. ROUNDS
# rounds (default 4) of the four set-ups in turn, each on a fresh node or cluster; prints
# each run's msgs/s and end-to-end p50, then the sums and the ratios. ARGS overrides the
# runs' arguments (default: --messages 200000 --producers 4 --consumers 4 --queues 4
# --in-flight 64 --warmup 50000). Needs release binaries:
# cargo build --release --workspace --bins
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-4}
case "$rounds" in '' | *[!0-9]*) echo "usage: $0 [ROUNDS]" >&2; exit 2 ;; esac
ARGS=${ARGS:---messages 200000 --producers 4 --consumers 4 --queues 4 --in-flight 64 --warmup 50000}
# `run NODES ONE_GROUP`: one run (NODES 1 or 3; ONE_GROUP 1 for the queues in one group,
# 0 for them by hash) in a subshell of its own, so that the node scripts' exit traps
# clean up after each. Prints its msgs/s and end-to-end p50.
run() {
    (
        if [ "$1" = 3 ]; then
            . benches/cluster.sh
            start_cluster
        else
            . benches/node.sh
            start_node
        fi
        queue=hash
        if [ "$2" = 1 ]; then
            $MQCTL queue create co-dead > /dev/null
            for i in 0 1 2 3; do
                $MQCTL queue create "co-$i" --dlq co-dead --max-receives 1000 > /dev/null
            done
            queue=co
        fi
        # shellcheck disable=SC2086
        $MQCTL bench --size 1KiB --queue "$queue" $ARGS --output json |
            python3 -c 'import json, sys
d = json.loads(sys.stdin.readline())
print(round(d["msgs_per_sec"]), d["end_to_end_ms"]["p50"])'
    )
}
declare -A sum=([3-0]=0 [3-1]=0 [1-0]=0 [1-1]=0)
names=([0]="four groups" [1]="one group")
for i in $(seq 1 "$rounds"); do
    for nodes in 3 1; do
        for one in 0 1; do
            out=$(run "$nodes" "$one")
            read -r rate p50 <<< "$out"
            sum[$nodes-$one]=$((sum[$nodes-$one] + rate))
            echo "round $i: $nodes node(s), ${names[$one]}: $rate msgs/s, end-to-end p50 $p50 ms"
        done
    done
done
ratio() { python3 -c "print(f'{100 * $1 / $2:.1f}%')"; }
for nodes in 3 1; do
    echo "$nodes node(s): four groups ${sum[$nodes-0]}, one group ${sum[$nodes-1]} msgs/s:" \
        "one group $(ratio "${sum[$nodes-1]}" "${sum[$nodes-0]}") of four"
done
echo "three against one: four groups $(ratio "${sum[3-0]}" "${sum[1-0]}"), one group $(ratio "${sum[3-1]}" "${sum[1-1]}")"
