#!/usr/bin/env python
"""The whole durable chain users run, end to end on an embedded Ray: an access log -> taildir ->
file channel (fsync per commit) -> hdfs sink (local disk, text).

    python scripts/bench_e2e.py                   # 2,000,000 numbered lines, about 310 MB
    python scripts/bench_e2e.py --lines 200000    # a smaller file
    python scripts/bench.py e2e --quick           # a smoke run (100,000 lines), through scripts/bench.py

The log is generated once and cached (``RAYFLUME_BENCH_CACHE``, default the system's temporary
directory); every line starts with its number. The pipeline is deployed from a cold start (a new
topology, empty channel and position file) and a sampler thread watches the output directory and
the processes: it reports

- MB/s from the first to the last output byte, and MB/s from the deploy call to the last byte
  (start-up included);
- lines delivered, every one checked by number once the topology stopped: each line exactly once
  and in file order;
- the peak RSS of each rayflume actor (source, channel, sink group, controller), with and without
  the pages of Ray's object store it touched (shared memory, counted in every process that maps
  it), and of all of the node's Ray processes together (the processes this script's Ray started:
  GCS, raylet, workers).

The baseline, measured in the same run, is this disk: copying the same file in 4 MiB writes with
an ``fdatasync`` every 4 MiB, as the channel's log and the sink each do (so the chain writes every
byte twice; its ceiling is about half of the baseline). The last line printed is one JSON object.

``pipeline_e2e(log, tmp, batch)`` returns the topology (minus name and metrics).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (scripts/bench.py: the benchmarks' Ray)
from bench_files import access_log_block  # noqa: E402

PIPELINES = ("e2e",)
LINES, QUICK_LINES = 2_000_000, 100_000
BATCH = 50_000  # lines per taildir batch; the sink takes two: 8 MB puts, 16 MB takes
NUMBER_WIDTH = 10  # every line starts with its number, zero-padded, then a space
SAMPLE_S = 0.05  # how often the sampler looks at the output directory and the processes
CHUNK = 4 << 20
TOPOLOGY = "bench-e2e"


def cache_dir() -> str:
    return os.environ.get("RAYFLUME_BENCH_CACHE") or os.path.join(tempfile.gettempdir(), "rayflume-bench-cache")


def numbered_log(lines: int) -> str:
    """The path of a cached log of ``lines`` numbered access-log lines (about 155 bytes each),
    written the first time it is asked for."""
    path = os.path.join(cache_dir(), f"e2e-{lines}", "access.log")
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    block = access_log_block(20_000).splitlines(keepends=True)
    tmp = f"{path}.partial-{os.getpid()}"
    with open(tmp, "wb") as f:
        for start in range(0, lines, len(block)):
            n = min(len(block), lines - start)
            f.write(b"".join(b"%010d %s" % (start + i, block[i]) for i in range(n)))
    os.replace(tmp, path)
    return path


def pipeline_e2e(log: str, tmp: str, batch: int = BATCH) -> dict:
    """taildir (the one file ``log``) -> file channel (fsync per commit) -> hdfs (local, text)."""
    directory, name = os.path.split(log)
    return {
        "sources": {"tail": {"type": "taildir", "channels": ["disk"], "batch_size": batch,
                             "filegroups": {"access": os.path.join(directory, name.replace(".", r"\."))},
                             "position_file": os.path.join(tmp, "positions.json")}},
        "channels": {"disk": {"type": "file", "checkpoint_dir": os.path.join(tmp, "checkpoint"),
                              "data_dirs": [os.path.join(tmp, "data")], "fsync": "per_commit",
                              "capacity": 20 * batch, "transaction_capacity": 2 * batch}},
        "sinks": {"out": {"type": "hdfs", "channel": "disk", "path": os.path.join(tmp, "out"),
                          "batch_size": 2 * batch, "serializer": "text", "roll_size_bytes": 128 << 20,
                          "roll_count": 0, "roll_interval_s": 0}},
    }


def disk_baseline(log: str, tmp: str) -> float:
    """MB/s of copying ``log`` into ``tmp`` in CHUNK writes, each followed by an fdatasync."""
    size = os.path.getsize(log)
    out = os.path.join(tmp, "baseline.copy")
    t0 = time.perf_counter()
    with open(log, "rb") as src:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            while data := src.read(CHUNK):
                os.write(fd, data)
                os.fdatasync(fd)
        finally:
            os.close(fd)
    dt = time.perf_counter() - t0
    os.remove(out)
    return size / dt / 1e6


def output_bytes(directory: str) -> int:
    try:
        return sum(e.stat().st_size for e in os.scandir(directory) if e.is_file())
    except FileNotFoundError:
        return 0


def rss_bytes(pid: int) -> tuple[int, int]:
    """``(rss, shared object store)`` of process ``pid`` in bytes ((0, 0) when it is gone), from
    /proc: the resident set, and the part of it that is shared memory (Ray's object store, mapped
    into every worker; a page of it counts in every process that touched it)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "RssShmem")))
        return (int(fields["VmRSS"].split()[0]) * 1024, int(fields.get("RssShmem", "0 kB").split()[0]) * 1024)
    except (OSError, KeyError, IndexError, ValueError):
        return 0, 0


