#!/usr/bin/env python
"""Throughput of the ``taildir`` source on an embedded Ray: a 300 MB file of ~150-byte access-log
lines -> taildir -> memory -> null.

    python scripts/bench_files.py                 # 300 MB, batches of 20,000 lines
    python scripts/bench_files.py --mb 100 --batch 50000
    python scripts/bench.py taildir --quick       # a short smoke run (50 MB), through scripts/bench.py

The file is written first (numpy, a few seconds), then the pipeline is deployed and the null
sink's EventDrainSuccessCount sampled every 0.1 s until every line was drained. The steady-state
rate is measured between 10% and 90% of the lines (start-up and the tail excluded); the whole run
(first sample to last line) is reported too. The baseline, measured in the same run, is the raw
speed of reading the same file with ``pread`` in 8 MiB chunks and framing it with the source's own
:func:`~rayflume.sources._framing.frame_lines` in one process: what the source could do
with no Ray at all. The last line printed is one JSON object.

``pipeline_taildir(tmp)`` returns the topology (minus name and metrics) for ``scripts/bench.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402  (scripts/bench.py: the benchmarks' Ray)
import numpy as np  # noqa: E402

PIPELINES = ("taildir",)
FILE_MB = 300
QUICK_MB = 50  # --quick: a smoke run; well under a second of reading, sampled more often
SAMPLE_S, QUICK_SAMPLE_S = 0.1, 0.02
BATCH = 20_000
CHUNK = 8 << 20
LOG_NAME = "access.log"


def access_log_block(n: int, seed: int = 0) -> bytes:
    """``n`` distinct combined-log-format lines of about 150 bytes (120-190) each."""
    rng = np.random.default_rng(seed)
    ips = rng.integers(1, 255, size=(n, 4))
    seconds = rng.integers(0, 86_400, size=n)
    methods = np.array(["GET", "GET", "GET", "POST", "PUT", "DELETE"])[rng.integers(0, 6, size=n)]
    statuses = np.array([200, 200, 200, 301, 304, 404, 500])[rng.integers(0, 7, size=n)]
    sizes = rng.integers(100, 50_000, size=n)
    words = np.array(["api", "v1", "users", "orders", "items", "search", "static", "img", "cart", "login"])
    agents = np.array(["Mozilla/5.0 (X11; Linux x86_64)", "curl/8.5.0", "Mozilla/5.0 (Macintosh)",
                       "python-requests/2.31", "Googlebot/2.1"])
    path_len = rng.integers(1, 6, size=n)
    parts = rng.integers(0, len(words), size=(n, 5))
    ids = rng.integers(0, 10**9, size=n)
    agent = rng.integers(0, len(agents), size=n)
    out = []
    for i in range(n):
        s = int(seconds[i])
        path = "/".join(words[parts[i, :path_len[i]]])
        out.append(f'{ips[i, 0]}.{ips[i, 1]}.{ips[i, 2]}.{ips[i, 3]} - - [21/Nov/2026:{s // 3600:02d}:'
                   f'{s // 60 % 60:02d}:{s % 60:02d} +0000] "{methods[i]} /{path}/{ids[i]} HTTP/1.1" '
                   f'{statuses[i]} {sizes[i]} "https://www.example.com/{words[parts[i, 0]]}" '
                   f'"{agents[agent[i]]}"\n')
    return "".join(out).encode()


def write_access_log(path: str, megabytes: int = FILE_MB) -> tuple[int, int]:
    """Write about ``megabytes`` MB of access-log lines to ``path``: (bytes, lines). A block of
    20,000 generated lines is repeated, so writing is disk-bound, not Python-bound."""
    block = access_log_block(20_000)
    block_lines = block.count(b"\n")
    repeats = max(1, round(megabytes * 1e6 / len(block)))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(repeats):
            f.write(block)
    return repeats * len(block), repeats * block_lines


def pipeline_taildir(tmp: str, megabytes: int = FILE_MB, batch: int = BATCH) -> dict:
    """Write the input file under ``tmp`` and return taildir -> memory -> null."""
    logs = os.path.join(tmp, "logs")
    write_access_log(os.path.join(logs, LOG_NAME), megabytes)
    return {"sources": {"tail": {"type": "taildir", "channels": ["mem"], "batch_size": batch,
                                 "filegroups": {"access": os.path.join(logs, r"access\.log")},
                                 "position_file": os.path.join(tmp, "taildir-positions.json")}},
            "channels": {"mem": {"type": "memory", "capacity": max(200_000, 10 * batch),
                                 "transaction_capacity": batch}},
            "sinks": {"out": {"type": "null", "channel": "mem", "batch_size": batch}}}


def baseline(path: str) -> dict:
    """Read + frame the file in this process with the source's framing function."""
    from rayflume.sources._framing import frame_lines

    fd = os.open(path, os.O_RDONLY)
    pos, events = 0, 0
    t0 = time.perf_counter()
    try:
        while True:
            data = os.pread(fd, CHUNK, pos)
            if not data:
                break
            framed = frame_lines(data, 1 << 20)
            events += len(framed)
            pos += framed.consumed
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    return {"events": events, "bytes": pos, "seconds": round(dt, 3), "mb_per_s": round(pos / dt / 1e6, 1),
            "events_per_s": round(events / dt)}


