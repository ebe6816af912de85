#!/usr/bin/env python3
"""fdatasync variants on a filesystem: 300-byte records, one durable write each,
10 interleaved runs of 2000. Usage: bench-sync-variants.py DIR (BENCHMARKS.md,
"Where the goal stands")."""

import os, time, resource, ctypes, statistics, mmap, sys
libc = ctypes.CDLL("libc.so.6", use_errno=True)
N = 2000; SIZE = 8 << 20; path = sys.argv[1] + "/syncvariant.bin"
def run(mode):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | (os.O_APPEND if mode in ("append", "keep-size") else 0), 0o600)
    if mode in ("zeros", "direct-dsync"):
        os.write(fd, b"\0" * SIZE); os.fsync(fd); os.close(fd)
        fd = os.open(path, os.O_RDWR | (os.O_DIRECT | os.O_DSYNC if mode == "direct-dsync" else 0))
    if mode == "keep-size":
        assert libc.fallocate(fd, 1, ctypes.c_long(0), ctypes.c_long(SIZE)) == 0; os.fsync(fd)
    block = mmap.mmap(-1, 4096); off = 0; waits = []
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(N):
        t = time.perf_counter()
        if mode == "direct-dsync":
            os.pwritev(fd, [block], off // 4096 * 4096)
        else:
            if mode == "zeros": os.pwrite(fd, b"x" * 300, off)
            else: os.write(fd, b"x" * 300)
            os.fdatasync(fd)
        waits.append(time.perf_counter() - t); off += 300
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    os.close(fd); os.unlink(path)
    return statistics.median(waits) * 1e6, (r1.ru_stime - r0.ru_stime) / N * 1e6
modes = ["append", "keep-size", "zeros", "direct-dsync"]
res = {m: [] for m in modes}
for _ in range(10):
    for m in modes: res[m].append(run(m))
for m in modes:
    print(f"{m:13} wall p50 us {statistics.median(w for w, _ in res[m]):6.1f} (runs {min(w for w,_ in res[m]):.0f}-{max(w for w,_ in res[m]):.0f})  system us {statistics.median(s for _, s in res[m]):5.1f}")