def maps_library(pid: int, path_part: str) -> bool:
    """Whether process ``pid`` has a file whose path contains ``path_part`` mapped (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return path_part in f.read()
    except OSError:
        return False


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc), the node's Ray processes for this script's Ray."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class Sampler(threading.Thread):
    """Watches the output directory's size (first and last byte times) and the peak RSS of the
    named actors' processes and of all Ray processes, every SAMPLE_S, until stopped."""

    def __init__(self, out_dir: str, expected_bytes: int):
        super().__init__(daemon=True)
        self.out_dir, self.expected_bytes = out_dir, expected_bytes
        self.actor_pids: dict[str, int] = {}
        self.first_byte = self.last_byte = None
        self.peak_actor: dict[str, int] = {}
        self.peak_actor_private: dict[str, int] = {}  # without the object-store pages
        self.peak_ray_total = 0
        self.finished = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        ray_pids: set[int] = set()
        looked = 0.0
        while not self._halt.wait(SAMPLE_S):  # the sampling period of the measurement
            now = time.perf_counter()
            size = output_bytes(self.out_dir)
            if size and self.first_byte is None:
                self.first_byte = now
            if size >= self.expected_bytes and self.last_byte is None:
                self.last_byte = now
                self.finished.set()
            if now - looked > 1.0:  # new worker processes appear rarely; /proc is walked once a second
                ray_pids, looked = descendants(os.getpid()), now
            self.peak_ray_total = max(self.peak_ray_total, sum(rss_bytes(p)[0] for p in ray_pids))
            for name, pid in list(self.actor_pids.items()):
                rss, shared = rss_bytes(pid)
                self.peak_actor[name] = max(self.peak_actor.get(name, 0), rss)
                self.peak_actor_private[name] = max(self.peak_actor_private.get(name, 0), rss - shared)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def actor_pids(topology: str) -> dict[str, int]:
    """``{actor name: pid}`` of the topology's component actors and its controller."""
    import ray

    from rayflume._private.actors import NAMESPACE

    pids = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") == NAMESPACE and entry["name"].startswith(f"{topology}/"):
            handle = ray.get_actor(entry["name"], namespace=NAMESPACE)
            pids[entry["name"].split("/", 1)[1]] = ray.get(handle.pid.remote(), timeout=30)
    from rayflume.api import TopologyHandle

    pids["controller"] = TopologyHandle(topology)._call("pid")
    return pids


def check_delivered(out_dir: str, lines: int) -> int:
    """Check that the files in ``out_dir`` hold lines 0..lines-1, each once and in order (files
    taken in the order the sink closed them). Returns the number of lines; raises AssertionError."""
    files = sorted((e for e in os.scandir(out_dir) if e.is_file()), key=lambda e: (e.stat().st_mtime_ns, e.name))
    numbers = []
    for entry in files:
        with open(entry.path, "rb") as f:
            data = f.read()
        if data:
            starts = np.frombuffer(data, dtype=np.uint8)
            ends = np.flatnonzero(starts == ord("\n"))
            begins = np.concatenate(([0], ends[:-1] + 1))
            digits = starts[begins[:, None] + np.arange(NUMBER_WIDTH)] - ord("0")
            numbers.append(digits @ (10 ** np.arange(NUMBER_WIDTH - 1, -1, -1)))
    got = np.concatenate(numbers) if numbers else np.array([], dtype=np.int64)
    if len(got) != lines or not np.array_equal(got, np.arange(lines)):
        missing = np.setdiff1d(np.arange(lines), got)
        raise AssertionError(f"{len(got)} lines delivered for {lines}: {len(missing)} missing "
                             f"(first {missing[:5].tolist()}), {len(got) - len(np.unique(got))} duplicates, "
                             f"in order: {bool(np.all(np.diff(got) > 0))}")
    return len(got)


