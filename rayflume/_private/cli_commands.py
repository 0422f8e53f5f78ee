"""The ``rayflume`` subcommands: a ``cmd_*`` function each, taking the parsed arguments (see
:func:`rayflume.cli.build_parser`) and returning the exit status; the tables and lines they print
are :mod:`rayflume._private.cli_format`'s.

Bad input raises :class:`UsageError` (or ConfigError, RayflumeError), which :func:`rayflume.cli.main`
prints as one line, exit status 2. Ray is imported inside the commands, never here: ``deploy``
without ``--address`` first sets a switch that Ray reads when it is imported.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from rayflume._private.cli_format import (
    counter_total,
    describe_tier,
    format_alerts,
    format_status,
    format_volume,
    leftovers,
    status_line,
    tap_lines,
)
from rayflume.errors import ConfigError, RayflumeError

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
        print("\n".join(describe_tier(tier, topo.tiered)))
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
    accepted = counter_total(final, "SOURCE.", "EventAcceptedCount")
    drained = counter_total(final, "SINK.", "EventDrainSuccessCount")
    again = counter_total(final, "SINK.", "DuplicateDeliveryCount")
    # DuplicateDeliveryCount is an upper bound after a sink restart (see _private/ledger.py)
    twice = f" (at most {again:,} of them delivered twice)" if again else ""
    print(f"stopped '{handle.name}': {accepted:,} events accepted by sources, {drained:,} delivered by "
          f"sinks{twice}" + leftovers(result), flush=True)
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
    print(f"stopped topology '{args.name}'" + leftovers(result))
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
