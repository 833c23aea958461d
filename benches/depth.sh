#!/usr/bin/env bash
# Fills one queue of a fresh single node with N (default 10 million) 1 KiB messages, then
# compares receive latency at that depth with an empty queue, and reports mqd's resident
# memory. Needs release binaries: cargo build --release --workspace --bins
# Usage: benches/depth.sh [N]   (about 16 GB of disk for 10 M)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000000}
D=$(mktemp -d /tmp/mqd-depth.XXXXXX)
target/release/mqd --data-dir "$D" --listen 127.0.0.1:0 --log-level warn > "$D.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$D" "$D.log"' EXIT
while [ ! -s "$D/mqd.addr" ]; do sleep 0.2; done
export MQ_DATA_DIR=$D MQ_CONFIG=/dev/null
rss() { awk '/VmRSS|VmHWM/ {printf "%s %s %s  ", $1, $2, $3}' "/proc/$PID/status"; echo; }
echo "start: $(rss)"
target/release/mqctl bench --queue deep --keep --size 1KiB --messages "$N" --batch 100 --in-flight 16 --output json
echo "after the fill: $(rss)"
du -sh "$D"
for q in deep shallow; do
    echo "receive at $q:"
    target/release/mqctl bench --queue $q --keep --size 1KiB --messages 20000 --in-flight 8 \
        --consumers 1 --receive-batch 10 --output json
done
echo "after the receives: $(rss)"
