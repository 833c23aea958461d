#!/usr/bin/env bash
# Issue 6's half-load goal as one command: three peak runs of workload (a) on fresh nodes
# (benches/single-node.sh) set the offered rate at half of their median, rounded down to
# a thousand (RATE overrides it); then ROUNDS rounds (default 6), each a peak run and then
# a run at that rate (`--rate`, an open loop: latency counts from each send's due time),
# so that every half-load run has a peak run of the same minutes beside it. Prints each
# round's figures and, over the rounds whose peak run moved at least twice the rate, the
# median end-to-end p99 and how many were under 5 ms. A round whose peak fell below twice
# the rate is reported and left out: the machine slowed under the load, and its run
# measures a backlog, not half load. Needs release binaries:
# cargo build --release --workspace --bins. MQD (MQCTL) picks another mqd (mqctl) binary.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-6}
case "$rounds" in '' | *[!0-9]*) echo "usage: $0 [ROUNDS]" >&2; exit 2 ;; esac
case "${RATE:-0}" in '' | *[!0-9]*) echo "$0: RATE is a number of msgs/s" >&2; exit 2 ;; esac
common=(--in-flight 256 --consumers 1 --warmup 50000)
# The JSON report a bench script prints after its command line.
report() { sed -n '/^{/,$p'; }
peak() {
    benches/single-node.sh --messages 200000 "${common[@]}" | report |
        python3 -c 'import json, sys; print(round(json.load(sys.stdin)["msgs_per_sec"]))'
}
# "msgs/s e2e_p50 e2e_p99 send_p99" of a run at $1 msgs/s offered.
half() {
    benches/single-node.sh --messages 500000 --rate "$1" "${common[@]}" | report |
        python3 -c 'import json, sys
d = json.load(sys.stdin)
e, s = d["end_to_end_ms"], d["send_latency_ms"]
print(round(d["msgs_per_sec"]), e["p50"], e["p99"], s["p99"])'
}
rate=${RATE:-0}
if [ "$rate" -eq 0 ]; then
    p1=$(peak)
    p2=$(peak)
    p3=$(peak)
    median=$(printf '%s\n' "$p1" "$p2" "$p3" | sort -n | sed -n 2p)
    rate=$((median / 2000 * 1000))
    echo "peak runs $p1, $p2, $p3 msgs/s: half of the median, $rate msgs/s offered"
fi
p99s=()
for i in $(seq 1 "$rounds"); do
    p=$(peak)
    h=$(half "$rate")
    read -r moved p50 p99 send99 <<< "$h"
    line="round $i: peak $p msgs/s; at $rate offered $moved msgs/s, end-to-end p50 $p50 ms, p99 $p99 ms (send p99 $send99 ms)"
    if [ "$p" -lt $((2 * rate)) ]; then
        echo "$line; left out: the peak run was under twice the rate"
    else
        echo "$line"
        p99s+=("$p99")
    fi
done
after=$(peak)
echo "peak run after: $after msgs/s"
if [ "${#p99s[@]}" -eq 0 ]; then
    echo "no round had a peak of twice the rate"
    exit 1
fi
printf '%s\n' "${p99s[@]}" | python3 -c 'import statistics, sys
v = [float(x) for x in sys.stdin]
print(f"{len(v)} rounds counted: end-to-end p99 median {statistics.median(v):.2f} ms,",
      f"{sum(x < 5 for x in v)} of {len(v)} under 5 ms")'
