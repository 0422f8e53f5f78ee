#!/usr/bin/env python
"""Throughput of syslog over TCP: a local client -> syslog_tcp -> memory -> null, on an embedded Ray.

    python scripts/bench_syslog.py                      # 10 s window after a 4 s warm-up
    python scripts/bench_syslog.py --seconds 20 --octet-count
    python scripts/bench.py syslog --quick              # a short smoke run, through scripts/bench.py

A client process sends RFC 5424 messages (about 160 bytes, with structured data) over one TCP
connection as fast as the source takes them. The sink's EventDrainSuccessCount is sampled over a
window after a warm-up. The baseline, measured in the same run with the same client, is a plain
socket server in its own process that only reads and frames (numpy newline split): the cost of
getting the bytes through the kernel and into Python, which the pipeline cannot beat. The last
line printed is one JSON object with ``pipeline, events, seconds, events_per_s, mb_per_s,
baseline_events_per_s, ratio_to_baseline``.

``pipeline_syslog(tmp)`` is the topology (minus name and metrics) for ``scripts/bench.py``; its
source listens on a free port, reported as the source's ``BoundPort`` metric. It only moves
events while a client sends (run ``client`` below against that port).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402  (scripts/bench.py: the benchmarks' Ray)

BATCH = 10_000
PIPELINES = ("syslog",)
SECONDS, WARMUP_S = 10.0, 4.0
QUICK_SECONDS, QUICK_WARMUP_S = 2.0, 1.0


def pipeline_syslog(tmp):
    return {"sources": {"sys": {"type": "syslog_tcp", "port": 0, "batch_size": BATCH, "max_event_size_bytes": 4096,
                                "buffer_bytes": 32 << 20, "channels": ["mem"]}},
            "channels": {"mem": {"type": "memory", "capacity": 200_000, "transaction_capacity": BATCH}},
            "sinks": {"out": {"type": "null", "channel": "mem", "batch_size": BATCH}}}


def messages(n: int = 20_000, octet_count: bool = False) -> bytes:
    """``n`` distinct RFC 5424 messages of about 160 bytes, framed for TCP."""
    out = []
    for i in range(n):
        msg = (b'<165>1 2024-01-15T12:34:56.%03dZ web-%02d.example.com nginx %d ID47 [meta@32473 req="%08d" '
               b'zone="eu-west-1"] GET /api/v1/items/%d HTTP/1.1 200 512 0.012'
               % (i % 1000, i % 50, 1000 + i % 7, i, i))
        out.append(b"%d %s" % (len(msg), msg) if octet_count else msg + b"\n")
    return b"".join(out)


def client(port: int, seconds: float, octet_count: bool) -> None:
    """Send messages to 127.0.0.1:port for ``seconds``; print the bytes and messages sent."""
    payload = messages(octet_count=octet_count)
    per_payload = 20_000
    sent = 0
    deadline = time.monotonic() + seconds
    with socket.create_connection(("127.0.0.1", port)) as s:
        try:
            while time.monotonic() < deadline:
                s.sendall(payload)
                sent += 1
        except OSError:
            pass  # the server closed the connection: the measurement is over
    print(json.dumps({"bytes": sent * len(payload), "messages": sent * per_payload}), flush=True)


def plain_server(seconds: float, ready_file: str) -> None:
    """Accept one connection; read and frame (count newlines with numpy) for ``seconds`` after the
    first byte; print messages/s and MB/s."""
    import numpy as np

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        with open(ready_file, "w") as f:
            f.write(str(srv.getsockname()[1]))
        conn, _ = srv.accept()
        with conn:
            frames = nbytes = 0
            tail = b""
            first = conn.recv(1 << 20)
            t0 = time.perf_counter()
            chunk = first
            while chunk and time.perf_counter() - t0 < seconds:
                buf = tail + chunk
                arr = np.frombuffer(buf, dtype=np.uint8)
                ends = np.flatnonzero(arr == 10)
                if ends.size:
                    frames += int(ends.size)
                    tail = buf[int(ends[-1]) + 1:]
                else:
                    tail = buf
                nbytes += len(chunk)
                chunk = conn.recv(1 << 20)
            dt = time.perf_counter() - t0
    print(json.dumps({"events_per_s": frames / dt, "mb_per_s": nbytes / dt / 1e6}), flush=True)


def _spawn(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], stdout=subprocess.PIPE, text=True)


def baseline(seconds: float) -> dict:
    """The same client against a plain reading-and-framing server (both in their own processes)."""
    with tempfile.TemporaryDirectory() as tmp:
        ready = os.path.join(tmp, "port")
        server = _spawn("--plain-server", str(seconds), ready)
        deadline = time.monotonic() + 30
        while not (os.path.exists(ready) and open(ready).read()):
            if time.monotonic() > deadline:
                raise RuntimeError("the baseline server did not start")
            time.sleep(0.05)
        port = int(open(ready).read())
        sender = _spawn("--client", str(port), str(seconds + 2))
        out, _ = server.communicate(timeout=seconds + 60)
        sender.kill()
        sender.wait()
    return json.loads(out.strip().splitlines()[-1])


def run(seconds: float, warmup_s: float, octet_count: bool) -> dict:
    import rayflume

    with tempfile.TemporaryDirectory(prefix="bench-syslog-") as tmp:
        handle = rayflume.deploy({"name": "bench-syslog", "metrics": {"port": None}, **pipeline_syslog(tmp)})
        sender = None
        try:
            deadline = time.monotonic() + 60
            port = 0
            while not port:
                if time.monotonic() > deadline:
                    raise RuntimeError("syslog_tcp source did not start listening")
                port = int(handle.metrics().get("SOURCE.sys", {}).get("BoundPort", "0") or 0)
                time.sleep(0.1)
            sender = _spawn("--client", str(port), str(warmup_s + seconds + 5),
                            *(["--octet-count"] if octet_count else []))
            time.sleep(warmup_s)
            m0 = handle.metrics()
            t0 = time.perf_counter()
            time.sleep(seconds)
            m1 = handle.metrics()
            dt = time.perf_counter() - t0
        finally:
            if sender is not None:
                sender.kill()
                sender.wait()
            handle.stop(drain_timeout_s=1)
    drained = int(m1["SINK.out"]["EventDrainSuccessCount"]) - int(m0["SINK.out"]["EventDrainSuccessCount"])
    invalid = int(m1["SOURCE.sys"].get("InvalidEventCount", 0))
    size = len(messages(100, octet_count)) / 100
    return {"pipeline": "syslog" + ("-octet" if octet_count else ""), "events": drained, "seconds": round(dt, 3),
            "events_per_s": round(drained / dt), "mb_per_s": round(drained * size / dt / 1e6, 1),
            "message_bytes": round(size), "invalid_events": invalid}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The name is optional: `bench.py syslog ...` hands its whole command line over, name included.
    parser.add_argument("pipeline", nargs="?", choices=PIPELINES, default=PIPELINES[0],
                        help="the pipeline (the only one)")
    parser.add_argument("--seconds", type=float, default=None,
                        help=f"measurement window (default {SECONDS:g}; {QUICK_SECONDS:g} with --quick)")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help=f"warm-up before it (default {WARMUP_S:g}; {QUICK_WARMUP_S:g} with --quick)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run, not a measurement")
    parser.add_argument("--octet-count", action="store_true", help="RFC 6587 octet-counted framing")
    parser.add_argument("--client", nargs=2, metavar=("PORT", "SECONDS"), help=argparse.SUPPRESS)
    parser.add_argument("--plain-server", nargs=2, metavar=("SECONDS", "READY_FILE"), help=argparse.SUPPRESS)
    return parser


def measure(args) -> list[dict]:
    """Run the benchmark (baseline, then the pipeline on a Ray of its own); log to stderr; return the result."""
    import ray

    seconds = args.seconds if args.seconds is not None else (QUICK_SECONDS if args.quick else SECONDS)
    warmup_s = args.warmup_s if args.warmup_s is not None else (QUICK_WARMUP_S if args.quick else WARMUP_S)
    base = baseline(min(seconds, 5.0))
    print(f"baseline (client -> plain socket server that reads and frames): {base['events_per_s']:,.0f} events/s "
          f"{base['mb_per_s']:.0f} MB/s", file=sys.stderr)
    # address="local": a fresh embedded Ray even if another local cluster is running on this machine
    bench.start_local_ray()
    try:
        result = run(seconds, warmup_s, args.octet_count)
    finally:
        ray.shutdown()
    result["baseline_events_per_s"] = round(base["events_per_s"])
    result["ratio_to_baseline"] = round(result["events_per_s"] / base["events_per_s"], 3)
    print(f"{result['pipeline']:>12}: {result['events_per_s']:>10,} events/s  {result['mb_per_s']:>7} MB/s  "
          f"x{result['ratio_to_baseline']} of baseline", file=sys.stderr)
    return [result]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.client:
        client(int(args.client[0]), float(args.client[1]), args.octet_count)
        return 0
    if args.plain_server:
        plain_server(float(args.plain_server[0]), args.plain_server[1])
        return 0
    for r in measure(args):
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
