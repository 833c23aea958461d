#!/usr/bin/env bash
# Issue 6's three-node goal as one command: ROUNDS rounds (default 6), each one run of
# workload (a) on a fresh three-node cluster (benches/three-nodes.sh) and then one on a
# fresh single node (benches/single-node.sh), interleaved so that both see the same
# minutes of this machine, whose speed moves by a third within an hour. Prints each
# round's msgs/s and ratio, then the ratio of the sums. ARGS overrides the runs'
# arguments (default: --messages 200000 --in-flight 256 --consumers 1 --warmup 50000).
# BUILDS compares builds: directories, each holding an mqd and an mqctl, separated by
# spaces; each round then runs both set-ups with each build in turn, and the sums are
# printed per build. Needs release binaries: cargo build --release --workspace --bins
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-6}
case "$rounds" in '' | *[!0-9]*) echo "usage: $0 [ROUNDS]" >&2; exit 2 ;; esac
read -ra args <<< "${ARGS:---messages 200000 --in-flight 256 --consumers 1 --warmup 50000}"
# Without BUILDS, one build: MQD's and MQCTL's, as the scripts it runs pick them.
builds=(-)
if [ -n "${BUILDS:-}" ]; then
    read -ra builds <<< "$BUILDS"
    for b in "${builds[@]}"; do
        for bin in mqd mqctl; do
            [ -x "$b/$bin" ] || { echo "$0: no $b/$bin (BUILDS names directories)" >&2; exit 2; }
        done
    done
fi
# Runs a bench script with build $1's binaries.
with() {
    local b=$1
    shift
    if [ "$b" = - ]; then "$@"; else MQD="$b/mqd" MQCTL="$b/mqctl" "$@"; fi
}
# msgs/s of the JSON report a bench script prints after its command line.
rate() { sed -n '/^{/,$p' | python3 -c 'import json, sys; print(round(json.load(sys.stdin)["msgs_per_sec"]))'; }
ratio() { python3 -c "print(f'{100 * $1 / $2:.1f}%')"; }
# Per build: its sums, and "DIR: " before its figures when there are several builds.
declare -A three one label
for b in "${builds[@]}"; do
    three[$b]=0
    one[$b]=0
    label[$b]=""
    [ "${#builds[@]}" -eq 1 ] || label[$b]="$b: "
done
for i in $(seq 1 "$rounds"); do
    for b in "${builds[@]}"; do
        r3=$(with "$b" benches/three-nodes.sh "${args[@]}" | rate)
        r1=$(with "$b" benches/single-node.sh "${args[@]}" | rate)
        three[$b]=$((three[$b] + r3))
        one[$b]=$((one[$b] + r1))
        echo "round $i: ${label[$b]}three nodes $r3, one node $r1 msgs/s: $(ratio "$r3" "$r1")"
    done
done
for b in "${builds[@]}"; do
    echo "all $rounds rounds: ${label[$b]}three nodes ${three[$b]}, one node ${one[$b]} msgs/s:" \
        "$(ratio "${three[$b]}" "${one[$b]}")"
done