def drained(handle) -> int:
    m = handle.metrics()
    return sum(int(v.get("EventDrainSuccessCount", 0) or 0) for k, v in m.items() if k.startswith("SINK."))


def run_taildir(tmp: str, megabytes: int, batch: int, timeout_s: float = 600, sample_s: float = SAMPLE_S) -> dict:
    import rayflume

    topo = {"name": "bench-taildir", "metrics": {"port": None}, **pipeline_taildir(tmp, megabytes, batch)}
    path = os.path.join(tmp, "logs", LOG_NAME)
    total_bytes = os.path.getsize(path)
    with open(path, "rb") as f:
        total_lines = f.read().count(b"\n")
    base = baseline(path)
    handle = rayflume.deploy(topo)
    samples = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            n = drained(handle)
            samples.append((time.perf_counter(), n))
            if n >= total_lines:
                break
            time.sleep(sample_s)
    finally:
        handle.stop(drain_timeout_s=1)
    t = np.array([s[0] for s in samples])
    n = np.array([s[1] for s in samples])
    if n[-1] < total_lines:
        raise RuntimeError(f"only {n[-1]} of {total_lines} lines drained in {timeout_s}s")
    lo, hi = np.searchsorted(n, 0.1 * total_lines), np.searchsorted(n, 0.9 * total_lines)
    if t[hi] <= t[lo]:  # a small file read between two samples: take the whole run
        lo, hi = 0, len(n) - 1
    steady_events = int(n[hi] - n[lo])
    steady_s = float(t[hi] - t[lo])
    first = int(np.searchsorted(n, 1))
    whole_s = float(t[-1] - t[max(first - 1, 0)])
    line_bytes = total_bytes / total_lines
    rate = steady_events / steady_s
    return {"pipeline": "taildir", "file_mb": round(total_bytes / 1e6, 1), "lines": total_lines,
            "batch_size": batch, "avg_line_bytes": round(line_bytes, 1),
            "events": steady_events, "seconds": round(steady_s, 3),
            "events_per_s": round(rate), "mb_per_s": round(rate * line_bytes / 1e6, 1),
            "whole_run_mb_per_s": round(total_bytes / whole_s / 1e6, 1),
            "baseline_mb_per_s": base["mb_per_s"], "baseline_events_per_s": base["events_per_s"],
            "ratio_to_baseline": round(rate * line_bytes / 1e6 / base["mb_per_s"], 3)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The name is optional: `bench.py taildir ...` hands its whole command line over, name included.
    parser.add_argument("pipeline", nargs="?", choices=PIPELINES, default=PIPELINES[0],
                        help="the pipeline (the only one)")
    parser.add_argument("--mb", type=int, default=None,
                        help=f"size of the input file (default {FILE_MB}; {QUICK_MB} with --quick)")
    parser.add_argument("--batch", type=int, default=BATCH, help="taildir batch_size (lines)")
    parser.add_argument("--dir", default=None, help="where to write the input (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run on a small file, not a measurement")
    return parser


def measure(args) -> list[dict]:
    """Write the file, run the baseline and the pipeline (on a Ray of its own); log to stderr;
    return the result."""
    import ray

    megabytes = args.mb if args.mb is not None else (QUICK_MB if args.quick else FILE_MB)
    bench.start_local_ray()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-taildir-", dir=args.dir) as tmp:
            t0 = time.perf_counter()
            r = run_taildir(tmp, megabytes, args.batch, sample_s=QUICK_SAMPLE_S if args.quick else SAMPLE_S)
            r["total_s"] = round(time.perf_counter() - t0, 1)
    finally:
        ray.shutdown()
    print(f"baseline (pread 8 MiB + frame_lines, one process): {r['baseline_mb_per_s']} MB/s, "
          f"{r['baseline_events_per_s']:,} lines/s", file=sys.stderr)
    print(f"taildir -> memory -> null: {r['events_per_s']:,} events/s, {r['mb_per_s']} MB/s steady "
          f"({r['whole_run_mb_per_s']} MB/s whole run), x{r['ratio_to_baseline']} of baseline", file=sys.stderr)
    return [r]


def main(argv=None) -> int:
    for r in measure(build_parser().parse_args(argv)):
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
