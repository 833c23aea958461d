#!/usr/bin/env python3
"""Finds pauses the host imposes on this machine: one process spins on a CPU and records
every gap of more than 1.5 ms in its own clock, alone and then beside a loop of 4 KiB
O_DIRECT writes each followed by fdatasync (what a queue's log does). On a VM whose host
caps its CPU time per period, counting the host's work for each sync, the second run
shows pauses of milliseconds once per period (100 ms on the machine of BENCHMARKS.md).

    python3 benches/host-pauses.py [--seconds 3] [--dir DIR]
"""
import argparse
import json
import mmap
import os
import time


def spin(seconds, out):
    start = last = time.monotonic()
    gaps = []
    while last - start < seconds:
        now = time.monotonic()
        if now - last > 0.0015:
            gaps.append((last - start, now - last))
        last = now
    os.write(out, json.dumps(gaps).encode())


def syncs(seconds, directory):
    path = os.path.join(directory, "host-pauses.tmp")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    try:
        os.posix_fallocate(fd, 0, 16 << 20)
        buf = mmap.mmap(-1, 4096)
        buf.write(b"x" * 4096)
        start, n, off = time.monotonic(), 0, 0
        while time.monotonic() - start < seconds:
            os.pwrite(fd, buf, off)
            os.fdatasync(fd)
            n, off = n + 1, (off + 4096) % (16 << 20)
        return n / seconds
    finally:
        os.close(fd)
        os.unlink(path)


def run(seconds, directory, with_syncs):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        spin(seconds, w)
        os._exit(0)
    os.close(w)
    rate = syncs(seconds, directory) if with_syncs else None
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.waitpid(pid, 0)
    gaps = json.loads(data)
    long = [g for g in gaps if g[1] > 0.003]
    label = f"spinning beside {rate:,.0f} syncs/s" if with_syncs else "spinning alone"
    print(f"{label}: {len(gaps)} pauses over 1.5 ms, {len(long)} over 3 ms, "
          f"{sum(g[1] for g in gaps) * 1000:.0f} ms in all")
    if len(long) > 2:
        starts = [g[0] * 1000 for g in long]
        apart = sorted(b - a for a, b in zip(starts, starts[1:]))
        print(f"  longest {max(g[1] for g in long) * 1000:.1f} ms; "
              f"median time between them {apart[len(apart) // 2]:.0f} ms")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--dir", default=".", help="where the sync loop writes (the data disk)")
    a = p.parse_args()
    run(a.seconds, a.dir, False)
    run(a.seconds, a.dir, True)


if __name__ == "__main__":
    main()
