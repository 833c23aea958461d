#!/usr/bin/env bash
# The single-node runs of docs/BENCHMARKS.md against a fresh node: one send in flight, 256
# single sends in flight (twice), and batches of 100. Needs release binaries:
# cargo build --release --workspace --bins. MQD (MQCTL) picks another mqd (mqctl) binary.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/node.sh
start_node
# With arguments: one run of `mqctl bench --size 1KiB ARGS` instead (the interleaved
# three-against-one runs of BENCHMARKS.md pass --in-flight 256 --consumers 1).
if [ "$#" -gt 0 ]; then
    echo "mqctl bench --size 1KiB $*"
    $MQCTL bench --size 1KiB "$@" --output json
    exit 0
fi
for args in "--messages 5000 --in-flight 1" "--messages 200000 --in-flight 256" \
    "--messages 200000 --in-flight 256" "--messages 500000 --batch 100 --in-flight 16"; do
    echo "mqctl bench --size 1KiB $args"
    # shellcheck disable=SC2086
    $MQCTL bench --size 1KiB $args --output json
done
