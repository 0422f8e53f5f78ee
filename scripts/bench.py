#!/usr/bin/env python
"""Throughput benchmarks of named pipelines on an embedded Ray.

    python scripts/bench.py memory            # sequence -> memory -> null, 200-byte bodies
    python scripts/bench.py file --seconds 20
    python scripts/bench.py avro-hop          # Flume's Avro RPC as the hop, against the Ray hop (two-tier)
    python scripts/bench.py taildir | syslog | hdfs-local | parquet | kafka-sink
    python scripts/bench.py tap               # the memory pipeline untapped, after an idle tap, tapped
    python scripts/bench.py e2e               # a 330 MB log: taildir -> file channel -> hdfs, end to end
    python scripts/bench.py control-plane     # controller tick, GCS calls, node join/leave
                                              # (N = 10 real, 100/1,000 simulated)
    python scripts/bench.py all               # every pipeline above, one after the other
    python scripts/bench.py all --quick       # a short smoke run of each (2 s windows, small file)

The built-in pipelines (memory, file, spillable, two-tier, avro-hop) run an unbounded ``sequence`` source;
after a warm-up the sink's EventDrainSuccessCount is sampled over a window (steady state, start-up
excluded). The baseline, measured in the same run, is the bare Ray cost the pipeline cannot beat
by much: one driver putting the same batches into a plain queue actor and taking them back.

taildir, syslog, hdfs-local, parquet, kafka-sink, e2e and control-plane need their own harness (a
file to write, a client, a broker, a cluster: scripts/bench_files.py, bench_syslog.py, bench_hdfs.py,
bench_kafka.py, bench_e2e.py, bench_control_plane.py); this
script hands them over with their own options (``bench.py NAME --help``). kafka-sink starts a
local tansu broker on 127.0.0.1 unless RAYFLUME_BENCH_KAFKA or RAYFLUME_TEST_KAFKA names one.

``tap`` runs the memory pipeline three ways, each in a fresh deployment: never tapped, after a tap
was read once and left to disarm itself (idle), and while two readers tap the source and the sink
continuously (as two ``rayflume tap --limit 0`` would); the ways take turns for three rounds, and
each reports its median against the untapped one, and what the hook costs per batch while nobody
taps.

The last lines printed are one JSON object per pipeline with ``pipeline, events, seconds,
events_per_s, mb_per_s`` and the ratio to that pipeline's baseline.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import tempfile
import time
import traceback

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")

import ray  # noqa: E402

# Run as a script, this module is __main__; the harnesses `import bench` (bench_hdfs does), which
# must find this module rather than load a second copy.
sys.modules.setdefault("bench", sys.modules[__name__])
SCRIPTS = os.path.dirname(os.path.abspath(__file__))
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

BODY = 200
BATCH = 10_000
SECONDS, WARMUP_S = 10.0, 4.0
QUICK_SECONDS, QUICK_WARMUP_S = 2.0, 1.0  # --quick: a smoke run, not a measurement


def sequence(channels, batch=BATCH):
    return {"type": "sequence", "batch_size": batch, "body_size": BODY, "channels": channels}


def pipeline_memory(tmp):
    return {"sources": {"gen": sequence(["mem"])},
            "channels": {"mem": {"type": "memory", "capacity": 200_000, "transaction_capacity": BATCH}},
            "sinks": {"out": {"type": "null", "channel": "mem", "batch_size": BATCH}}}


def pipeline_file(tmp):
    return {"sources": {"gen": sequence(["disk"])},
            "channels": {"disk": {"type": "file", "capacity": 1_000_000, "transaction_capacity": BATCH,
                                  "checkpoint_dir": os.path.join(tmp, "cp"),
                                  "data_dirs": [os.path.join(tmp, "data")],
                                  "minimum_required_space_bytes": 1 << 20}},
            "sinks": {"out": {"type": "null", "channel": "disk", "batch_size": BATCH}}}


def pipeline_spillable(tmp):
    return {"sources": {"gen": sequence(["spill"])},
            "channels": {"spill": {"type": "spillable", "memory_capacity": 50_000,
                                   "overflow_capacity": 2_000_000, "transaction_capacity": BATCH,
                                   "checkpoint_dir": os.path.join(tmp, "cp"),
                                   "data_dirs": [os.path.join(tmp, "data")],
                                   "minimum_required_space_bytes": 1 << 20}},
            # a sink slower than the source (small takes), so the backlog grows and spills
            "sinks": {"out": {"type": "null", "channel": "spill", "batch_size": 500}}}


HOP_BATCH = int(os.environ.get("BENCH_HOP_BATCH", 4 * BATCH))  # 40,000


def pipeline_two_tier(tmp):
    """sequence -> memory -> rayflume sink => rayflume source -> memory -> null, one node.

    The hop moves up to ``HOP_BATCH`` events per call (Flume users size avro hops the same way): a
    hop costs a fixed number of actor calls per batch, so bigger batches amortise it, and the
    rayflume sink's default ``batch_duration_s`` lets it wait a moment to fill them."""
    return {"tiers": {
        "agent": {"placement": {"replicas": 1},
                  "sources": {"gen": sequence(["mem"])},
                  "channels": {"mem": {"type": "memory", "capacity": 400_000, "transaction_capacity": HOP_BATCH}},
                  "sinks": {"fwd": {"type": "rayflume", "tier": "collector", "channel": "mem",
                                    "batch_size": HOP_BATCH}}},
        "collector": {"placement": {"replicas": 1},
                      "sources": {"in": {"type": "rayflume", "channels": ["mem"]}},
                      "channels": {"mem": {"type": "memory", "capacity": 400_000,
                                           "transaction_capacity": HOP_BATCH}},
                      "sinks": {"out": {"type": "null", "channel": "mem", "batch_size": HOP_BATCH}}}}}


