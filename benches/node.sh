# Sourced by the single-node bench scripts: a fresh release node on loopback in a temporary
# directory, removed with the process on exit (the three-node scripts have
# benches/cluster.sh). Set MQD (MQCTL) before sourcing to run another mqd (mqctl) binary.
# `start_node` starts it and returns once it has written its address, with PID, D (its data
# directory), MQCTL and the client's environment set.
MQD=${MQD:-target/release/mqd}
MQCTL=${MQCTL:-target/release/mqctl}
start_node() {
    D=$(mktemp -d /tmp/mqd-bench.XXXXXX)
    "$MQD" --data-dir "$D" --listen 127.0.0.1:0 --log-level warn > "$D.log" 2>&1 &
    PID=$!
    trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$D" "$D.log"' EXIT
    while [ ! -s "$D/mqd.addr" ]; do
        if ! kill -0 "$PID" 2>/dev/null; then
            echo "$MQD exited before it listened; its log:" >&2
            cat "$D.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    export MQ_DATA_DIR=$D MQ_CONFIG=/dev/null
}
