"""The ``rayflume`` command line: validate, deploy, status, top, tap, logs, pause, resume,
stop, convert, send, types.

``validate`` and ``deploy`` take a rayflume topology (YAML) or, with ``--agent NAME`` (Flume's
``-n``), a Flume agent configuration (a properties file), converted on the fly; ``convert`` writes
that conversion as YAML. The Flume properties that cannot be carried over are printed as warnings,
one line each.

Every command exits 2 on bad input (an invalid topology, an unreachable cluster, an unknown
topology name) with one message saying what is wrong and what to do, never a traceback; 130
after Ctrl-C (143 after SIGTERM), once what was accepted is drained.

This module is the entry point (``rayflume = "rayflume.cli:run"``, ``python -m rayflume.cli``): the
argument parser and :func:`main`. The commands are :mod:`rayflume._private.cli_commands` (re-exported
here under their names), what they print :mod:`rayflume._private.cli_format` (of which the status,
alerts and tap formatters are re-exported here).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from rayflume._private.cli_commands import (
    CONNECT_TIMEOUT_S,
    UsageError,
    cmd_alerts,
    cmd_convert,
    cmd_deploy,
    cmd_logs,
    cmd_pause,
    cmd_send,
    cmd_status,
    cmd_stop,
    cmd_tap,
    cmd_top,
    cmd_types,
    cmd_validate,
    cmd_volume,
)
from rayflume._private.cli_format import format_alerts, format_status, tap_lines
from rayflume.errors import ConfigError, RayflumeError

__all__ = ["CONNECT_TIMEOUT_S", "EXIT_BAD_INPUT", "UsageError", "build_parser", "cmd_alerts", "cmd_convert",
           "cmd_deploy", "cmd_logs", "cmd_pause", "cmd_send", "cmd_status", "cmd_stop", "cmd_tap", "cmd_top",
           "cmd_types", "cmd_validate", "cmd_volume", "format_alerts", "format_status", "main", "run", "tap_lines"]
EXIT_BAD_INPUT = 2


def _add_agent(p) -> None:
    p.add_argument("--agent", "-n", metavar="NAME",
                   help="with a Flume properties file: the agent to run (Flume's -n); the file is converted on "
                        "the fly and the properties it cannot carry over are printed as warnings")


def _json_object(text: str) -> dict:
    """An argument that must be a JSON object (argparse reports the ValueError's message)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): give an object such as '{{\"pip\": [\"requests\"]}}'")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object is needed, not {type(value).__name__}")
    return value


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("rayflume")
    except Exception:  # running from a source tree that is not installed
        from rayflume import __version__

        return __version__


def _add_topology(p, default_address: str | None, default: str | None = None) -> None:
    """A topology's ``name`` (optional where ``default`` says what leaving it out means) and the
    cluster it runs on (:func:`_add_connection`)."""
    p.add_argument("name", nargs="?" if default else None,
                   help=f"a topology's name (default: {default})" if default else "a topology's name")
    _add_connection(p, default_address)


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
    _add_topology(p, env_address, default="all")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=cmd_status)

    p = _subparser(sub, "alerts", "list a topology's firing and recent alerts (rules in its `alerts:` section)",
                   "  rayflume alerts weblogs --address HEAD:6379 --json")
    _add_topology(p, env_address)
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
    _add_topology(p, env_address, default="the only one deployed")
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
    _add_topology(p, env_address)
    p.add_argument("component", help="a source or sink of the topology")
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
    _add_topology(p, env_address)
    p.add_argument("--days", type=float, default=8.0, metavar="N",
                   help="the last N days (default 8, which is what is kept)")
    p.add_argument("--by-header", action="store_true",
                   help="one row per value of the topology's volume.header instead of per source")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    p.set_defaults(func=cmd_volume)

    p = _subparser(sub, "stop", "drain and remove a deployed topology",
                   "  rayflume stop weblogs --address HEAD:6379")
    _add_topology(p, env_address)
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
