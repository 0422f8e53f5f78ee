#!/usr/bin/env python
"""Throughput of the ``hdfs`` sink on the local file system, on an embedded Ray.

    python scripts/bench_hdfs.py hdfs-local          # sequence -> memory -> hdfs, text, 200-byte bodies
    python scripts/bench_hdfs.py parquet --seconds 20
    python scripts/bench_hdfs.py all
    python scripts/bench.py parquet --quick          # a short smoke run, through scripts/bench.py

``pipeline_hdfs_local(tmp)`` and ``pipeline_parquet(tmp)`` return topologies in the style of
``scripts/bench.py`` (which may import them). Each pipeline runs an unbounded ``sequence`` source;
after a warm-up the sink's counters are sampled over a window (steady state). Two baselines are
measured in the same run: the same pipeline with a ``null`` sink (sequence -> memory -> null: what
moving the events costs without writing them), and the raw speed of this disk for the same bytes
(one 2 MB write plus ``fdatasync`` per batch, as the sink does). The last lines printed are one JSON
object per pipeline with ``events_per_s``, ``mb_per_s`` (bytes written to files per second) and
the ratios to both baselines.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")

import bench  # noqa: E402  (scripts/bench.py)
import ray  # noqa: E402

BODY = bench.BODY
BATCH = bench.BATCH
# The sink takes two source batches per transaction: a take, a write, an fdatasync and a commit per
# 4 MB rather than per 2 MB (measured here: about 1.8x the events/s of 10,000-event takes).
SINK_BATCH = 2 * BATCH
ROLL_BYTES = 128 << 20
SECONDS, WARMUP_S = 10.0, 4.0
QUICK_SECONDS, QUICK_WARMUP_S = 2.0, 1.0


def _hdfs_sink(path: str, **kw) -> dict:
    return {"type": "hdfs", "channel": "mem", "path": path, "batch_size": SINK_BATCH, "use_local_timestamp": True,
            "roll_size_bytes": ROLL_BYTES, "roll_count": 0, "roll_interval_s": 300, **kw}


def _memory():
    return {"type": "memory", "capacity": 200_000, "transaction_capacity": SINK_BATCH}


def pipeline_memory_null(tmp):
    """The baseline: the same pipeline with a null sink (what moving the events costs)."""
    return {"sources": {"gen": bench.sequence(["mem"])},
            "channels": {"mem": _memory()},
            "sinks": {"out": {"type": "null", "channel": "mem", "batch_size": SINK_BATCH}}}


def pipeline_hdfs_local(tmp):
    """sequence -> memory -> hdfs (local disk, text, hourly buckets), 200-byte bodies."""
    return {"sources": {"gen": bench.sequence(["mem"])},
            "channels": {"mem": _memory()},
            "sinks": {"out": _hdfs_sink(os.path.join(tmp, "hdfs", "%Y-%m-%d", "%H"))}}


def pipeline_parquet(tmp):
    """sequence -> memory -> hdfs (local disk, parquet), 200-byte bodies."""
    return {"sources": {"gen": bench.sequence(["mem"])},
            "channels": {"mem": _memory()},
            "sinks": {"out": _hdfs_sink(os.path.join(tmp, "parquet", "%Y-%m-%d", "%H"), serializer="parquet")}}


PIPELINES = {"hdfs-local": pipeline_hdfs_local, "parquet": pipeline_parquet}
_BASELINES = {"memory-null": pipeline_memory_null}


def raw_disk_mb_per_s(seconds: float) -> float:
    """MB/s of appending one serialised batch (2 MB) and fdatasync-ing it, in files of ROLL_BYTES."""
    from rayflume.event import EventBatch
    from rayflume.sinks.serializers import TextSerializer
    from rayflume.sources.sequence import counter_bodies

    payload = TextSerializer().serialize(EventBatch.from_bodies(counter_bodies(0, BATCH, BODY)))
    written = 0
    with tempfile.TemporaryDirectory(prefix="bench-disk-") as tmp:
        t0 = time.perf_counter()
        fd, size, k = None, 0, 0
        while time.perf_counter() - t0 < seconds:
            if fd is None or size >= ROLL_BYTES:
                if fd is not None:
                    os.close(fd)
                k += 1
                fd, size = os.open(os.path.join(tmp, f"f{k}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL), 0
            os.write(fd, payload)
            os.fdatasync(fd)
            size += payload.size
            written += payload.size
        dt = time.perf_counter() - t0
        os.close(fd)
    return written / dt / 1e6


def _sample(handle) -> tuple[int, int]:
    m = handle.metrics()
    sink = next(v for k, v in m.items() if k.startswith("SINK."))
    return int(sink.get("EventDrainSuccessCount", 0)), int(sink.get("BytesWrittenCount", 0))


def run(name: str, seconds: float, warmup_s: float) -> dict:
    import rayflume

    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        topo = {"name": f"bench-{name}", "metrics": {"port": None}, **{**PIPELINES, **_BASELINES}[name](tmp)}
        handle = rayflume.deploy(topo)
        try:
            time.sleep(warmup_s)
            e0, b0 = _sample(handle)
            t0 = time.perf_counter()
            time.sleep(seconds)
            e1, b1 = _sample(handle)
            dt = time.perf_counter() - t0
        finally:
            handle.stop(drain_timeout_s=1)
    events = e1 - e0
    return {"pipeline": name, "events": events, "seconds": round(dt, 3), "events_per_s": round(events / dt),
            "mb_per_s": round((b1 - b0) / dt / 1e6, 1), "body_mb_per_s": round(events * BODY / dt / 1e6, 1)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", choices=[*PIPELINES, "all"])
    parser.add_argument("--seconds", type=float, default=None,
                        help=f"measurement window (default {SECONDS:g}; {QUICK_SECONDS:g} with --quick)")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help=f"warm-up before it (default {WARMUP_S:g}; {QUICK_WARMUP_S:g} with --quick)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run, not a measurement")
    return parser


def measure(args) -> list[dict]:
    """Run the baselines and the pipelines (on a Ray of its own); log to stderr; return the results."""
    seconds = args.seconds if args.seconds is not None else (QUICK_SECONDS if args.quick else SECONDS)
    warmup_s = args.warmup_s if args.warmup_s is not None else (QUICK_WARMUP_S if args.quick else WARMUP_S)
    disk = raw_disk_mb_per_s(min(seconds, 5.0))
    print(f"raw disk (2 MB write + fdatasync): {disk:,.1f} MB/s", file=sys.stderr)
    # A private Ray: never attach to a cluster someone else runs on this machine.
    bench.start_local_ray()
    try:
        base = run("memory-null", seconds, warmup_s)
        print(f"baseline memory -> null (same batches): {base['events_per_s']:,} events/s "
              f"({base['body_mb_per_s']} MB/s of bodies)", file=sys.stderr)
        names = list(PIPELINES) if args.pipeline == "all" else [args.pipeline]
        results = []
        for name in names:
            r = run(name, seconds, warmup_s)
            r["baseline_memory_events_per_s"] = base["events_per_s"]
            r["ratio_to_memory_pipeline"] = round(r["events_per_s"] / max(base["events_per_s"], 1), 3)
            r["raw_disk_mb_per_s"] = round(disk, 1)
            r["ratio_to_raw_disk"] = round(r["mb_per_s"] / disk, 3)
            results.append(r)
            print(f"{name:>10}: {r['events_per_s']:>12,} events/s  {r['mb_per_s']:>8} MB/s written  "
                  f"x{r['ratio_to_memory_pipeline']} of memory->null, x{r['ratio_to_raw_disk']} of raw disk",
                  file=sys.stderr)
    finally:
        ray.shutdown()
    return results


def main(argv=None) -> int:
    for r in measure(build_parser().parse_args(argv)):
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
