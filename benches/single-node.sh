#!/usr/bin/env bash
# The single-node runs of docs/BENCHMARKS.md against a fresh node: one send in flight, 256
# single sends in flight (twice), and batches of 100. Needs release binaries:
# cargo build --release --workspace --bins. MQD picks another mqd binary.
set -euo pipefail
cd "$(dirname "$0")/.."
MQD=${MQD:-target/release/mqd}
D=$(mktemp -d /tmp/mqd-bench.XXXXXX)
"$MQD" --data-dir "$D" --listen 127.0.0.1:0 --log-level warn > "$D.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$D" "$D.log"' EXIT
while [ ! -s "$D/mqd.addr" ]; do sleep 0.2; done
export MQ_DATA_DIR=$D MQ_CONFIG=/dev/null
# With arguments: one run of `mqctl bench --size 1KiB ARGS` instead (the interleaved
# three-against-one runs of BENCHMARKS.md pass --in-flight 256 --consumers 1).
if [ "$#" -gt 0 ]; then
    echo "mqctl bench --size 1KiB $*"
    target/release/mqctl bench --size 1KiB "$@" --output json
    exit 0
fi
for args in "--messages 5000 --in-flight 1" "--messages 200000 --in-flight 256" \
    "--messages 200000 --in-flight 256" "--messages 500000 --batch 100 --in-flight 16"; do
    echo "mqctl bench --size 1KiB $args"
    # shellcheck disable=SC2086
    target/release/mqctl bench --size 1KiB $args --output json
done
