#!/usr/bin/env python3
"""Measures how many log writes a second the disk takes from several writers at once:
each writer is a process with a file of its own (as each Raft group of a node, or each node
of a cluster on one machine, has its own log), writing a block of the given size with
O_DIRECT and then calling fdatasync, as fast as it can or at a given rate. Prints, per
number of writers, the writes a second in all and each write's latency.

A disk that serves one cache flush at a time has a ceiling of flushes a second for the
whole machine, however many files they are for: the writers share it, and each write
takes longer the more writers there are.

    python3 benches/disk-flushes.py [--size 57344] [--writers 1,2,4,8] [--rate 0]
                                    [--seconds 3] [--dir DIR]
"""
import argparse
import mmap
import multiprocessing
import os
import sys
import tempfile
import threading
import time

FILE_BYTES = 64 << 20


def writer(directory, size, rate, seconds, ready, out):
    try:
        out.put(write_loop(directory, size, rate, seconds, ready))
    except threading.BrokenBarrierError:
        out.put("another writer failed before the timed writes began")
    except OSError as e:
        # The parent waits for one answer per writer: an error is one too, and the
        # writers waiting to start are released.
        ready.abort()
        out.put(f"a writer failed: {e}")


def write_loop(directory, size, rate, seconds, ready):
    fd, path = tempfile.mkstemp(prefix="disk-flushes.", dir=directory)
    os.close(fd)
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    try:
        # Written once and synced, so that the timed writes overwrite allocated blocks, as
        # the log's recycled segments do: an fdatasync is then the data and a cache flush.
        os.posix_fallocate(fd, 0, FILE_BYTES)
        fill = mmap.mmap(-1, 1 << 20)
        fill.write(b"\0" * (1 << 20))
        for off in range(0, FILE_BYTES, 1 << 20):
            os.pwrite(fd, fill, off)
        os.fsync(fd)
        buf = mmap.mmap(-1, size)
        buf.write(b"x" * size)
        times, off = [], 0
        # Every writer fills its file first; the timed writes start together.
        ready.wait()
        start = due = time.perf_counter()
        while time.perf_counter() - start < seconds:
            if rate > 0:
                due += 1 / rate
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            t = time.perf_counter()
            os.pwrite(fd, buf, off)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
            off = (off + size) % (FILE_BYTES - size)
        return times
    finally:
        os.close(fd)
        os.unlink(path)


def check_direct(directory):
    """Returns why the writers could not run in `directory`, or None."""
    try:
        fd, path = tempfile.mkstemp(prefix="disk-flushes.", dir=directory)
    except OSError as e:
        return f"cannot create a file in {directory}: {e.strerror}"
    os.close(fd)
    try:
        fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        try:
            block = mmap.mmap(-1, 4096)
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        return (f"{directory} does not take O_DIRECT writes ({e.strerror}); "
                "give --dir a directory on the disk to measure")
    finally:
        os.unlink(path)
    return None


def measure(directory, size, writers, rate, seconds):
    out = multiprocessing.Queue()
    ready = multiprocessing.Barrier(writers)
    procs = [multiprocessing.Process(target=writer,
                                     args=(directory, size, rate, seconds, ready, out))
             for _ in range(writers)]
    for p in procs:
        p.start()
    answers = [out.get() for _ in procs]
    for p in procs:
        p.join()
    failed = [x for x in answers if isinstance(x, str)]
    if failed:
        sys.exit(f"disk-flushes.py: {failed[0]}")
    times = sorted(t for x in answers for t in x)
    pct = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1e3
    return len(times) / seconds, pct(0.5), pct(0.99), sum(times) / len(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=57344,
                    help="bytes per write, a multiple of 4096 (default: 56 KiB, a log "
                         "write of workload (a))")
    ap.add_argument("--writers", default="1,2,4,8",
                    help="numbers of writers to try, comma-separated")
    ap.add_argument("--rate", type=float, default=0,
                    help="writes a second per writer (0: as fast as it can)")
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--dir", default=".", help="a directory on the disk to measure")
    a = ap.parse_args()
    if a.size <= 0 or a.size % 4096:
        ap.error(f"--size {a.size} is not a positive multiple of 4096 (O_DIRECT needs whole blocks)")
    try:
        counts = [int(n) for n in a.writers.split(",")]
    except ValueError:
        ap.error(f"--writers {a.writers!r} is not a comma-separated list of numbers")
    if any(n < 1 for n in counts):
        ap.error("--writers: each number of writers must be at least 1")
    why = check_direct(a.dir)
    if why:
        ap.exit(2, f"disk-flushes.py: {why}\n")
    print(f"{a.size}-byte O_DIRECT writes, each followed by fdatasync, in {a.dir}, "
          f"{'as fast as they go' if a.rate <= 0 else f'{a.rate:g} a second per writer'}")
    print("| writers | writes/s in all | p50 ms | p99 ms | mean ms |")
    print("| --- | --- | --- | --- | --- |")
    for n in counts:
        rate, p50, p99, mean = measure(a.dir, a.size, n, a.rate, a.seconds)
        print(f"| {n} | {rate:,.0f} | {p50:.3f} | {p99:.3f} | {mean:.3f} |", flush=True)


if __name__ == "__main__":
    main()
