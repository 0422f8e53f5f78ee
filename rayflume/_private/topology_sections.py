"""The topology-level sections: ``metrics`` (the endpoint and what it exports), ``volume`` (the header
counted per hour), ``alerts`` (parsed by :mod:`rayflume._private.alerts`) and ``runtime_env`` (Ray's
runtime environment for the topology's actors, and how a deploying call's is laid over it).

Each ``validate_*`` reads its section of the mapping, appends its problems as ``path: message`` and
sets the :class:`~rayflume.topology.Topology` fields of what is valid. Schema only, as all of
validation: the ``*_warnings`` functions are what looks at this machine or guesses at misspellings,
and they warn rather than fail.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, TypeGuard

from rayflume._private.topology_messages import describe_value, did_you_mean, unknown_key
from rayflume._private.topology_refs import ENV_NAME

if TYPE_CHECKING:
    from rayflume._private.topology_model import Topology

COUNTER_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# The fields of Ray's runtime environment a topology may set for its actors (see validate_runtime_env).
RUNTIME_ENV_KEYS = ("working_dir", "py_modules", "pip", "env_vars")


def _is_text(value) -> TypeGuard[str]:
    """Whether ``value`` is a string with more than spaces in it (YAML reads ``key:`` as null)."""
    return isinstance(value, str) and bool(value.strip())


def _is_whole(value, low: int, high: int) -> bool:
    """Whether ``value`` is a whole number from ``low`` to ``high`` (YAML's true and false are not)."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _text_or_error(value, problem: str, errors: list[str]) -> str | None:
    """``value`` without its outer spaces if it is text (see :func:`_is_text`); else None, with
    ``problem`` and what ``value`` is appended to ``errors``."""
    if not _is_text(value):
        errors.append(f"{problem}; got {describe_value(value)}")
        return None
    return value.strip()


def validate_metrics(data: dict, topo: Topology, errors: list[str]) -> None:
    """``metrics: {host (or bind), port, token or token_file}``. The token's value is never put in a
    message."""
    from rayflume._private.metrics import ENV_REF

    metrics = data.get("metrics")
    if metrics is None:
        return
    known = ("host", "bind", "port", "token", "token_file", "export")
    if not isinstance(metrics, dict):
        errors.append(f"metrics: expected a mapping with 'host' and 'port' (port null disables the endpoint), "
                      f"and optionally 'token' or 'token_file'; got {describe_value(metrics)}")
        return
    unknown = sorted(set(metrics) - set(known), key=str)
    for key in unknown:
        errors.append(f"metrics.{key}: {unknown_key(key, known, 'metrics has')}")
    if unknown:
        return
    if "host" in metrics and "bind" in metrics:
        errors.append("metrics.bind: `bind` is another name for `host`; give one of them, not both")
    key = "bind" if "bind" in metrics else "host"
    host = _text_or_error(metrics.get(key, topo.metrics_host),
                          f"metrics.{key}: expected the address to listen on, e.g. 127.0.0.1 (this machine only) or "
                          f"0.0.0.0 (every interface)", errors)
    if host is not None:
        topo.metrics_host = host
    port = metrics.get("port", topo.metrics_port)
    if port is not None and not _is_whole(port, 0, 65535):
        errors.append(f"metrics.port: {port!r} is not a port number (0 picks a free port, null disables)")
    topo.metrics_port = port
    if "export" in metrics:
        export = metrics["export"]
        if not isinstance(export, list) or not export:
            errors.append(f"metrics.export: expected a non-empty list of counter names to export, e.g. "
                          f"[EventReceivedCount, EventAcceptedCount, ChannelSize, EventDrainSuccessCount]; "
                          f"leave it out to export every counter; got {describe_value(export)}")
        else:
            bad = [i for i, c in enumerate(export) if not isinstance(c, str) or not COUNTER_RE.match(c)]
            for i in bad:
                errors.append(f"metrics.export[{i}]: expected a counter name such as EventReceivedCount; got "
                              f"{describe_value(export[i])}")
            if not bad:
                topo.metrics_export = tuple(dict.fromkeys(export))
    token, token_file = metrics.get("token"), metrics.get("token_file")
    if token is not None and token_file is not None:
        errors.append("metrics.token: give `token` or `token_file`, not both (token_file keeps the secret out of "
                      "the topology file)")
    elif token is not None:
        ref = ENV_REF.match(token.strip()) if isinstance(token, str) else None
        if not _is_text(token):
            if isinstance(token, (int, float)) and not isinstance(token, bool):
                what = "a number (quote it to make it a string)"  # not echoed: it is a secret
            else:
                what = "an empty string" if isinstance(token, str) else describe_value(token)
            errors.append(f"metrics.token: expected the bearer token as a string, or ${{env:NAME}} to read it from "
                          f"the environment variable NAME where the controller runs; got {what}")
        elif ref is None and "${" in token:
            errors.append("metrics.token: write ${env:NAME} (NAME: letters, digits and '_', not starting with a "
                          "digit) to read the token from an environment variable; anything else is taken as the "
                          "token itself and must not contain '${'")
        else:
            topo.metrics_token = token.strip()
    elif token_file is not None:
        if not _is_text(token_file):
            errors.append(f"metrics.token_file: expected the path of a file holding the token; got "
                          f"{describe_value(token_file)}")
        elif not os.path.isabs(token_file.strip()):
            errors.append(f"metrics.token_file: {token_file!r} is relative; give an absolute path (the controller "
                          f"reads it on its node, from a working directory of Ray's choosing)")
        else:
            topo.metrics_token_file = token_file.strip()


# Counters every built-in component of a kind reports (plus what the controller adds): a
# metrics.export name close to one of these but not one of them is likely misspelt.
COMMON_COUNTERS = ("EventReceivedCount", "EventAcceptedCount", "AppendBatchReceivedCount",
                   "AppendBatchAcceptedCount", "ChannelWriteFail", "EventReadFail", "GenericProcessingFail",
                   "OptionalChannelWriteFail", "EventDroppedByInterceptorCount", "EventRejectedCount",
                   "ConnectionCreatedCount", "ConnectionClosedCount", "ConnectionFailedCount", "BatchEmptyCount",
                   "BatchUnderflowCount", "BatchCompleteCount", "EventDrainAttemptCount", "EventDrainSuccessCount",
                   "EventWriteFail", "ChannelReadFail", "RollbackCount", "DuplicateDeliveryCount", "ChannelSize",
                   "ChannelCapacity", "ChannelFillPercentage", "EventPutAttemptCount", "EventPutSuccessCount",
                   "EventTakeAttemptCount", "EventTakeSuccessCount", "Restarts", "Unhealthy", "ChannelLost",
                   "StartTime", "StopTime", "Paused")


def metrics_export_warnings(topo: Topology) -> list[str]:
    """``metrics.export[i]: ...`` for each exported name that is not a common counter but close to
    one (a likely misspelling, which would export nothing). Not errors: components, custom ones
    above all, report counters of their own, and any name is accepted."""
    out = []
    for i, name in enumerate(topo.metrics_export or ()):
        if name not in COMMON_COUNTERS:
            hint = did_you_mean(name, COMMON_COUNTERS)
            if hint:
                out.append(f"metrics.export[{i}]: no built-in component reports {name!r}{hint} (a name no "
                           f"component reports exports nothing)")
    return out


def validate_volume(data: dict, topo: Topology, errors: list[str]) -> None:
    """``volume: {header: NAME, max_values: N}``: every source of every tier counts its accepted
    events per value of header NAME (after its interceptors), at most N values (1 to 10,000,
    default 200) per source, the rest as ``(other)``. Without it, volume is per source only."""
    volume = data.get("volume")
    if volume is None:
        return
    if not isinstance(volume, dict):
        errors.append(f"volume: expected a mapping such as {{header: category}}; got {describe_value(volume)}")
        return
    known = ("header", "max_values")
    for key in sorted(set(volume) - set(known), key=str):
        errors.append(f"volume.{key}: {unknown_key(key, known, 'volume has')}")
    if volume.get("header") is not None:
        header = _text_or_error(volume["header"], "volume.header: expected the name of the event header whose "
                                "values are counted, e.g. category", errors)
        if header is not None:
            topo.volume_header = header
    max_values = volume.get("max_values", topo.volume_max_values)
    if not _is_whole(max_values, 1, 10_000):
        errors.append(f"volume.max_values: expected a whole number from 1 to 10000 (header values counted per "
                      f"source; further values count as (other)); got {describe_value(max_values)}")
    else:
        topo.volume_max_values = max_values


def validate_alerts(data: dict, topo: Topology, errors: list[str]) -> None:
    """``alerts:``, parsed by :func:`rayflume._private.alerts.parse_alerts` into ``topo.alerts``; each
    rule's ``component`` is checked against ``topo.tiers``, which are validated before."""
    from rayflume._private.alerts import (  # here: alerts imports observe, which imports metrics
        check_components,
        parse_alerts,
    )

    topo.alerts = parse_alerts(data.get("alerts"), errors)
    check_components(topo.alerts, topo.tiers, errors)


def _is_local_path(value) -> bool:
    """Whether a runtime_env entry is a path on this machine (not a URI such as s3://b/code.zip)."""
    return _is_text(value) and "://" not in value


def merge_runtime_envs(topology_env: dict | None, deploy_env: dict | None) -> dict | None:
    """A topology's runtime_env with the deploying call's settings on top (``env_vars`` merged per
    variable, the call's winning; its other keys replace the topology's); None when neither has one."""
    if not topology_env and not deploy_env:
        return None
    merged = dict(topology_env or {})
    for key, value in (deploy_env or {}).items():
        merged[key] = {**merged.get(key, {}), **value} if key == "env_vars" else value
    return merged


def with_runtime_env(data, runtime_env: dict | None, base_dir: str | None = None):
    """A copy of the topology mapping ``data`` with ``runtime_env`` (a deploying call's, its local
    paths relative to ``base_dir``, default the current directory) laid over its own (see
    :func:`merge_runtime_envs`); ``data`` itself when ``runtime_env`` is empty."""
    if not runtime_env or not isinstance(data, dict):
        return data
    call_env = code_paths_from({"runtime_env": runtime_env}, base_dir or os.getcwd())["runtime_env"]
    return {**data, "runtime_env": merge_runtime_envs(data.get("runtime_env"), call_env)}


def runtime_env_code_dirs(runtime_env) -> list[str]:
    """The directories of this machine from which a topology's runtime_env ships Python code, as
    ``sys.path`` entries: ``working_dir`` itself, and the parent of each ``py_modules`` package
    directory or ``.py`` file. Entries that are URIs or that do not exist here are left out."""
    if not isinstance(runtime_env, dict):
        return []
    out = []
    working_dir = runtime_env.get("working_dir")
    if _is_local_path(working_dir) and os.path.isdir(os.path.expanduser(working_dir)):
        out.append(os.path.abspath(os.path.expanduser(working_dir)))
    modules = runtime_env.get("py_modules")
    for entry in modules if isinstance(modules, list) else []:
        if not _is_local_path(entry):
            continue
        local = os.path.abspath(os.path.expanduser(entry)).rstrip(os.sep)
        if os.path.isdir(local) or (local.endswith(".py") and os.path.isfile(local)):
            out.append(os.path.dirname(local))
    return list(dict.fromkeys(out))


def code_paths_from(data, base_dir: str | None):
    """A copy of a topology mapping whose runtime_env ``working_dir`` and ``py_modules`` local
    paths, when relative, are made relative to ``base_dir`` (the directory of the file it was read
    from; Ray would take them relative to wherever the deploying process runs)."""
    env = data.get("runtime_env") if isinstance(data, dict) else None
    if not base_dir or not isinstance(env, dict):
        return data

    def anchored(value):
        if not _is_local_path(value):
            return value
        value = os.path.expanduser(value)
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(base_dir, value))

    env = dict(env)
    if "working_dir" in env:
        env["working_dir"] = anchored(env["working_dir"])
    if isinstance(env.get("py_modules"), list):
        env["py_modules"] = [anchored(m) for m in env["py_modules"]]
    return {**data, "runtime_env": env}