def pipeline_avro_hop(tmp):
    """The two-tier pipeline with Flume's Avro RPC as the hop: avro sink => avro source on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    topo = pipeline_two_tier(tmp)
    topo["tiers"]["agent"]["sinks"]["fwd"] = {"type": "avro", "channel": "mem", "hostname": "127.0.0.1",
                                              "port": port, "batch_size": HOP_BATCH}
    topo["tiers"]["collector"]["sources"]["in"] = {"type": "avro", "port": port, "channels": ["mem"],
                                                   "batch_size": HOP_BATCH}
    return topo


PIPELINES = {"memory": pipeline_memory, "file": pipeline_file, "spillable": pipeline_spillable,
             "two-tier": pipeline_two_tier, "avro-hop": pipeline_avro_hop}


@ray.remote(num_cpus=0)
class _PlainQueue:
    def __init__(self):
        self.q = []

    def put(self, batch):
        self.q.append(batch)

    def take(self):
        return self.q.pop(0)


def baseline(seconds: float) -> float:
    """Events/s of put-then-take through a bare queue actor from one driver, same batches."""
    from rayflume.event import EventBatch
    from rayflume.sources.sequence import counter_bodies

    batch = EventBatch.from_bodies(counter_bodies(0, BATCH, BODY))
    q = _PlainQueue.remote()
    ray.get([q.put.remote(batch), q.take.remote()])
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ray.get(q.put.remote(batch))
        ray.get(q.take.remote())
        n += BATCH
    rate = n / (time.perf_counter() - t0)
    ray.kill(q)
    return rate


def sample(handle) -> tuple[int, dict]:
    """(events drained by sinks, the channel's counters)."""
    m = handle.metrics()
    # the last tier's sinks: those that do not forward to another tier
    events = sum(int(v.get("EventDrainSuccessCount", 0)) for k, v in m.items()
                 if k.startswith("SINK.") and not k.startswith("SINK.agent."))
    channel = next(v for k, v in sorted(m.items()) if k.startswith("CHANNEL."))
    return events, channel


def channel_figures(c0: dict, c1: dict, dt: float) -> dict:
    """Per-second figures of the channel's own counters over the window."""
    def delta(key):
        return float(c1.get(key, 0) or 0) - float(c0.get(key, 0) or 0)

    out = {"backlog_events": int(c1.get("ChannelSize", 0))}
    if "FsyncCount" in c1:
        fsyncs = delta("FsyncCount")
        puts = delta("EventPutSuccessCount")
        out.update(fsyncs_per_s=round(fsyncs / dt, 1),
                   body_bytes_per_fsync=round(puts * BODY / fsyncs) if fsyncs else None,
                   events_per_fsync=round(puts / fsyncs) if fsyncs else None)
    if "SpilledEventCount" in c1:
        out.update(spilled_events_per_s=round(delta("SpilledEventCount") / dt),
                   memory_backlog=int(c1.get("MemoryChannelSize", 0)),
                   overflow_backlog=int(c1.get("OverflowChannelSize", 0)))
    return out


def run(name: str, seconds: float, warmup_s: float) -> dict:
    import rayflume

    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        topo = {"name": f"bench-{name}", "metrics": {"port": None}, **PIPELINES[name](tmp)}
        handle = rayflume.deploy(topo)
        try:
            time.sleep(warmup_s)
            e0, c0 = sample(handle)
            t0 = time.perf_counter()
            time.sleep(seconds)
            e1, c1 = sample(handle)
            dt = time.perf_counter() - t0
        finally:
            handle.stop(drain_timeout_s=1)
    events = e1 - e0
    return {"pipeline": name, "events": events, "seconds": round(dt, 3),
            "events_per_s": round(events / dt), "mb_per_s": round(events * BODY / dt / 1e6, 1),
            "channel": channel_figures(c0, c1, dt)}


def tap_hook_ns() -> float:
    """Nanoseconds the runners' tap hook (``if tap.armed:``) costs per batch while nobody taps."""
    import timeit

    from rayflume._private.tap import TapPoint

    tap, loops = TapPoint(), 2_000_000
    hooked = min(timeit.repeat("if tap.armed: tap.offer(None)", globals={"tap": tap}, number=loops, repeat=5))
    bare = min(timeit.repeat("pass", number=loops, repeat=5))
    return max(0.0, hooked - bare) / loops * 1e9


def run_tap(seconds: float, warmup_s: float, rounds: int = 3) -> list[dict]:
    """The memory pipeline three ways, each in a fresh deployment measured at the same age (the
    pipeline's rate drifts down by some 10% over its first minute, so windows taken one after the
    other in one deployment would not compare): never tapped; after an idle tap (read once, then
    left until it disarmed itself); and tapped continuously at the source and the sink. Fresh
    deployments differ by up to 30% on 2 cores, so the three ways take turns for ``rounds`` rounds
    and each reports its median."""
    import threading

    import rayflume
    from rayflume._private import tapping
    from rayflume._private.tap import DEFAULT_IDLE_OFF_S

    settle_s = DEFAULT_IDLE_OFF_S + 1  # an idle tap disarms on the first batch after idle_off_s

    def window(handle, way: str) -> dict:
        e0, _ = sample(handle)
        t0 = time.perf_counter()
        time.sleep(seconds)
        e1, _ = sample(handle)
        dt = time.perf_counter() - t0
        return {"pipeline": "tap", "way": way, "events": e1 - e0, "seconds": round(dt, 3),
                "events_per_s": round((e1 - e0) / dt), "mb_per_s": round((e1 - e0) * BODY / dt / 1e6, 1)}

    def measured(way: str) -> dict:
        with tempfile.TemporaryDirectory(prefix="bench-tap-") as tmp:
            handle = rayflume.deploy({"name": f"bench-tap-{way.replace(' ', '-')}", "metrics": {"port": None},
                                      **pipeline_memory(tmp)})
            try:
                time.sleep(warmup_s)
                if way == "idle tap":
                    for component in ("gen", "out"):  # armed by one read each, then nobody reads
                        handle.tap(component, n=1, timeout_s=10)
                time.sleep(settle_s)
                if way != "tap read":
                    return window(handle, way)
                stop, tapped = threading.Event(), {"gen": 0, "out": 0}

                def read(component):
                    for _, batch in tapping.tap_stream(handle, component, None, idle_timeout_s=3600):
                        tapped[component] += len(batch)
                        if stop.is_set():
                            return

                readers = [threading.Thread(target=read, args=(c,), daemon=True) for c in tapped]
                for r in readers:
                    r.start()
                reading = window(handle, way)
                stop.set()
                for r in readers:
                    r.join(30)
                reading["tapped_events_per_s"] = {c: round(n / reading["seconds"]) for c, n in tapped.items()}
                return reading
            finally:
                handle.stop(drain_timeout_s=1)

    ways = ("never tapped", "idle tap", "tap read")
    runs = {way: [] for way in ways}
    for _ in range(rounds):
        for way in ways:
            runs[way].append(measured(way))
    results = []
    for way in ways:
        median = sorted(runs[way], key=lambda r: r["events_per_s"])[len(runs[way]) // 2]
        results.append({**median, "runs_events_per_s": [r["events_per_s"] for r in runs[way]]})
    untapped = max(results[0]["events_per_s"], 1)
    for r in results:
        r["ratio_to_untapped"] = round(r["events_per_s"] / untapped, 3)
    hook_ns = tap_hook_ns()
    results[0]["hook_ns_per_batch_untapped"] = round(hook_ns, 1)
    # two hooks (source and sink) per batch, at the untapped rate: the share of one core they take
    results[0]["hook_share_of_a_core"] = float(f"{2 * hook_ns * untapped / BATCH / 1e9:.2g}")
    return results


# Pipelines whose input needs its own harness (a file to write, a client, a broker) live in a
# script of their area. Each such module has ``build_parser()`` (whose first, optional positional
# is the pipeline name) and ``measure(args) -> list[dict]`` (runs on a Ray of its own, logs to stderr,
# returns one result per pipeline); its ``main()`` prints them as JSON lines.
HARNESSES = {"taildir": "bench_files", "syslog": "bench_syslog", "hdfs-local": "bench_hdfs",
             "parquet": "bench_hdfs", "kafka-sink": "bench_kafka", "e2e": "bench_e2e",
             "control-plane": "bench_control_plane"}
MODES = {"tap": run_tap}  # built-in runs that report several ways of one pipeline
ALL = [*PIPELINES, *MODES, *HARNESSES]


def harness(module: str):
    return importlib.import_module(module)


@dataclasses.dataclass
class Step:
    """One run: the built-in pipelines (``module`` None) or one harness module, with its arguments."""
    names: list[str]  # the pipelines it reports, in order
    module: str | None
    args: argparse.Namespace


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", choices=[*ALL, "all"],
                        help="the pipeline to run, or all of them (%(choices)s); "
                             f"{', '.join(HARNESSES)} take their own options: bench.py NAME --help")
    parser.add_argument("--seconds", type=float, default=None,
                        help=f"measurement window (default {SECONDS:g}; {QUICK_SECONDS:g} with --quick)")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help=f"warm-up before it (default {WARMUP_S:g}; {QUICK_WARMUP_S:g} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run: short windows, a small input file; checks that the pipelines "
                             "run, the figures are not measurements")
    return parser


