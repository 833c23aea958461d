#!/usr/bin/env bash
# Fills one queue of a fresh single node with N (default 10 million) 1 KiB messages, then
# compares receive latency at that depth with an empty queue, and reports mqd's resident
# memory. MQD picks another mqd binary. Needs release binaries:
# cargo build --release --workspace --bins
# Usage: benches/depth.sh [N]   (about 16 GB of disk for 10 M)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000000}
. benches/node.sh
start_node
rss() { awk '/VmRSS|VmHWM/ {printf "%s %s %s  ", $1, $2, $3}' "/proc/$PID/status"; echo; }
echo "start: $(rss)"
$MQCTL bench --queue deep --keep --size 1KiB --messages "$N" --batch 100 --in-flight 16 --output json
echo "after the fill: $(rss)"
du -sh "$D"
for q in deep shallow; do
    echo "receive at $q:"
    $MQCTL bench --queue $q --keep --size 1KiB --messages 20000 --in-flight 8 \
        --consumers 1 --receive-batch 10 --output json
done
echo "after the receives: $(rss)"
