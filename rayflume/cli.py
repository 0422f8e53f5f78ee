"""The ``rayflume`` command line: validate, deploy, status, top, tap, logs, pause, resume,
stop, convert, send, types.

``validate`` and ``deploy`` take a rayflume topology (YAML) or, with ``--agent NAME`` (Flume's
``-n``), a Flume agent configuration (a properties file), converted on the fly; ``convert`` writes
that conversion as YAML. The Flume properties that cannot be carried over are printed as warnings,
one line each.

Every command exits 2 on bad input (an invalid topology, an unreachable cluster, an unknown
topology name) with one message saying what is wrong and what to do, never a traceback; 130
after Ctrl-C (143 after SIGTERM), once what was accepted is drained.
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
CONNECT_TIMEOUT_S = 15.0


class UsageError(Exception):
    """Bad input on the command line: printed without a traceback, exit status 2."""


def _connect(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S, num_cpus: int | None = None,
             quiet: bool = False) -> None:
    """Connect to ``address`` (or start an embedded Ray for None) within ``timeout_s``."""
    from rayflume import api

    if address is None:
        api.ensure_ray("local", num_cpus=num_cpus)
        return
    api.ensure_ray(address, connect_timeout_s=timeout_s)
    if address == "auto" and not quiet:
        # `auto` takes whatever cluster this machine knows of: say which one it was
        print(f"connected to the Ray cluster at {api.cluster_address()} (--address auto)", file=sys.stderr)


def _describe_tier(tier, tiered: bool) -> list[str]:
    groups = {g: sinks for g, sinks in tier.groups().items() if g in tier.sink_groups}
    lines = []
    if tiered:
        p = tier.placement
        where = (f"one instance per node with {p.describe()}" if p.mode == "per_node"
                 else f"{p.replicas} replica(s) on nodes with {p.describe()}")
        lines.append(f"  tier {tier.name}: {where}")
    indent = "    " if tiered else "  "
    for src, cfg in tier.sources.items():
        lines.append(f"{indent}source  {src} ({cfg.type}) -> {', '.join(cfg.channels)}")
    for ch, cfg in tier.channels.items():
        lines.append(f"{indent}channel {ch} ({cfg.type})")
    for sink, cfg in tier.sinks.items():
        hop = f" -> tier {cfg.tier}" if getattr(cfg, "tier", None) else ""
        lines.append(f"{indent}sink    {sink} ({cfg.type}) <- {cfg.channel}{hop}")
    for group, sinks in groups.items():
        lines.append(f"{indent}group   {group}: {', '.join(sinks)} "
                     f"({tier.sink_groups[group].raw_processor.get('type', 'default')})")
    return lines


def _load(args):
    """The topology of ``args.file`` (with ``args.agent`` for a Flume file), its conversion
    warnings printed to stderr."""
    from rayflume.topology import load_topology

    warnings: list[str] = []
    topo = load_topology(args.file, agent=args.agent, warnings=warnings)
    for warning in warnings:
        print(warning if warning.startswith("note: ") else f"warning: {warning}", file=sys.stderr)
    return topo


def cmd_validate(args) -> int:
    from rayflume.topology import local_environment_warnings, metrics_export_warnings

    topo = _load(args)
    tiers = list(topo.tiers.values())
    count = {kind: sum(len(getattr(t, kind)) for t in tiers)
             for kind in ("sources", "channels", "sinks", "sink_groups")}
    summary = (f"{count['sources']} source(s), {count['channels']} channel(s), {count['sinks']} sink(s), "
               f"{count['sink_groups']} sink group(s)")
    if topo.tiered:
        summary = f"{len(tiers)} tier(s), " + summary
    print(f"topology '{topo.name}' is valid: {summary}")
    for tier in tiers:
        print("\n".join(_describe_tier(tier, topo.tiered)))
    # What this machine lacks is no error (the topology runs on other nodes), but worth a word.
    for warning in local_environment_warnings(topo):
        print(f"warning (on this machine): {warning}", file=sys.stderr)
    for warning in metrics_export_warnings(topo):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_convert(args) -> int:
    """Write agent ``--agent`` of a Flume properties file as a rayflume topology, after validating
    it; every property not carried over is a warning on stderr and a comment in the output."""
    from rayflume.flume_conf.convert import convert_file, to_yaml

    conversion = convert_file(args.file, args.agent)
    for warning in conversion.warning_lines():
        print(f"warning: {warning}", file=sys.stderr)
    for note in conversion.note_lines():
        print(f"note: {note}", file=sys.stderr)
    if conversion.errors:
        raise ConfigError(conversion.error_lines(), topology=args.agent)
    text = to_yaml(conversion)
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    carried = "every property carried over" if not conversion.warnings else \
        f"{len(conversion.warnings)} propert{'y' if len(conversion.warnings) == 1 else 'ies'} not carried over (above)"
    print(f"wrote {args.output}: agent '{args.agent}' as topology '{conversion.data['name']}' (valid; {carried})")
    print(f"  rayflume deploy {args.output}")
    return 0


def _add_agent(p) -> None:
    p.add_argument("--agent", "-n", metavar="NAME",
                   help="with a Flume properties file: the agent to run (Flume's -n); the file is converted on "
                        "the fly and the properties it cannot carry over are printed as warnings")


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


def _json_object(text: str) -> dict:
    """An argument that must be a JSON object (argparse reports the ValueError's message)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): give an object such as '{{\"pip\": [\"requests\"]}}'")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object is needed, not {type(value).__name__}")
    return value


def cmd_deploy(args) -> int:
    if args.address is None:
        # The embedded Ray serves this machine only: its processes bind loopback. Ray reads this
        # switch when it is imported, so it must be set before that.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from rayflume import api

    topo = _load(args)
    if args.address is not None:
        _connect(args.address, args.connect_timeout_s)
        handle = api.deploy(topo, log_level=args.log_level, runtime_env=args.runtime_env_json)
        url = handle.metrics_url()
        print(f"deployed topology '{topo.name}' to {api.cluster_address()}"
              + (f"; metrics at {url}" if url else ""))
        _print_metrics_problem(handle)
        print(f"  rayflume status {topo.name} --address {args.address}")
        print(f"  rayflume logs {topo.name} --address {args.address}")
        print(f"  rayflume stop {topo.name} --address {args.address}")
        return 0
    return _run_foreground(topo, args)


def _print_metrics_problem(handle) -> None:
    problem = handle.status().get("metrics_problem")
    if problem:
        print(f"note: {problem}", file=sys.stderr, flush=True)


def _run_foreground(topo, args) -> int:
    """Start an embedded Ray, deploy, and show a live status line until Ctrl-C or until every
    finite source is done and drained; then drain and stop.

    Ctrl-C (or SIGTERM) at any moment, start-up included, ends in the same orderly stop: what has
    started is drained before Ray shuts down. A second Ctrl-C gives up on draining.
    """
    import ray

    from rayflume import api

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        if received:  # a second Ctrl-C: the user does not want to wait for the drain
            print("\nrayflume deploy: interrupted again; stopping without draining", file=sys.stderr, flush=True)
            os._exit(128 + received[0])
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started: dict = {}
    # Ray starts in this thread: its processes are bound to the life of the thread that starts
    # them (Linux's parent-death signal). The signal handler above only sets a flag meanwhile.
    # "local": a new Ray of its own, even when another runs on this machine (ray.init() would join it)
    api.ensure_ray("local", num_cpus=args.num_cpus)
    if stop.is_set():  # interrupted while Ray started: nothing deployed, nothing to drain
        print("rayflume deploy: interrupted during start-up", file=sys.stderr, flush=True)
    else:
        # Deploying waits on the controller; this thread keeps answering Ctrl-C meanwhile.
        def deploy():
            try:
                started["handle"] = api.deploy(topo, log_level=args.log_level, runtime_env=args.runtime_env_json)
            except BaseException as exc:
                started["error"] = exc

        deployer = threading.Thread(target=deploy, daemon=True, name="rayflume-deploy")
        deployer.start()
        announced = False
        while deployer.is_alive():
            deployer.join(0.1)
            if stop.is_set() and not announced:
                print("rayflume deploy: interrupted during start-up; stopping once started", file=sys.stderr,
                      flush=True)
                announced = True
    if "handle" not in started:
        _shutdown_ray(ray)
        if "error" in started:
            raise started["error"]
        print(f"stopped before topology '{topo.name}' was deployed", flush=True)
        return 128 + received[0]
    try:
        return _run_started(started["handle"], stop, received, args)
    finally:
        _shutdown_ray(ray)


def _run_started(handle, stop: threading.Event, received: list, args) -> int:
    from rayflume import api

    url = handle.metrics_url()
    address = api.cluster_address()
    finished = False
    if not stop.is_set():
        print(f"running topology '{handle.name}' on an embedded Ray at {address}"
              + (f"; metrics at {url}" if url else "") + "; Ctrl-C to stop", flush=True)
        _print_metrics_problem(handle)
        print(f"  from another terminal: rayflume status {handle.name} --address {address}", flush=True)
        finished = _show_progress(handle, stop, args.status_interval_s)
    print("all sources finished and channels drained; stopping" if finished
          else "stopping: draining channels", flush=True)
    final = handle.metrics()
    result = handle.stop(drain_timeout_s=args.drain_timeout_s)
    final = result.get("final_metrics") or final
    accepted = _sum(final, "SOURCE.", "EventAcceptedCount")
    drained = _sum(final, "SINK.", "EventDrainSuccessCount")
    again = _sum(final, "SINK.", "DuplicateDeliveryCount")
    # DuplicateDeliveryCount is an upper bound after a sink restart (see _private/ledger.py)
    twice = f" (at most {again:,} of them delivered twice)" if again else ""
    print(f"stopped '{handle.name}': {accepted:,} events accepted by sources, {drained:,} delivered by "
          f"sinks{twice}" + _leftovers(result), flush=True)
    return 128 + received[0] if received else 0


def _show_progress(handle, stop: threading.Event, interval_s: float) -> bool:
    """Print the status line every ``interval_s`` until ``stop``; True if the pipeline finished."""
    tty = sys.stdout.isatty()
    previous, t_prev = {}, time.monotonic()  # the first rates count from the deploy
    try:
        while not stop.wait(interval_s):
            metrics = handle.metrics()
            t = time.monotonic()
            line = status_line(handle.name, metrics, previous, t - t_prev)
            print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
            previous, t_prev = metrics, t
            if handle.finished():
                return True
        return False
    finally:
        if tty:
            print()


def _shutdown_ray(ray) -> None:
    try:
        ray.shutdown()
    except Exception:  # shutting down is best effort; the embedded Ray dies with this process
        pass


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


def _megabytes(value) -> str:
    """A byte count (a number or its string, as counters come) in whole MB; '-' when unknown."""
    try:
        return f"{int(value) / 1e6:.0f}"
    except (TypeError, ValueError):
        return "-"


def format_status(status: dict) -> str:
    lines = [f"topology {status['name']}: {status['state']}"
             + (f" (version {status['version']})" if status.get("version") else "")
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
                 f"{'RESTARTS':>8} {'RSS MB':>7}  COUNTERS")
    for c in status["components"]:
        scope = f"{c.get('tier')}/{c.get('instance')}" if c.get("tier") else ""
        place = f"{scope:<20} " if tiered else ""
        rows = c.get("sinks", {}).items() if c["kind"] == "SINK" else [(c["name"], c.get("counters", {}))]
        for name, counters in rows:
            shown = "  ".join(f"{k}={counters.get(k, '-')}" for k in STATUS_COUNTERS[c["kind"]])
            label = name if name == c["name"] else f"{c['name']}/{name}"
            state = "PAUSED" if c["state"] == "ALIVE" and str(counters.get("Paused")) == "1" else c["state"]
            lines.append(f"  {c['kind']:<8} {place}{label:<16} {state:<10} {c['restarts']:>8} "
                         f"{_megabytes(counters.get('ProcessRssBytes')):>7}  {shown}")
        if c.get("error"):
            lines.append(f"  {'':<8} {place}error: {c['error']}")
    for a in (status.get("alerts") or {}).get("firing") or []:
        lines.append(f"  ALERT FIRING: {a['rule']} on {a['component']}: {a['message']} "
                     f"(`rayflume alerts {status['name']}`)")
    for p in status.get("paused") or []:
        tier = f" (tier {p['tier']})" if p["tier"] else ""
        lines.append(f"  paused: sink {p['sink']}{tier}; `rayflume resume {status['name']} {p['sink']}` drains its "
                     f"channel {p['channel']}")
        for label, inst in p["instances"].items():
            backlog = "-" if inst["backlog"] is None else f"{inst['backlog']:,}"
            applied = "" if inst["applied"] else "  (not applied yet: the sink is starting or unreachable)"
            lines.append(f"    {label}: backlog {backlog} event(s){applied}")
    if status.get("events"):
        lines.append("  recent events:")
        for e in status["events"][-10:]:
            lines.append(f"    {time.strftime('%H:%M:%S', time.localtime(e['time']))} "
                         f"{e['component']}: {e['message']}")
    return "\n".join(lines)


def cmd_status(args) -> int:
    from rayflume import api

    _connect(args.address or "auto", args.connect_timeout_s, quiet=args.json)
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


def cmd_top(args) -> int:
    """The live view of a topology (``rayflume._private.top``), or with ``--once``/``--json`` one
    reading of it for scripts."""
    from rayflume import api
    from rayflume._private import top

    if not args.interval_s > 0:
        raise UsageError(f"--interval-s must be more than 0, got {args.interval_s:g}")
    once = args.once or args.json
    if not once and not sys.stdout.isatty():
        raise UsageError("the live view needs a terminal; for scripts use `rayflume top NAME --once` "
                         "(a table) or `--json`")
    _connect(args.address or "auto", args.connect_timeout_s, quiet=args.json)
    name = args.name
    if name is None:
        deployed = api.list_deployed()
        if len(deployed) != 1:
            raise UsageError("no topology is deployed on this cluster" if not deployed else
                             f"several topologies are deployed ({', '.join(deployed)}); name one: "
                             f"rayflume top {deployed[0]}")
        name = deployed[0]
    handle = _handle(name)
    if once:
        top.print_once(handle, args.interval_s, as_json=args.json)
        return 0
    # The live view is interactive: Ctrl-C on its terminal must stop it even when it was started
    # from a process that ignores SIGINT (a shell's background job passes the ignoring on, and
    # Python then installs no KeyboardInterrupt handler of its own).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return top.run_live(handle, args.interval_s)


def tap_lines(target, batch, fmt: str) -> list[str]:
    """The lines ``rayflume tap`` prints for ``batch`` of ``target`` (a tapping.TapTarget):
    ``text``, each body decoded as UTF-8 (undecodable bytes replaced); ``json``, one object per
    event, the body as ``body`` when it is UTF-8, else as ``body_base64``."""
    import base64

    bodies = batch.bodies()
    if fmt == "text":
        return [b.decode("utf-8", errors="replace") for b in bodies]
    lines = []
    for headers, body in zip(batch.headers.to_pylist(), bodies):
        event = {"component": target.component, "tier": target.tier or None, "instance": target.instance,
                 "headers": dict(headers or [])}
        try:
            event["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            event["body_base64"] = base64.b64encode(body).decode("ascii")
        lines.append(json.dumps(event, ensure_ascii=False))
    return lines


def cmd_tap(args) -> int:
    """Print events flowing through a source or sink of a running topology (``rayflume._private.tapping``)."""
    from rayflume._private import tapping

    if args.limit < 0:
        raise UsageError(f"--limit must be 0 (no limit) or more, got {args.limit}")
    if not args.timeout_s > 0:
        raise UsageError(f"--timeout-s must be more than 0, got {args.timeout_s:g}")
    if not 0 < args.sample <= 1:
        raise UsageError(f"--sample must be a fraction in (0, 1], got {args.sample:g}")
    _connect(args.address or "auto", args.connect_timeout_s)
    handle = _handle(args.name)
    printed = 0
    try:
        for target, batch in tapping.tap_stream(handle, args.component, args.limit or None, args.timeout_s,
                                                args.sample):
            for line in tap_lines(target, batch, args.format):
                print(line)
            sys.stdout.flush()  # events as they come, through a pipe too
            printed += len(batch)
    except ValueError as exc:  # not a source or sink of the topology
        raise UsageError(str(exc)) from None
    except BrokenPipeError:  # the reader went away (`| head`): as many events as it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if not printed:
        print(f"rayflume tap: no event flowed through '{args.component}' of topology '{args.name}' within "
              f"{args.timeout_s:g} s", file=sys.stderr)
    return 0


def format_volume(rows: list[dict]) -> str:
    """``rayflume volume``: one line per (hour, series), oldest hour first."""
    if not rows:
        return "no volume counted yet"
    lines = [f"{'hour (UTC)':<17} {'tier':<10} {'instance':<14} {'source':<20} {'header value':<20} {'events':>12}"]
    for r in rows:
        lines.append(f"{time.strftime('%Y-%m-%d %H:00', time.gmtime(r['hour'])):<17} {r['tier'] or '-':<10} "
                     f"{r['instance'] or '-':<14} {r['source']:<20} {r['header_value'] or '-':<20} {r['events']:>12}")
    return "\n".join(lines)


def cmd_volume(args) -> int:
    """``rayflume volume NAME``: the hourly volume (``handle.volume()``) as a table or JSON rows,
    ``hour`` in epoch seconds (UTC) in JSON."""
    if not args.days > 0:
        raise UsageError(f"--days must be more than 0, got {args.days:g}")
    _connect(args.address or "auto", args.connect_timeout_s, quiet=args.json)
    table = _handle(args.name)._volume_table(args.days, args.by_header)
    rows = table.to_pylist()
    for r in rows:
        r["hour"] = int(r["hour"].timestamp())
    print(json.dumps(rows, indent=2) if args.json else format_volume(rows))
    return 0


def cmd_logs(args) -> int:
    from rayflume import api

    _connect(args.address or "auto", args.connect_timeout_s)
    _handle(args.name)
    found = api.component_logs(args.name, args.component, args.lines)
    if not found:
        raise UsageError(f"topology '{args.name}' has no component named '{args.component}'; "
                         f"`rayflume status {args.name}` lists them")
    for label, lines in found.items():
        print(f"==> {label} <==")
        print("\n".join(lines) if isinstance(lines, list) else f"({lines})")
    return 0


def format_alerts(report: dict) -> str:
    """``rayflume alerts``: the firing alerts, then the recent transitions (oldest first)."""
    def when(t) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))

    lines = [f"topology {report['name']}: {len(report['rules'])} alert rule(s), {len(report['firing'])} firing"]
    for a in report["firing"]:
        lines.append(f"  FIRING   {a['rule']:<20} {a['component']:<32} since {when(a['since'])}  {a['message']}")
    if report["recent"]:
        lines.append("recent:")
    for a in report["recent"]:
        lines.append(f"  {when(a['time'])}  {a['state'].upper():<8} {a['rule']:<20} {a['component']:<32} "
                     f"{a['message']}")
    return "\n".join(lines)


def cmd_alerts(args) -> int:
    """``rayflume alerts NAME``: firing and recent alerts (``handle.alerts()``)."""
    _connect(args.address or "auto", args.connect_timeout_s, quiet=args.json)
    report = _handle(args.name).alerts()
    print(json.dumps(report, indent=2, default=str) if args.json else format_alerts(report))
    return 0


def cmd_pause(args) -> int:
    """``rayflume pause`` / ``rayflume resume``: the sink pause switch (``handle.pause``/``resume``)."""
    _connect(args.address or "auto", args.connect_timeout_s)
    handle = _handle(args.name)
    pausing = args.command == "pause"
    try:
        result = handle.pause(args.sink, tier=args.tier) if pausing else handle.resume(args.sink, tier=args.tier)
    except ValueError as exc:  # not a sink of the topology: the message lists them
        raise UsageError(str(exc)) from None
    where = ", ".join(f"tier {t}" for t in result["tiers"] if t)
    state = "paused" if pausing else "resumed"
    if not result["changed"]:
        state = "was already paused" if pausing else "was not paused"
    print(f"sink '{args.sink}' of topology '{args.name}'{f' ({where}, every instance)' if where else ''}: {state}")
    for label, outcome in result["instances"].items():
        print(f"  {label}: {outcome}")
    if pausing:
        channels = ", ".join(sorted(set(result["channel"].values())))
        print(f"its channel ({channels}) keeps accepting events until full; `rayflume status {args.name}` shows "
              f"the backlog; `rayflume resume {args.name} {args.sink}` drains it")
    return 0


def cmd_stop(args) -> int:
    _connect(args.address or "auto", args.connect_timeout_s)
    handle = _handle(args.name)
    result = handle.stop(drain_timeout_s=args.drain_timeout_s)
    print(f"stopped topology '{args.name}'" + _leftovers(result))
    return 0


def cmd_send(args) -> int:
    from rayflume.client import AvroClient, ThriftClient, send_file

    kind, target = ("avro", args.avro) if args.avro else ("thrift", args.thrift)
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--{kind} wants HOST:PORT (e.g. collector.example:4545), got {target!r}")
    headers = {}
    for item in args.header or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--header wants KEY=VALUE, got {item!r}")
        headers[key] = value
    options = dict(connect_timeout_s=args.connect_timeout_s, request_timeout_s=args.request_timeout_s,
                   ssl=args.ssl, ssl_ca_file=args.ssl_ca_file, trust_all_certs=args.trust_all_certs)
    if kind == "avro":
        client = AvroClient(host, int(port), compression_type=args.compression_type, **options)
    else:
        client = ThriftClient(host, int(port), protocol=args.protocol, **options)
    try:
        with client, (sys.stdin.buffer if args.file == "-" else _open_input(args.file)) as lines:
            sent = send_file(client, lines, args.batch_size, headers)
    except RayflumeError as exc:
        raise UsageError(str(exc)) from None
    print(f"sent {sent} events to {target} ({kind})", file=sys.stderr)
    return 0


def _open_input(path: str):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {path!r}: {exc.strerror}") from None


def cmd_types(args) -> int:
    from rayflume._private import describe

    if args.json_schema:
        print(json.dumps(describe.topology_schema(), indent=2))
        return 0
    if args.type:
        try:
            print(describe.describe(args.type, args.kind))
        except LookupError as exc:
            raise UsageError(str(exc)) from None
        return 0
    kind_width = max(len(k) for k, _, _ in describe.types_table())
    type_width = max(len(t) for _, t, _ in describe.types_table())
    for kind, name, text in describe.types_table():
        if args.kind in (None, kind):
            print(f"{kind.ljust(kind_width)}  {name.ljust(type_width)}  {text}")
    return 0


def _leftovers(stop_result: dict) -> str:
    """What a stop could not drain: events left in live channels, and channels it could not reach."""
    left = {k: v for k, v in (stop_result.get("undrained") or {}).items() if v}
    text = f"; left in channels: {left}" if left else ""
    for label, why in (stop_result.get("not_drained") or {}).items():
        text += f"; channel {label} not drained ({why})"
    return text


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("rayflume")
    except Exception:  # running from a source tree that is not installed
        from rayflume import __version__

        return __version__


def _add_connection(p, default_address: str | None) -> None:
    p.add_argument("--address", default=default_address, metavar="HOST:PORT",
                   help="the Ray cluster (its GCS address, e.g. 127.0.0.1:6379, or `auto` for the one this "
                        "machine runs); default: $RAY_ADDRESS, else auto")
    p.add_argument("--connect-timeout-s", type=float, default=CONNECT_TIMEOUT_S, metavar="S",
                   help=f"give up connecting after S seconds (default {CONNECT_TIMEOUT_S:g})")


def _subparser(sub, name: str, help: str, examples: str):
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                          epilog="examples:\n" + examples, formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayflume", description="Flume-style log pipelines on Ray.",
        epilog="examples:\n  rayflume validate topologies/quickstart.yaml\n"
               "  rayflume deploy topologies/quickstart.yaml\n  rayflume status --address 127.0.0.1:6379\n"
               "  rayflume deploy conf/flume.conf --agent a1    # a Flume agent configuration\n"
               "\n`rayflume COMMAND --help` describes each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"rayflume {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _subparser(sub, "validate", "check a topology file and report every problem",
                   "  rayflume validate topologies/two-tier.yaml   # exits 0 when valid, 2 with every problem\n"
                   "  rayflume validate conf/flume.conf --agent a1 # a Flume agent, as `flume-ng agent -n a1` runs it")
    p.add_argument("file", help="a topology YAML file, or a Flume properties file with --agent")
    _add_agent(p)
    p.set_defaults(func=cmd_validate)

    p = _subparser(sub, "deploy", "run a topology (embedded Ray in the foreground, or on --address)",
                   "  rayflume deploy topologies/quickstart.yaml                   # foreground; Ctrl-C stops\n"
                   "  rayflume deploy topologies/two-tier.yaml --address HEAD:6379  # deploy to a cluster and return\n"
                   "  rayflume deploy t.yaml --log-level DEBUG\n"
                   "  rayflume deploy conf/flume.conf --agent a1   # like flume-ng agent -n a1 -f conf/flume.conf")
    p.add_argument("file", help="a topology YAML file, or a Flume properties file with --agent")
    _add_agent(p)
    p.add_argument("--address", metavar="HOST:PORT",
                   help="deploy to this Ray cluster and return (`auto`: the cluster this machine runs); omit it "
                        "to run an embedded Ray in the foreground until the pipeline finishes or Ctrl-C")
    p.add_argument("--connect-timeout-s", type=float, default=CONNECT_TIMEOUT_S, metavar="S",
                   help=f"give up connecting to --address after S seconds (default {CONNECT_TIMEOUT_S:g})")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="level of every component's log (default INFO, which shows the logger sink's events)")
    p.add_argument("--runtime-env-json", type=_json_object, default=None, metavar="JSON",
                   help="Ray runtime_env for the topology's actors, laid over the topology's own `runtime_env:`, "
                        "e.g. '{\"py_modules\": [\"./my_components\"]}' (working_dir, py_modules, pip, env_vars; "
                        "local paths relative to the current directory)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: all)")
    p.add_argument("--drain-timeout-s", type=float, default=30.0, metavar="S",
                   help="on stop, wait at most S seconds for the channels to drain (default 30)")
    p.add_argument("--status-interval-s", type=float, default=1.0, metavar="S",
                   help="seconds between status lines in the foreground (default 1)")
    p.set_defaults(func=cmd_deploy)

    env_address = os.environ.get("RAY_ADDRESS")
    p = _subparser(sub, "status", "show deployed topologies, their components and counters",
                   "  rayflume status                          # every topology on the local cluster\n"
                   "  rayflume status weblogs --address HEAD:6379 --json")
    p.add_argument("name", nargs="?", help="a topology's name (default: all)")
    _add_connection(p, env_address)
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=cmd_status)

    p = _subparser(sub, "alerts", "list a topology's firing and recent alerts (rules in its `alerts:` section)",
                   "  rayflume alerts weblogs --address HEAD:6379 --json")
    p.add_argument("name", help="a topology's name")
    _add_connection(p, env_address)
    p.add_argument("--json", action="store_true", help="print the alerts as JSON")
    p.set_defaults(func=cmd_alerts)

    p = _subparser(sub, "top", "show a live view of a topology in flow order, with rates (like `vector top`)",
                   "  rayflume top                                 # the only deployed topology, full screen\n"
                   "  rayflume top weblogs --address HEAD:6379     # keys: s cycles the sort column, r reverses it,\n"
                   "                                               #       q (or Ctrl-C) quits\n"
                   "  rayflume top weblogs --once --interval-s 5   # one table, rates over 5 s, for scripts\n"
                   "  rayflume top weblogs --json | jq '.[] | select(.kind == \"SINK\") | .events_out_per_s'\n"
                   "\nRows go tier by tier and instance by instance, each source, then channel, then sink:\n"
                   "events in and out per second, bytes per second where a counter counts bytes, the\n"
                   "channel's fill, restarts, failures counted, the node, and the last error.")
    p.add_argument("name", nargs="?", help="a topology's name (default: the only one deployed)")
    _add_connection(p, env_address)
    p.add_argument("--interval-s", type=float, default=1.0, metavar="S",
                   help="seconds between readings; rates are measured over them (default 1)")
    p.add_argument("--once", action="store_true",
                   help="read twice, --interval-s apart, print one table and exit")
    p.add_argument("--json", action="store_true", help="like --once, but print the rows as JSON")
    p.set_defaults(func=cmd_top)

    p = _subparser(sub, "tap", "print events flowing out of a source or into a sink of a running topology "
                               "(like `vector tap`)",
                   "  rayflume tap weblogs tail                        # 10 events the source `tail` hands to "
                   "its channels\n"
                   "  rayflume tap weblogs files --limit 100 --format text   # 100 bodies the sink `files` wrote\n"
                   "  rayflume tap weblogs out --limit 0 --sample 0.01 | jq .headers   # 1% of events, until idle\n"
                   "\nA source shows events after its interceptors, as its channels got them; a sink, the events\n"
                   "its write delivered; every instance of the component (in every tier that has one of that\n"
                   "name). Only events that flow after the tap starts are shown. Nothing is taken from any\n"
                   "channel: the pipeline delivers every event as if untapped. Each instance keeps at most\n"
                   "1,000 events between reads (the oldest are dropped) and stops keeping any about 5 s after\n"
                   "the last read.\n"
                   "\njson (the default) prints one object per line: component, tier (null without tiers),\n"
                   "instance, headers, and body, or body_base64 when the body is not UTF-8. text prints each\n"
                   "body as text (undecodable bytes replaced).\n"
                   "\nExits 0 once --limit events were printed, or when --timeout-s passed without an event\n"
                   "(having printed none, it says so on stderr); 2 for a topology or component that does not\n"
                   "exist; 130 on Ctrl-C.")
    p.add_argument("name", help="a topology's name")
    p.add_argument("component", help="a source or sink of the topology")
    _add_connection(p, env_address)
    p.add_argument("--limit", "-n", type=int, default=10, metavar="N",
                   help="exit after N events (default 10; 0: no limit, until --timeout-s without events)")
    p.add_argument("--format", choices=["json", "text"], default="json", help="json lines (default) or bodies as text")
    p.add_argument("--timeout-s", type=float, default=10.0, metavar="S",
                   help="exit when no event came for S seconds (default 10)")
    p.add_argument("--sample", type=float, default=1.0, metavar="F",
                   help="show this fraction of the events, evenly spaced (default 1: every event, up to the "
                        "buffer's 1,000 between reads)")
    p.set_defaults(func=cmd_tap)

    p = _subparser(sub, "logs", "show recent log lines of a topology's components",
                   "  rayflume logs quickstart                 # every component\n"
                   "  rayflume logs weblogs forward -n 20      # components named `forward`, in every instance")
    p.add_argument("name", help="a topology's name")
    p.add_argument("component", nargs="?",
                   help="a component's name, or its label as `rayflume logs NAME` prints it (default: all)")
    p.add_argument("-n", "--lines", type=int, default=50, help="lines per component (default 50)")
    _add_connection(p, env_address)
    p.set_defaults(func=cmd_logs)

    p = _subparser(sub, "volume", "show a topology's accepted events per UTC hour, per source (and header value)",
                   "  rayflume volume weblogs                  # per source, last 8 days, newest hours last\n"
                   "  rayflume volume weblogs --days 1 --by-header --json   # per value of volume.header")
    p.add_argument("name", help="a topology's name")
    _add_connection(p, env_address)
    p.add_argument("--days", type=float, default=8.0, metavar="N",
                   help="the last N days (default 8, which is what is kept)")
    p.add_argument("--by-header", action="store_true",
                   help="one row per value of the topology's volume.header instead of per source")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    p.set_defaults(func=cmd_volume)

    p = _subparser(sub, "stop", "drain and remove a deployed topology",
                   "  rayflume stop weblogs --address HEAD:6379")
    p.add_argument("name", help="a topology's name")
    _add_connection(p, env_address)
    p.add_argument("--drain-timeout-s", type=float, default=30.0, metavar="S",
                   help="wait at most S seconds for the channels to drain (default 30)")
    p.set_defaults(func=cmd_stop)

    pause_notes = ("\nA paused sink finishes (or rolls back) the batch in hand and takes nothing more; nothing is\n"
                   "lost or written twice. Its channel keeps accepting events until it is full, then the\n"
                   "sources back off as for any full channel. In a tiered topology every instance of the\n"
                   "sink's tier is paused (--tier picks the tier when several have a sink of that name); in a\n"
                   "failover or load_balance group the other sinks deliver. The pause is kept by the\n"
                   "controller: it survives restarts of the controller and of the sink, until resumed or the\n"
                   "topology is stopped. Pausing twice, or resuming a running sink, changes nothing.\n"
                   "Exits 2 for a sink that is not in the topology (the message lists them).")
    for command, help_text, example in (
            ("pause", "stop a sink taking events (e.g. for maintenance of what it writes to); they wait in its channel",
             "  rayflume pause weblogs files --address HEAD:6379   # `rayflume status weblogs` shows the backlog\n"),
            ("resume", "let a paused sink take again and drain its channel's backlog",
             "  rayflume resume weblogs files --address HEAD:6379\n")):
        p = _subparser(sub, command, help_text, example + pause_notes)
        p.add_argument("name", help="a topology's name")
        p.add_argument("sink", help="a sink of the topology (also one in a sink group)")
        p.add_argument("--tier", default=None, help="the sink's tier, when several tiers have a sink of that name")
        _add_connection(p, env_address)
        p.set_defaults(func=cmd_pause)

    p = _subparser(sub, "convert", "convert a Flume agent configuration into a rayflume topology (YAML)",
                   "  rayflume convert conf/flume.conf --agent a1                  # the topology on stdout\n"
                   "  rayflume convert conf/flume.conf --agent a1 -o a1.yaml       # written to a1.yaml\n"
                   "\nEvery property is carried over or reported on stderr (and as a comment in the output):\n"
                   "the property, why it has no equivalent, what to do. The output is validated before it is\n"
                   "written; nothing is written when a property cannot be converted (exit 2).\n"
                   "docs/flume-properties.md lists each Flume property and its rayflume key.")
    p.add_argument("file", help="a Flume properties file (flume-ng's -f)")
    p.add_argument("--agent", "-n", metavar="NAME",
                   help="the agent to convert (flume-ng's -n); without it, the agents in the file are listed")
    p.add_argument("-o", "--output", metavar="FILE", help="write the topology here (default: stdout)")
    p.set_defaults(func=cmd_convert)

    p = _subparser(sub, "send", "send a file's lines to an avro or thrift source, like flume-ng avro-client",
                   "  rayflume send --avro collector.example:4545 /var/log/app.log\n"
                   "  tail -n 1000 app.log | rayflume send --avro 127.0.0.1:4545 - --header host=web1\n"
                   "  rayflume send --thrift 127.0.0.1:4546 app.log --protocol binary\n"
                   "\nEach line is an event (without its newline), --batch-size per call; exits 0 once every\n"
                   "call was answered OK, 2 at the first that was not (the lines before it were delivered).")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--avro", metavar="HOST:PORT", help="an Avro RPC source (Flume's avro source)")
    target.add_argument("--thrift", metavar="HOST:PORT", help="a Thrift RPC source (Flume's thrift source)")
    p.add_argument("file", help="the file to send, one event per line; - reads stdin")
    p.add_argument("--header", action="append", metavar="KEY=VALUE", help="a header on every event (repeatable)")
    p.add_argument("--batch-size", type=int, default=100, metavar="N", help="events per call (default 100, as "
                                                                             "flume-ng avro-client)")
    p.add_argument("--compression-type", choices=["none", "deflate"], default="none", help="avro: as the source")
    p.add_argument("--protocol", choices=["compact", "binary"], default="compact", help="thrift: as the source")
    p.add_argument("--ssl", action="store_true", help="connect with TLS")
    p.add_argument("--ssl-ca-file", metavar="PEM", help="CA bundle that verifies the source (default: the system's)")
    p.add_argument("--trust-all-certs", action="store_true", help="do not verify the source's certificate")
    p.add_argument("--connect-timeout-s", type=float, default=20.0, metavar="S")
    p.add_argument("--request-timeout-s", type=float, default=20.0, metavar="S")
    p.set_defaults(func=cmd_send)

    p = _subparser(sub, "types", "list component types, or one type's keys with defaults and descriptions",
                   "  rayflume types                  # every source, channel, sink... type\n"
                   "  rayflume types avro             # the avro source's and sink's keys\n"
                   "  rayflume types file --kind channel\n"
                   "  rayflume types --json-schema > rayflume.schema.json   # for editors (YAML language servers)")
    p.add_argument("type", nargs="?", help="a component type (rayflume's or Flume's name)")
    p.add_argument("--kind", choices=["source", "channel", "sink", "interceptor", "selector", "processor"])
    p.add_argument("--json-schema", action="store_true", help="print a JSON Schema of topology files")
    p.set_defaults(func=cmd_types)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prefix = f"rayflume {args.command}"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\n{prefix}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except (ConfigError, UsageError, RayflumeError) as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # a bug of ours: one line for the user, the traceback when asked for
        if os.environ.get("RAYFLUME_DEBUG"):
            raise
        print(f"{prefix}: internal error: {type(exc).__name__}: {exc}. Run again with RAYFLUME_DEBUG=1 for "
              f"the traceback, and please report it", file=sys.stderr)
        return 1


def run() -> None:
    """The console script: exits without waiting for a connection that never answered."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if code == EXIT_BAD_INPUT or code >= 128:
        # A Ray connection attempt may still hang in a thread, and Ray's exit hooks would wait on it.
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
