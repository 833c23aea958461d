#!/usr/bin/env python3
"""Runs one workload set against mqd, NATS JetStream and RabbitMQ on this machine, side by
side, and prints one table with each system's figures and mqd's ratio to each peer.

    sudo python3 benches/peers/run.py [--quick] [--json OUT.json]

Installs nats-server and rabbitmq-server from Debian's packages if they are missing
(root needed for that), builds mqd, mqctl and peerbench (release), then for each system
starts a fresh single node on loopback in a temporary directory, runs the workloads with
`mqctl bench` (mqd) or `peerbench` (the peers: same workload, same measurements), and
stops it. Every system gets the same client: one process on the same 2 cores.

Durability under these settings:
  mqd          a send is acknowledged after its Raft log entry is fsynced (one node: its
               own disk); concurrent sends share fsyncs.
  NATS         JetStream file storage acknowledges a publish once it is written to the
               OS, before any fsync (sync_interval defaults to 2 min). nats-server 2.9
               (Debian 12) has no `sync_interval: always`; the table says so instead of
               giving an equal-durability NATS row.
  RabbitMQ     quorum queues confirm a publish after a majority (here: the one node) has
               fsynced it to its Raft write-ahead log.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEERBENCH = os.path.join(ROOT, "benches", "peers", "peerbench")

# (key, description, common arguments, message count, quick count)
WORKLOADS = [
    ("a", "1 KiB, 1 producer + 1 consumer, 256 in flight",
     ["--size", "1024", "--in-flight", "256", "--consumers", "1"], 100_000, 20_000),
    ("b", "1 KiB, 4 producers + 4 consumers over 4 queues, 64 in flight each",
     ["--size", "1024", "--in-flight", "64", "--producers", "4", "--consumers", "4",
      "--queues", "4"], 100_000, 20_000),
    ("c", "64 B, 1 producer + 1 consumer, 256 in flight",
     ["--size", "64", "--in-flight", "256", "--consumers", "1"], 100_000, 20_000),
    ("d", "64 KiB, 1 producer + 1 consumer, 32 in flight",
     ["--size", "65536", "--in-flight", "32", "--consumers", "1"], 5_000, 1_000),
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("+ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)


def ensure_peers():
    missing = [p for p, b in (("nats-server", "nats-server"),
                              ("rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server"))
               if not (shutil.which(b) or os.path.exists(b))]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"run.py: {' and '.join(missing)} missing; run as root to install them "
                 f"from Debian's packages, or apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", *missing], env=env)


def build():
    run(["cargo", "build", "--release", "--workspace", "--bins", "--locked"], cwd=ROOT)
    run(["cargo", "build", "--release", "--manifest-path",
         os.path.join(PEERBENCH, "Cargo.toml")], cwd=ROOT)


def wait_for(predicate, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    sys.exit(f"run.py: {what} did not come up within {timeout} s")


def port_open(port):
    import socket
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Server:
    def __init__(self, argv, env=None, log_path=None):
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


def start_mqd(work):
    data = os.path.join(work, "mqd")
    os.makedirs(data)
    srv = Server([os.path.join(ROOT, "target", "release", "mqd"), "--data-dir", data,
                  "--listen", "127.0.0.1:0", "--log-level", "warn"],
                 env=dict(os.environ, MQD_CONFIG="/dev/null"),
                 log_path=os.path.join(work, "mqd.log"))
    wait_for(lambda: os.path.exists(os.path.join(data, "mqd.addr")), "mqd")
    return srv, data


def start_nats(work):
    srv = Server(["nats-server", "-js", "-sd", os.path.join(work, "nats"), "-a", "127.0.0.1",
                  "-p", "14222"], log_path=os.path.join(work, "nats.log"))
    wait_for(lambda: port_open(14222), "nats-server")
    return srv


def start_rabbitmq(work):
    base = os.path.join(work, "rabbit")
    for d in ("mnesia", "log", "home"):
        os.makedirs(os.path.join(base, d))
    with open(os.path.join(base, "enabled_plugins"), "w") as f:
        f.write("[].\n")
    env = dict(os.environ, HOME=os.path.join(base, "home"),
               RABBITMQ_NODENAME="peerbench@localhost", RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
               RABBITMQ_NODE_PORT="15673", RABBITMQ_DIST_PORT="25673",
               RABBITMQ_MNESIA_BASE=os.path.join(base, "mnesia"),
               RABBITMQ_LOG_BASE=os.path.join(base, "log"),
               RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(base, "enabled_plugins"))
    srv = Server(["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=env,
                 log_path=os.path.join(work, "rabbitmq.log"))
    wait_for(lambda: port_open(15673), "rabbitmq-server", timeout=120)
    time.sleep(2)  # the AMQP port opens a moment before the broker takes connections
    return srv


def bench(cmd, env=None):
    out = run(cmd, env=env, capture_output=True, text=True).stdout.strip().splitlines()
    return json.loads(out[-1])


def measure(quick):
    results = {}
    with tempfile.TemporaryDirectory(prefix="mq-peers-") as work:
        srv, data = start_mqd(work)
        try:
            env = dict(os.environ, MQ_DATA_DIR=data, MQ_CONFIG="/dev/null")
            for key, _, args, n, nq in WORKLOADS:
                results[("mqd", key)] = bench(
                    [os.path.join(ROOT, "target", "release", "mqctl"), "bench", "--output",
                     "json", "--messages", str(nq if quick else n), *args], env=env)
        finally:
            srv.stop()
        peerbench = os.path.join(PEERBENCH, "target", "release", "peerbench")
        for system, start, url in (
                ("nats", start_nats, "nats://127.0.0.1:14222"),
                ("rabbitmq", start_rabbitmq, "amqp://guest:guest@127.0.0.1:15673/%2f")):
            srv = start(work)
            try:
                for key, _, args, n, nq in WORKLOADS:
                    results[(system, key)] = bench(
                        [peerbench, system, "--url", url, "--messages",
                         str(nq if quick else n), *args])
            finally:
                srv.stop()
    return results


def table(results):
    lines = ["| workload | system | sent msgs/s | received msgs/s | send→ack p50 / p99 ms "
             "| end-to-end p50 / p99 ms | mqd sent ÷ this |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, desc, *_ in WORKLOADS:
        mqd = results[("mqd", key)]["msgs_per_sec"]
        for system in ("mqd", "nats", "rabbitmq"):
            r = results[(system, key)]
            s, e = r["send_latency_ms"], r.get("end_to_end_ms", {})
            ratio = "—" if system == "mqd" else f"{mqd / r['msgs_per_sec']:.2f}×"
            lines.append(
                f"| ({key}) {desc} | {system} | {r['msgs_per_sec']:,.0f} | "
                f"{r.get('received_per_sec', 0):,.0f} | {s['p50']:.2f} / {s['p99']:.2f} | "
                f"{e.get('p50', 0):.2f} / {e.get('p99', 0):.2f} | {ratio} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer messages per workload")
    ap.add_argument("--json", help="also write the raw results to this file")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    a = ap.parse_args()
    ensure_peers()
    if not a.no_build:
        build()
    nats_version = subprocess.run(["nats-server", "--version"], capture_output=True,
                                  text=True).stdout.strip()
    results = measure(a.quick)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({f"{s}/{k}": v for (s, k), v in results.items()}, f, indent=1)
    print(f"single node each, loopback, {os.cpu_count()} CPUs; {nats_version}; "
          "NATS acknowledges before fsync (no sync_interval before 2.10), "
          "RabbitMQ quorum queues and mqd after fsync\n")
    print(table(results))


if __name__ == "__main__":
    main()
