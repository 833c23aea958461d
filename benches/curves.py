#!/usr/bin/env python3
"""Scaling curves of one mqd node: send throughput and latency against message size, number
of queues (1 to 10,000) and number of connections (1 to 512), with `mqctl bench` (1 KiB unless the curve varies the
size). Prints a Markdown table per curve. Needs release binaries:

    cargo build --release --workspace --bins && python3 benches/curves.py

Each point runs against the same fresh node (queues are created and deleted by the bench).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MQD = os.path.join(ROOT, "target", "release", "mqd")
MQCTL = os.path.join(ROOT, "target", "release", "mqctl")


def bench(env, *args):
    out = subprocess.run([MQCTL, "bench", "--output", "json", *map(str, args)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def row(label, r):
    s = r["send_latency_ms"]
    return (f"| {label} | {r['msgs_per_sec']:,.0f} | {r['mib_per_sec']:,.1f} | "
            f"{s['p50']:.2f} | {s['p99']:.2f} |")


HEAD = "| {} | msgs/s | MiB/s | send→ack p50 ms | p99 ms |\n| --- | --- | --- | --- | --- |"


def main():
    with tempfile.TemporaryDirectory(prefix="mqd-curves-") as d:
        node = subprocess.Popen([MQD, "--data-dir", d, "--listen", "127.0.0.1:0",
                                 "--log-level", "warn"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                                env=dict(os.environ, MQD_CONFIG="/dev/null"))
        try:
            while not os.path.exists(os.path.join(d, "mqd.addr")):
                time.sleep(0.2)
            env = dict(os.environ, MQ_DATA_DIR=d, MQ_CONFIG="/dev/null")
            print("Message size (64 sends in flight, one connection):\n")
            print(HEAD.format("size"))
            for size in (64, 1024, 16384, 65536, 262144, 1048576):
                n = max(2000, min(200_000, 100_000_000 // (size + 512)))
                print(row(f"{size:,} B", bench(env, "--size", size, "--messages", n,
                                               "--in-flight", 64)), flush=True)
            print("\nQueues (4 connections × 64 sends in flight, 1 KiB):\n")
            print(HEAD.format("queues"))
            for q in (1, 10, 100, 1000, 10000):
                print(row(str(q), bench(env, "--size", 1024, "--messages", 100_000,
                                        "--producers", 4, "--in-flight", 64, "--queues", q)),
                      flush=True)
            print("\nConnections (256 sends in flight in all, 1 KiB):\n")
            print(HEAD.format("connections"))
            for c in (1, 4, 16, 64, 256, 512):
                print(row(str(c), bench(env, "--size", 1024, "--messages", 100_000,
                                        "--producers", c, "--in-flight", max(1, 256 // c))),
                      flush=True)
        finally:
            node.terminate()
            node.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
