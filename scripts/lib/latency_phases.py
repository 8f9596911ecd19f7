#!/usr/bin/env python3
"""Where a reading waits on its way to the broker, from `perf trace` of the
agent (scripts/bench-poll with BENCH_PHASES=1, or by hand:
`perf trace -p PID -e fdatasync,writev,recvfrom,pwrite64 -T -o FILE`).

A burst is the syscalls of one poll of the line (gaps under 100 ms). In each
burst that published something:
  requests     first to last Modbus request written (writev before the first reply)
  to commit    first reply read to the commit's first WAL write (the bus tasks,
               tap, engine and recorder, and the commit's SQL on the store thread)
  WAL writes   first WAL write to the fsync (SQLite writes each frame: 2 pwrite64)
  fsync        the commit's fdatasync
  to publish   the fsync's end to the first PUBLISH written
  publishing   first to last PUBLISH of the burst (rumqttc writes one a syscall)
Only syscalls are seen: the threads' work between them is inferred from the
order. perf trace costs each traced syscall a few microseconds."""
import re
import statistics
import sys

LINE = re.compile(r"\s*([\d.]+) \(\s*([\d.]+) ms\): \S+/(\d+) (\w+)\(fd: (\d+)")
# A call another thread's line interrupted: perf prints its start with no
# duration, then "... [continued]: name())" with both (and no arguments).
CONTINUED = re.compile(r"\s*([\d.]+) \(\s*([\d.]+) ms\): \S+/(\d+)\s+\.\.\. \[continued\]: (\w+)\(")


def main(path):
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        print(f"latency phases: no trace to read ({e}): is perf installed, and may it trace the agent "
              "(kernel.perf_event_paranoid, root)?")
        return
    rows = []
    for line in lines:
        m = LINE.match(line)
        if m:
            rows.append((float(m[1]), float(m[2]), m[4], int(m[5])))
            continue
        m = CONTINUED.match(line)
        if m:
            rows.append((float(m[1]), float(m[2]), m[4], -1))
    rows.sort()
    bursts, cur = [], []
    for r in rows:
        if cur and r[0] - cur[-1][0] > 100:
            bursts.append(cur)
            cur = []
        cur.append(r)
    if cur:
        bursts.append(cur)
    phases = {k: [] for k in ("requests", "to commit", "WAL writes", "fsync", "to publish", "publishing")}
    commits, published = [], 0
    for b in bursts:
        recv = [r for r in b if r[2] == "recvfrom"]
        if not recv:
            continue
        reqs = [r for r in b if r[2] == "writev" and r[0] < recv[0][0]]
        wal = [r for r in b if r[2] == "pwrite64" and r[0] > recv[0][0]]
        if not reqs or not wal:
            continue
        syncs = [r for r in b if r[2] == "fdatasync" and r[0] >= wal[0][0]]
        if not syncs:
            continue
        sync_end = syncs[0][0] + syncs[0][1]
        pubs = [r for r in b if r[2] == "writev" and r[0] >= sync_end]
        if not pubs:
            continue
        published += len(pubs)
        commits.append(len(syncs))
        phases["requests"].append(reqs[-1][0] - reqs[0][0])
        phases["to commit"].append(wal[0][0] - recv[0][0])
        phases["WAL writes"].append(syncs[0][0] - wal[0][0])
        phases["fsync"].append(syncs[0][1])
        phases["to publish"].append(pubs[0][0] - sync_end)
        phases["publishing"].append(pubs[-1][0] - pubs[0][0])
    if not commits:
        why = ("perf trace saw nothing: run it by hand to see why" if not rows
               else "was the uplink on (BENCH_UPLINK=1) and did the machines' values change?")
        print(f"latency phases: no burst with a publish in {path} ({len(rows)} syscalls): {why}")
        return
    print(f"latency phases over {len(commits)} bursts that published ({published} PUBLISH writes; "
          f"fsyncs in such a burst: median {statistics.median(commits)}, max {max(commits)}), ms:")
    for k, v in phases.items():
        v = sorted(v)
        print(f"  {k:<11} median {statistics.median(v):6.2f}   p90 {v[int(len(v) * .9)]:6.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
