"""The ``rayflume`` command line: validate, deploy, status, stop.

Every command exits 2 on bad input (an invalid topology, an unreachable cluster, an unknown
topology name) with one message saying what is wrong and what to do.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

from rayflume.errors import ConfigError, RayflumeError

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad input on the command line: printed without a traceback, exit status 2."""


def _connect(address: str | None, num_cpus: int | None = None) -> None:
    import ray

    from rayflume.api import ensure_ray

    if address is None:
        ensure_ray(None, num_cpus=num_cpus)
        return
    if address != "auto" and ":" in address:
        # Ray waits a long time for an unreachable GCS; check the port first for a quick answer.
        import socket

        host, _, port = address.rpartition(":")
        host = host.split("://")[-1] or "127.0.0.1"
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot reach a Ray cluster at --address {address}: {exc}. Start one with "
                             f"`ray start --head`, or omit --address to run on an embedded local Ray") from None
    try:
        ensure_ray(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"cannot connect to Ray at --address {address}: {exc}. Start a cluster with "
                         f"`ray start --head`, or omit --address to run on an embedded local Ray") from None
    del ray


def cmd_validate(args) -> int:
    from rayflume.topology import load_topology

    topo = load_topology(args.file)
    print(f"topology '{topo.name}' is valid: {len(topo.sources)} source(s), {len(topo.channels)} "
          f"channel(s), {len(topo.sinks)} sink(s), {len(topo.sink_groups)} sink group(s)")
    return 0


def _sum(metrics: dict, prefix: str, key: str) -> int:
    return sum(int(float(v.get(key) or 0)) for k, v in metrics.items() if k.startswith(prefix))


def status_line(name: str, metrics: dict, previous: dict | None, dt: float) -> str:
    """One line: events in/out per second and each channel's fill."""
    accepted = _sum(metrics, "SOURCE.", "EventAcceptedCount")
    drained = _sum(metrics, "SINK.", "EventDrainSuccessCount")
    rate_in = rate_out = 0.0
    if previous is not None and dt > 0:
        rate_in = (accepted - _sum(previous, "SOURCE.", "EventAcceptedCount")) / dt
        rate_out = (drained - _sum(previous, "SINK.", "EventDrainSuccessCount")) / dt
    fills = " ".join(f"{k.split('.', 1)[1]}={float(v.get('ChannelFillPercentage') or 0):.0f}%"
                     for k, v in sorted(metrics.items()) if k.startswith("CHANNEL."))
    return (f"[{name}] in {rate_in:>10,.0f} ev/s  out {rate_out:>10,.0f} ev/s  "
            f"total in {accepted:,} out {drained:,}  channels {fills}")


def cmd_deploy(args) -> int:
    from rayflume import api
    from rayflume.topology import load_topology

    topo = load_topology(args.file)
    _connect(args.address, num_cpus=args.num_cpus)
    handle = api.deploy(topo)
    url = handle.metrics_url()
    if args.address is not None:
        print(f"deployed topology '{topo.name}' to {args.address}"
              + (f"; metrics at {url}" if url else ""))
        print(f"  rayflume status {topo.name} --address {args.address}")
        print(f"  rayflume stop {topo.name} --address {args.address}")
        return 0
    return _run_foreground(handle, url, args)


def _run_foreground(handle, url, args) -> int:
    """Show a live status line until Ctrl-C or until every finite source is done and drained."""
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"running topology '{handle.name}' on an embedded Ray" + (f"; metrics at {url}" if url else "")
          + "; Ctrl-C to stop", flush=True)
    tty = sys.stdout.isatty()
    previous, t_prev = {}, time.monotonic()  # the first rates count from the deploy
    finished = False
    while not stop.wait(args.status_interval_s):
        metrics = handle.metrics()
        t = time.monotonic()
        line = status_line(handle.name, metrics, previous, t - t_prev)
        print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
        previous, t_prev = metrics, t
        if handle.finished():
            finished = True
            break
    if tty:
        print()
    print("all sources finished and channels drained; stopping" if finished
          else "stopping: draining channels", flush=True)
    final = handle.metrics()
    result = handle.stop(drain_timeout_s=args.drain_timeout_s)
    final = result.get("final_metrics") or final
    accepted = _sum(final, "SOURCE.", "EventAcceptedCount")
    drained = _sum(final, "SINK.", "EventDrainSuccessCount")
    left = result.get("undrained") or {}
    print(f"stopped '{handle.name}': {accepted:,} events accepted by sources, {drained:,} delivered by "
          f"sinks" + (f"; left in channels: {left}" if any(left.values()) else ""), flush=True)
    return 0