def run_e2e(lines: int, batch: int = BATCH, timeout_s: float = 900.0) -> dict:
    import rayflume

    log = numbered_log(lines)
    size = os.path.getsize(log)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        baseline = disk_baseline(log, tmp)
        out_dir = os.path.join(tmp, "out")
        sampler = Sampler(out_dir, size)
        sampler.start()
        t_deploy = time.perf_counter()
        handle = rayflume.deploy({"name": TOPOLOGY, "metrics": {"port": None}, **pipeline_e2e(log, tmp, batch)})
        try:
            sampler.actor_pids = actor_pids(TOPOLOGY)
            if not sampler.finished.wait(timeout_s):
                raise RuntimeError(f"{output_bytes(out_dir):,} of {size:,} bytes written in {timeout_s:.0f} s")
            pandas_loaded = {name: maps_library(pid, "pandas/_libs") for name, pid in sampler.actor_pids.items()
                             if name != "controller"}
        finally:
            sampler.stop()
            handle.stop(drain_timeout_s=30)
        delivered = check_delivered(out_dir, lines)
    flow_s = sampler.last_byte - sampler.first_byte
    mb_per_s = size / flow_s / 1e6
    return {"pipeline": "e2e", "lines": lines, "file_mb": round(size / 1e6, 1), "batch_size": batch,
            "lines_delivered": delivered, "events": delivered, "seconds": round(flow_s, 3),
            "events_per_s": round(delivered / flow_s), "mb_per_s": round(mb_per_s, 1),
            "with_startup_mb_per_s": round(size / (sampler.last_byte - t_deploy) / 1e6, 1),
            "startup_s": round(sampler.first_byte - t_deploy, 2),
            "peak_rss_mb": {name: round(v / 1e6) for name, v in sorted(sampler.peak_actor.items())},
            "peak_rss_private_mb": {name: round(v / 1e6) for name, v in sorted(sampler.peak_actor_private.items())},
            "peak_rss_ray_total_mb": round(sampler.peak_ray_total / 1e6), "pandas_loaded": pandas_loaded,
            "baseline_mb_per_s": round(baseline, 1), "ratio_to_baseline": round(mb_per_s / baseline, 3)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", nargs="?", choices=PIPELINES, default="e2e")
    parser.add_argument("--lines", type=int, default=None, help=f"lines in the log (default {LINES:,}; "
                                                                 f"{QUICK_LINES:,} with --quick)")
    parser.add_argument("--batch", type=int, default=BATCH, help="taildir batch size; the sink takes twice that")
    parser.add_argument("--quick", action="store_true", help="a smoke run on a small file")
    return parser


def measure(args) -> list[dict]:
    import ray

    lines = args.lines or (QUICK_LINES if args.quick else LINES)
    bench.start_local_ray()
    try:
        r = run_e2e(lines, args.batch)
    finally:
        ray.shutdown()
    print(f"e2e: {r['lines_delivered']:,} lines ({r['file_mb']} MB) delivered, each once and in order; "
          f"{r['mb_per_s']} MB/s first to last byte ({r['events_per_s']:,} events/s), "
          f"{r['with_startup_mb_per_s']} MB/s with start-up ({r['startup_s']} s); disk baseline "
          f"{r['baseline_mb_per_s']} MB/s (x{r['ratio_to_baseline']}); peak RSS MB {r['peak_rss_mb']} "
          f"(without object-store pages {r['peak_rss_private_mb']}), "
          f"all Ray processes {r['peak_rss_ray_total_mb']} MB", file=sys.stderr)
    return [r]


def main(argv=None) -> int:
    for r in measure(build_parser().parse_args(argv)):
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
