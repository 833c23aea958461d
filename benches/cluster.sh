# Sourced by the three-node bench scripts: a fresh cluster of three release processes on
# loopback (16 shards, 3 replicas each) in a temporary directory, removed with its
# processes on exit. Set MQD (the mqd binary), MQCTL (the mqctl binary), LOG_LEVEL and
# METRICS (below) before sourcing to change them. `start_node N` starts (or restarts)
# node N; `start_cluster` starts all three and returns once `mqctl cluster status` says
# healthy, with MQ_DATA_DIR set for node 1.
MQD=${MQD:-target/release/mqd}
MQCTL=${MQCTL:-target/release/mqctl}
LOG_LEVEL=${LOG_LEVEL:-warn}
BASE=$(mktemp -d /tmp/mqd-bench3.XXXXXX)
PIDS=(0 0 0)
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$BASE"
}
trap cleanup EXIT
# Three distinct free UDP ports, all bound until all are chosen (three separate probes
# could be handed the same port; benches/peers/run.py's free_ports does the same).
read -ra PORTS <<< "$(python3 -c 'import socket
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')"
PEERS="1=127.0.0.1:${PORTS[0]},2=127.0.0.1:${PORTS[1]},3=127.0.0.1:${PORTS[2]}"
# With METRICS=1, each node also serves its metrics on a free loopback TCP port,
# METRICS_PORTS[N - 1] for node N.
METRICS_PORTS=()
if [ "${METRICS:-}" = 1 ]; then
    read -ra METRICS_PORTS <<< "$(python3 -c 'import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')"
fi
start_node() {
    local metrics=()
    if [ "${#METRICS_PORTS[@]}" -gt 0 ]; then
        metrics=(--metrics-listen "127.0.0.1:${METRICS_PORTS[$(($1 - 1))]}")
    fi
    "$MQD" --data-dir "$BASE/$1" --listen "127.0.0.1:${PORTS[$(($1 - 1))]}" --node-id "$1" \
        --peer "$PEERS" --log-level "$LOG_LEVEL" "${metrics[@]}" >> "$BASE/$1.log" 2>&1 &
    PIDS[$(($1 - 1))]=$!
}
# Waits until `mqctl cluster status --output json` satisfies the Python expression on `d`.
wait_status() {
    until $MQCTL cluster status --output json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); sys.exit(0 if $1 else 1)" 2>/dev/null; do sleep 0.5; done
}
start_cluster() {
    mkdir -p "$BASE/1" "$BASE/2" "$BASE/3"
    start_node 1
    while [ ! -s "$BASE/1/admin.token" ] || [ ! -s "$BASE/1/ca.key" ]; do sleep 0.2; done
    for n in 2 3; do
        cp "$BASE/1/ca.pem" "$BASE/1/ca.key" "$BASE/1/admin.token" "$BASE/$n/"
        start_node $n
    done
    export MQ_DATA_DIR=$BASE/1 MQ_CONFIG=/dev/null
    wait_status 'd["healthy"] and d["nodes_answering"] == 3'
}
