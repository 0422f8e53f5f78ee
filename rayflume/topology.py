"""Topology files: YAML -> validated, typed :class:`Topology`.

A topology is one or more tiers. A file with ``sources``/``channels``/``sinks`` at the top level
is a single tier (named ``""``); a file with ``tiers:`` groups them per tier, each with a
placement (``per_node`` on matching nodes, or ``replicas: N`` spread over matching nodes).

Validation collects every problem with its path before failing (``sources.tail.channels[1]:
unknown channel 'disk'``), in passes: each component against its typed config, then each tier's
graph (unknown, unused or undrained channels, sinks in two groups, batch sizes above a channel's
transaction capacity, duplicate names), then the tier graph (hops to unknown tiers, cycles).
Nothing starts until all pass.

Validation checks schema and graph only: it never looks at the machine it runs on (installed
commands, directories, libraries, certificate files), because a topology is validated on the
laptop that deploys it and in the controller, while its components run on other nodes. Those
checks run in each component's own actor, on its node, at start, where a failure is that
component's status error and is retried. :func:`local_environment_warnings` runs the same checks
on this machine, for ``rayflume validate`` to show as warnings.

YAML is read with ``yaml.safe_load`` semantics only, and duplicate keys are an error rather
than silently overwritten. The loader also records the line of every mapping key and list item,
so each problem in a file or text names its line (``sources.tail.channels: ... (line 7)``).
Messages are written for a Flume user's first mistakes: unknown keys suggest the declared key
meant (``transactionCapacity`` -> ``transaction_capacity``), type errors say what was expected and
what was given.

What a Flume user brings along is accepted as it is:

- a Flume properties file, given the agent to run (``load_topology(path, agent="a1")``, Flume's
  ``-n a1``), is converted by :mod:`rayflume.flume_conf.convert`; without an agent it is refused
  with directions naming the agents in the file;
- Flume's type names (``TAILDIR``, ``seq``, ``org.apache.flume.sink.hdfs.HDFSEventSink``) stand for
  rayflume's (see :mod:`rayflume.registry`); a component's config carries rayflume's name;
- name lists may be written Flume's way, space-separated (``channels: c1 c2``), in a source's
  ``channels``, a selector's channel lists and a sink group's ``sinks``;
- a component of one's own is named like a Flume class name, by import path
  (``type: my_components:NumberedSourceConfig``), by a ``rayflume.components`` entry point of an
  installed distribution, or (from Python) by the config class itself; see
  :mod:`rayflume.registry` for what the class must be. Its module reaches the cluster through the
  topology's ``runtime_env`` (``working_dir``, ``py_modules``, ``pip``, ``env_vars``; relative
  paths are relative to the topology file), applied to its controller and every component actor;
  when validating, a module not importable as is is also looked for in the runtime_env's local
  directories, so a topology validates where it is deployed from as it will run;
- ``${env:NAME}`` and ``${file:PATH}`` in any value are substituted when a file or text is loaded
  (:func:`substitute_references`), except in the keys a component reads itself on its node (the http
  source's tokens, ``metrics.token``): those stay as written, so a secret never enters the stored
  topology.

The passes live in ``rayflume._private``, one concern a module: ``topology_yaml`` (text ->
mapping, with lines; a Flume properties file told apart and converted), ``topology_refs``
(``${env:...}``, ``${file:...}``), ``topology_components`` (one component against the registry),
``topology_tiers`` (tiers, placement, sink groups), ``topology_graph`` (unknown, unused and
undrained channels; hops and cycles), ``topology_sections`` (metrics, volume, alerts,
runtime_env), ``topology_messages`` (the wording shared by all) and ``topology_model`` (the
classes). This module loads, runs the passes in order, and re-exports (``__all__``) what callers
import from it.
"""
from __future__ import annotations

import os

from rayflume import registry
from rayflume._private.topology_components import build_config, with_nested
from rayflume._private.topology_messages import describe_value, suggest_key, unknown_key, with_line
from rayflume._private.topology_model import (
    DEFAULT_METRICS_PORT,
    LABEL_KEY,
    NAME_RE,
    SECTIONS,
    TIER_KEYS,
    TOP_LEVEL_KEYS,
    Placement,
    SinkGroup,
    Tier,
    Topology,
)
from rayflume._private.topology_refs import REFERENCE_RE, substitute_references
from rayflume._private.topology_sections import (
    COMMON_COUNTERS,
    COUNTER_RE,
    RUNTIME_ENV_KEYS,
    code_paths_from,
    merge_runtime_envs,
    metrics_export_warnings,
    runtime_env_code_dirs,
    runtime_env_warnings,
    validate_alerts,
    validate_metrics,
    validate_runtime_env,
    validate_volume,
    with_runtime_env,
)
from rayflume._private.topology_tiers import split_name_lists, validate_components
from rayflume._private.topology_yaml import (
    format_path,
    from_flume_properties,
    is_flume_properties,
    looks_like_flume_properties,
    parse_yaml,
    parse_yaml_with_lines,
)
from rayflume.errors import ConfigError, read_config_file