def start_local_ray() -> None:
    """The benchmarks' Ray: a new local instance with 2 CPUs and no dashboard, its workers given the
    environment `rayflume deploy` gives those of the local Ray it starts (allocator settings)."""
    from rayflume._private.actor_base import local_ray_env

    with local_ray_env():
        ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="rayflume", logging_level="WARNING",
                 log_to_driver=False)


def timing(args) -> tuple[float, float]:
    """(seconds, warmup_s) of parsed arguments: explicit values win, then --quick, then defaults."""
    seconds = args.seconds if args.seconds is not None else (QUICK_SECONDS if args.quick else SECONDS)
    warmup_s = args.warmup_s if args.warmup_s is not None else (QUICK_WARMUP_S if args.quick else WARMUP_S)
    return seconds, warmup_s


def _forwarded(args, parser: argparse.ArgumentParser) -> list[str]:
    """The options of ``bench.py all`` that a harness's parser takes too."""
    out = []
    for flag, value in (("--seconds", args.seconds), ("--warmup-s", args.warmup_s)):
        if value is not None and flag in parser._option_string_actions:
            out += [flag, str(value)]
    if args.quick:
        out.append("--quick")
    return out


def parse_args(argv) -> list[Step]:
    """What ``bench.py ARGV`` runs, without running it (argparse exits on bad arguments)."""
    argv = list(argv)
    name = next((a for a in argv if a in HARNESSES), None)
    if name is not None:
        # The harness parses everything, the pipeline name included (its first positional).
        module = HARNESSES[name]
        return [Step([name], module, harness(module).build_parser().parse_args(argv))]
    args = build_parser().parse_args(argv)
    if args.pipeline != "all":
        names = [args.pipeline]
        if "avro-hop" in names:
            names.insert(0, "two-tier")  # the Avro hop is judged against the Ray hop, same run
        if "two-tier" in names:
            names.insert(0, "memory")  # two-tier is judged against the single-tier pipeline, same run
        return [Step(names, None, args)]
    steps = [Step([*PIPELINES, *MODES], None, args)]
    for module in dict.fromkeys(HARNESSES.values()):
        names = [n for n, m in HARNESSES.items() if m == module]
        parser = harness(module).build_parser()
        steps.append(Step(names, module, parser.parse_args(
            [names[0] if len(names) == 1 else "all", *_forwarded(args, parser)])))
    return steps