def _handle(name: str):
    from rayflume import api

    handle = api.get(name)
    if handle is None:
        known = api.list_deployed()
        raise UsageError(f"no topology named '{name}' is deployed on this cluster"
                         + (f"; deployed: {', '.join(known)}" if known else "; none is deployed"))
    return handle


STATUS_COUNTERS = {"SOURCE": ["EventReceivedCount", "EventAcceptedCount", "ChannelWriteFail"],
                   "CHANNEL": ["ChannelSize", "ChannelFillPercentage", "EventPutSuccessCount",
                               "EventTakeSuccessCount"],
                   "SINK": ["EventDrainSuccessCount", "EventWriteFail", "RollbackCount"]}


def format_status(status: dict) -> str:
    lines = [f"topology {status['name']}: {status['state']}"
             + (f"  metrics: {status['metrics_url']}" if status.get("metrics_url") else "")]
    tiers = status.get("tiers") or {}
    tiered = any(name for name in tiers)
    for name, tier in tiers.items():
        if not tiered:
            break
        want = f"{tier['replicas']} replica(s)" if tier["placement"] == "replicas" else tier["placement"]
        nodes = ", ".join(f"{i}@{(n or '-')[:12]}" for i, n in sorted(tier["instances"].items())) or "none"
        lines.append(f"  tier {name}: {want} on {tier['selector']}; instances: {nodes}")
        if tier.get("waiting"):
            lines.append(f"    waiting: {tier['waiting']}")
    where = "TIER/INSTANCE" if tiered else ""
    lines.append(f"  {'KIND':<8} {where:<{20 if tiered else 0}}{' ' if tiered else ''}{'NAME':<16} {'STATE':<10} "
                 f"{'RESTARTS':>8}  COUNTERS")
    for c in status["components"]:
        scope = f"{c.get('tier')}/{c.get('instance')}" if c.get("tier") else ""
        place = f"{scope:<20} " if tiered else ""
        rows = c.get("sinks", {}).items() if c["kind"] == "SINK" else [(c["name"], c.get("counters", {}))]
        for name, counters in rows:
            shown = "  ".join(f"{k}={counters.get(k, '-')}" for k in STATUS_COUNTERS[c["kind"]])
            label = name if name == c["name"] else f"{c['name']}/{name}"
            lines.append(f"  {c['kind']:<8} {place}{label:<16} {c['state']:<10} {c['restarts']:>8}  {shown}")
        if c.get("error"):
            lines.append(f"  {'':<8} {place}error: {c['error']}")
    if status.get("events"):
        lines.append("  recent events:")
        for e in status["events"][-10:]:
            lines.append(f"    {time.strftime('%H:%M:%S', time.localtime(e['time']))} "
                         f"{e['component']}: {e['message']}")
    return "\n".join(lines)


def cmd_status(args) -> int:
    from rayflume import api

    _connect(args.address or "auto")
    names = [args.name] if args.name else api.list_deployed()
    if not names:
        print("no topology is deployed on this cluster")
        return 0
    statuses = [_handle(n).status() for n in names]
    if args.json:
        print(json.dumps(statuses if not args.name else statuses[0], indent=2, default=str))
    else:
        print("\n\n".join(format_status(s) for s in statuses))
    return 0


def cmd_stop(args) -> int:
    _connect(args.address or "auto")
    handle = _handle(args.name)
    result = handle.stop(drain_timeout_s=args.drain_timeout_s)
    left = result.get("undrained") or {}
    print(f"stopped topology '{args.name}'" + (f"; left in channels: {left}" if any(left.values()) else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayflume", description="Flume-style log pipelines on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a topology file and report every problem")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("deploy", help="run a topology (embedded Ray in the foreground, or on --address)")
    p.add_argument("file")
    p.add_argument("--address", help="Ray cluster address (e.g. 127.0.0.1:6379); omit to run an embedded "
                                     "Ray in the foreground until Ctrl-C")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for the embedded Ray")
    p.add_argument("--drain-timeout-s", type=float, default=30.0)
    p.add_argument("--status-interval-s", type=float, default=1.0)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("status", help="show deployed topologies, their components and counters")
    p.add_argument("name", nargs="?")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("stop", help="drain and remove a deployed topology")
    p.add_argument("name")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"))
    p.add_argument("--drain-timeout-s", type=float, default=30.0)
    p.set_defaults(func=cmd_stop)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"rayflume {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (UsageError, RayflumeError) as exc:
        print(f"rayflume {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