__all__ = ["COMMON_COUNTERS", "COUNTER_RE", "DEFAULT_METRICS_PORT", "LABEL_KEY", "NAME_RE", "REFERENCE_RE",
           "RUNTIME_ENV_KEYS", "SECTIONS", "TIER_KEYS", "TOP_LEVEL_KEYS", "Placement", "SinkGroup", "Tier", "Topology",
           "build_config", "code_paths_from", "describe_value", "format_path", "is_flume_properties",
           "load_topology", "loads_topology", "local_environment_warnings", "looks_like_flume_properties",
           "merge_runtime_envs", "metrics_export_warnings", "parse_yaml", "parse_yaml_with_lines",
           "runtime_env_code_dirs", "runtime_env_warnings", "substitute_references", "suggest_key", "unknown_key",
           "validate", "with_runtime_env"]
# The name the component actors import to rebuild a source's interceptors and selector with.
_with_nested = with_nested


def load_topology(path: str | os.PathLike, agent: str | None = None, warnings: list[str] | None = None,
                  runtime_env: dict | None = None) -> Topology:
    """Read and validate a topology file: YAML, or agent ``agent`` of a Flume properties file
    (converted; the properties it could not carry over are appended to ``warnings``). References
    (``${env:NAME}``, ``${file:PATH}``, relative to the file's directory) are substituted here, on
    this machine. ``runtime_env`` is laid over the file's (see :func:`with_runtime_env`). Raises
    ConfigError listing every problem, each with its line in the file where the path can be found
    there."""
    path = os.fspath(path)
    text = read_config_file(path, "the topology file")
    return _load_text(text, path, agent, warnings, os.path.dirname(os.path.abspath(path)), runtime_env)


def loads_topology(text: str, agent: str | None = None, warnings: list[str] | None = None) -> Topology:
    """Validate topology text (YAML, or with ``agent`` a Flume properties text); problems name
    their line in ``text``. See :func:`load_topology`."""
    return _load_text(text, "<topology>", agent, warnings, None)


def _load_text(text: str, source: str, agent: str | None, warnings: list[str] | None,
               base_dir: str | None, runtime_env: dict | None = None) -> Topology:
    if agent is not None and is_flume_properties(text, source):
        data, lines = from_flume_properties(text, source, agent, warnings, base_dir), {}
    else:
        if agent is not None:
            raise ConfigError([f"{source}: --agent names an agent of a Flume properties file, and this is a "
                               f"rayflume topology (YAML); remove --agent"])
        data, lines = parse_yaml_with_lines(text, source=source)
    errors: list[str] = []
    data = with_runtime_env(code_paths_from(data, base_dir), runtime_env)
    with registry.code_dirs(runtime_env_code_dirs(data.get("runtime_env"))):
        data = substitute_references(data, base_dir=base_dir, errors=errors)
    if errors:
        name = data.get("name") if isinstance(data.get("name"), str) else None
        raise ConfigError([with_line(e, lines) for e in errors], topology=name or source)
    return validate(data, source=source, lines=lines)


def local_environment_warnings(topo: Topology) -> list[str]:
    """What this machine lacks for the topology's components, as ``path: problem`` messages
    (``sources.tail: exec source: `command`: 'foo' is not installed on this node ...``); empty
    when nothing is missing.

    These are the checks of each component config's ``check()`` (commands, directories,
    libraries, certificate and token files), run here. They are warnings, not errors: the
    components run them again on their own nodes at start, and a topology whose paths exist only
    on those nodes is valid. Reads the local file system and environment; changes nothing.
    """
    out: list[str] = runtime_env_warnings(topo.runtime_env)
    for tier_name, tier in topo.tiers.items():
        prefix = f"tiers.{tier_name}." if tier_name else ""
        for section in ("sources", "channels", "sinks"):
            for comp_name, config in getattr(tier, section).items():
                check = getattr(config, "check", None)
                if callable(check):
                    out.extend(f"{prefix}{section}.{comp_name}: {msg}" for msg in check())
    return out


def validate(data: dict, source: str = "<topology>", lines: dict[str, int] | None = None) -> Topology:
    """Validate a parsed topology mapping. Raises ConfigError listing every problem as
    ``path: message``, with `` (line N)`` appended where ``lines`` (from
    :func:`parse_yaml_with_lines`) know the path. ``data`` is not modified.

    Schema and graph only: nothing on this machine is checked (see the module docstring and
    :func:`local_environment_warnings`), so the result is the same on every machine.

    A source or sink whose ``batch_size`` is not set takes at most the smallest
    ``transaction_capacity`` of its channels; the effective value is in its typed config and in
    ``Tier.raw`` (what actors receive).
    """
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: a topology is a mapping with name, sources, channels and sinks; "
                           f"got {describe_value(data)}"])
    name = data.get("name")
    if name is None:
        errors.append("name: required key is missing; give the topology a name")
        name = ""
    elif not isinstance(name, str) or not NAME_RE.match(name):
        errors.append(f"name: {name!r} is not a valid name; use letters, digits, '_', '-' and '.'")
        name = str(name)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            errors.append(f"{key}: {unknown_key(key, TOP_LEVEL_KEYS, 'a topology has')}")
    data = split_name_lists(data)
    topo = Topology(name=name, raw=data)
    with registry.code_dirs(runtime_env_code_dirs(data.get("runtime_env"))):
        validate_components(data, topo, errors)
    validate_metrics(data, topo, errors)
    validate_volume(data, topo, errors)
    validate_runtime_env(data, topo, errors)
    validate_alerts(data, topo, errors)  # after the tiers: its rules name their components
    if errors:
        raise ConfigError([with_line(e, lines or {}) for e in errors], topology=name or source)
    return topo