def run_builtin(names: list[str], args) -> list[dict]:
    seconds, warmup_s = timing(args)
    start_local_ray()
    try:
        base = baseline(min(seconds, 5.0))
        print(f"baseline (bare queue actor put+take, {BATCH} x {BODY} B batches): {base:,.0f} events/s",
              file=sys.stderr)
        results = []
        by_name = {}
        for name in names:
            if name in MODES:
                for r in MODES[name](seconds, warmup_s):
                    r["baseline_events_per_s"] = round(base)
                    r["ratio_to_baseline"] = round(r["events_per_s"] / base, 3)
                    results.append(r)
                    print(f"{name + ' ' + r['way']:>22}: {r['events_per_s']:>12,} events/s  {r['mb_per_s']:>8} MB/s  "
                          f"x{r['ratio_to_untapped']} of untapped, x{r['ratio_to_baseline']} of baseline"
                          f" (median of {r['runs_events_per_s']})"
                          + (f"; tapped {r['tapped_events_per_s']} events/s" if "tapped_events_per_s" in r else "")
                          + (f"; hook {r['hook_ns_per_batch_untapped']} ns per batch "
                             f"({r['hook_share_of_a_core']:.2g} of a core)"
                             if "hook_ns_per_batch_untapped" in r else ""), file=sys.stderr)
                continue
            r = run(name, seconds, warmup_s)
            r["baseline_events_per_s"] = round(base)
            r["ratio_to_baseline"] = round(r["events_per_s"] / base, 3)
            if name == "two-tier" and "memory" in by_name:
                r["ratio_to_memory"] = round(r["events_per_s"] / max(by_name["memory"]["events_per_s"], 1), 3)
            if name == "avro-hop" and "two-tier" in by_name:
                r["ratio_to_two_tier"] = round(r["events_per_s"] / max(by_name["two-tier"]["events_per_s"], 1), 3)
            by_name[name] = r
            results.append(r)
            print(f"{name:>10}: {r['events_per_s']:>12,} events/s  {r['mb_per_s']:>8} MB/s  "
                  f"x{r['ratio_to_baseline']} of baseline"
                  + (f", x{r['ratio_to_memory']} of single-tier memory" if "ratio_to_memory" in r else "")
                  + (f", x{r['ratio_to_two_tier']} of the Ray hop" if "ratio_to_two_tier" in r else ""),
                  file=sys.stderr)
    finally:
        ray.shutdown()
    return results


def _run_step(step: Step) -> list[dict]:
    if step.module is None:
        return run_builtin(step.names, step.args)
    return harness(step.module).measure(step.args)


def main(argv=None) -> int:
    steps = parse_args(sys.argv[1:] if argv is None else argv)
    if len(steps) == 1:
        results, failed = _run_step(steps[0]), False
    else:
        # `all`: one step after the other, each on a Ray of its own. A failed step is tried once
        # more (a loaded machine can time out Ray's start-up), then reported, and the others go on.
        results, failed = [], False
        for step in steps:
            for attempt in (1, 2):
                try:
                    results += _run_step(step)
                    break
                except Exception as exc:
                    traceback.print_exc()
                    print(f"{', '.join(step.names)}: failed (attempt {attempt} of 2): {exc!r}", file=sys.stderr)
                    if ray.is_initialized():
                        ray.shutdown()
                    if attempt == 2:
                        failed = True
                        results += [{"pipeline": name, "error": repr(exc)} for name in step.names]
    for r in results:
        print(json.dumps(r))
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main())