def validate_runtime_env(data: dict, topo: Topology, errors: list[str]) -> None:
    """``runtime_env: {working_dir, py_modules, pip, env_vars}``: Ray's runtime environment for the
    topology's controller and every component actor; how one's own components reach the nodes.
    Schema only: whether the paths exist is checked where the topology is deployed (the deploying
    process uploads them) and by :func:`local_environment_warnings`."""
    env = data.get("runtime_env")
    if env is None:
        return
    what_for = ("Ray's runtime environment for the topology's actors: working_dir (a directory of your code), "
                "py_modules (a list of package directories), pip (a list of packages) or env_vars (a mapping)")
    if not isinstance(env, dict):
        errors.append(f"runtime_env: expected a mapping with {what_for}; got {describe_value(env)}")
        return
    ok = True
    for key in sorted(set(env) - set(RUNTIME_ENV_KEYS), key=str):
        errors.append(f"runtime_env.{key}: {unknown_key(key, RUNTIME_ENV_KEYS, 'runtime_env has')}")
        ok = False
    working_dir = env.get("working_dir")
    if "working_dir" in env and not _is_text(working_dir):
        errors.append(f"runtime_env.working_dir: expected the path of a directory holding your modules (relative "
                      f"to the topology file), or a URI such as s3://bucket/code.zip; got "
                      f"{describe_value(working_dir)}")
        ok = False
    modules = env.get("py_modules")
    if "py_modules" in env:
        if not isinstance(modules, list) or not modules:
            example = modules if _is_text(modules) else "./my_components"
            errors.append(f"runtime_env.py_modules: expected a non-empty list of package directories, .py files "
                          f"or URIs, e.g. [{example}]; got {describe_value(modules)}")
            ok = False
        else:
            for i, entry in enumerate(modules):
                if not _is_text(entry):
                    errors.append(f"runtime_env.py_modules[{i}]: expected the path of a package directory, a .py "
                                  f"file or a URI; got {describe_value(entry)}")
                    ok = False
    pip = env.get("pip")
    if "pip" in env:
        if isinstance(pip, list):
            for i, package in enumerate(pip):
                if not _is_text(package):
                    errors.append(f"runtime_env.pip[{i}]: expected a requirement such as 'requests>=2'; got "
                                  f"{describe_value(package)}")
                    ok = False
        elif not _is_text(pip) and not (isinstance(pip, dict) and "packages" in pip):
            errors.append(f"runtime_env.pip: expected a list of requirements, e.g. [requests>=2], the path of a "
                          f"requirements.txt, or a mapping with `packages`; got {describe_value(pip)}")
            ok = False
    env_vars = env.get("env_vars")
    if "env_vars" in env:
        if not isinstance(env_vars, dict):
            errors.append(f"runtime_env.env_vars: expected a mapping of variable names to string values, e.g. "
                          f"{{MY_SETTING: '1'}}; got {describe_value(env_vars)}")
            ok = False
        else:
            for var, value in env_vars.items():
                if not isinstance(var, str) or not ENV_NAME.match(var):
                    errors.append(f"runtime_env.env_vars.{var}: not an environment variable name (letters, "
                                  f"digits and '_', not starting with a digit)")
                    ok = False
                elif not isinstance(value, str):
                    errors.append(f"runtime_env.env_vars.{var}: Ray takes string values only; quote it "
                                  f"({var}: \"{value}\"); got {describe_value(value)}")
                    ok = False
    if ok:
        topo.runtime_env = dict(env)


def runtime_env_warnings(runtime_env) -> list[str]:
    """Local paths of a topology's runtime_env that do not exist on this machine, from which the
    deploying process uploads them, as ``path: problem`` messages."""
    if not isinstance(runtime_env, dict):
        return []
    out = []
    working_dir = runtime_env.get("working_dir")
    if _is_local_path(working_dir) and not os.path.isdir(os.path.expanduser(working_dir)):
        out.append(f"runtime_env.working_dir: {working_dir!r} is not a directory on this machine; deploying from "
                   f"here would fail to upload it")
    modules = runtime_env.get("py_modules")
    for i, entry in enumerate(modules if isinstance(modules, list) else []):
        if _is_local_path(entry) and not os.path.exists(os.path.expanduser(entry)):
            out.append(f"runtime_env.py_modules[{i}]: {entry!r} does not exist on this machine; deploying from "
                       f"here would fail to upload it")
    return out
