#!/usr/bin/env python3
"""Groups the samples of `perf script` output by where mqd spends them.

    perf record -F 999 -e cpu-clock -g --call-graph dwarf -p $(pidof mqd) -- sleep 8
    perf script --no-inline > perf.txt
    python3 benches/perf-group.py perf.txt

Each sample goes to the first category whose pattern matches its thread name or one of
its frames, walking from the leaf up; samples that match none are "other". The
allocator share counts samples with a mimalloc frame among the six innermost frames.
"""

import collections
import re
import sys

CATEGORIES = [
    ("Raft log writes: the writer thread's encode, redb insert, commit and fdatasync",
     r"log_store::write_loop|log_store::write_entries|mqd-log-writer"),
    ("state machine apply: redb B-tree inserts and removes, transaction commit (no fsync)",
     r"store::machine::apply|raft::state_machine|store::snapshot"),
    ("QUIC: quinn streams and packets, UDP send/receive syscalls, AES-GCM",
     r"quinn|ring::aead|aes_gcm|aes_hw|gcm_|udp|rustls"),
    ("request handling: stream tasks, frontend, proposer, Raft core",
     r"mqd::server|mqd::frontend|raft::proposer|openraft|mqd::cluster|mqd::peer|mqd::protocol"),
]
ALLOCATOR = re.compile(r"mi_malloc|mi_free|_mi_|mimalloc")


def main(path):
    rules = [(name, re.compile(rx)) for name, rx in CATEGORIES]
    counts = collections.Counter()
    total = alloc = 0
    stack = []

    def flush():
        nonlocal total, alloc
        if not stack:
            return
        total += 1
        if any(ALLOCATOR.search(f) for f in stack[1:7]):
            alloc += 1
        for frame in stack:
            for name, rx in rules:
                if rx.search(frame):
                    counts[name] += 1
                    return
        counts["other: runtime, scheduler, kernel"] += 1

    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                flush()
                stack = []
            elif line.startswith((" ", "\t")):
                stack.append(line.strip())
            else:
                stack = [line.strip()]  # the sample's header: thread name, pid, time
    flush()
    if not total:
        sys.exit("no samples in " + path)
    for name, n in counts.most_common():
        print(f"{n * 100 / total:5.1f}%  {name}")
    print(f"{total} samples; allocator in {alloc * 100 / total:.1f}% of them")


if __name__ == "__main__":
    main(sys.argv[1])
