#!/usr/bin/env bash
# Issue 6's three-node goal as one command: ROUNDS rounds (default 6), each one run of
# workload (a) on a fresh three-node cluster (benches/three-nodes.sh) and then one on a
# fresh single node (benches/single-node.sh), interleaved so that both see the same
# minutes of this machine, whose speed moves by a third within an hour. Prints each
# round's msgs/s and ratio, then the ratio of the sums. ARGS overrides the runs'
# arguments (default: --messages 200000 --in-flight 256 --consumers 1 --warmup 50000).
# Needs release binaries: cargo build --release --workspace --bins
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-6}
case "$rounds" in '' | *[!0-9]*) echo "usage: $0 [ROUNDS]" >&2; exit 2 ;; esac
read -ra args <<< "${ARGS:---messages 200000 --in-flight 256 --consumers 1 --warmup 50000}"
# msgs/s of the JSON report a bench script prints after its command line.
rate() { sed -n '/^{/,$p' | python3 -c 'import json, sys; print(round(json.load(sys.stdin)["msgs_per_sec"]))'; }
ratio() { python3 -c "print(f'{100 * $1 / $2:.1f}%')"; }
three=0
one=0
for i in $(seq 1 "$rounds"); do
    r3=$(benches/three-nodes.sh "${args[@]}" | rate)
    r1=$(benches/single-node.sh "${args[@]}" | rate)
    three=$((three + r3))
    one=$((one + r1))
    echo "round $i: three nodes $r3, one node $r1 msgs/s: $(ratio "$r3" "$r1")"
done
echo "all $rounds rounds: three nodes $three, one node $one msgs/s: $(ratio "$three" "$one")"
