"""Topology files: YAML -> validated, typed :class:`Topology`.

A topology is one or more tiers. A file with ``sources``/``channels``/``sinks`` at the top level
is a single tier (named ``""``); a file with ``tiers:`` groups them per tier, each with a
placement (``per_node`` on matching nodes, or ``replicas: N`` spread over matching nodes).

Validation collects every problem with its path before failing (``sources.tail.channels[1]:
unknown channel 'disk'``), in passes: each component against its typed config, then each tier's
graph (unknown, unused or undrained channels, sinks in two groups, batch sizes above a channel's
transaction capacity, duplicate names), then the tier graph (hops to unknown tiers, cycles).
Nothing starts until all pass.

YAML is read with ``yaml.safe_load`` semantics only, and duplicate keys are an error rather
than silently overwritten.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from rayflume import registry
from rayflume.errors import ConfigError

SECTIONS = {"sources": "source", "channels": "channel", "sinks": "sink"}
TIER_KEYS = {"sources", "channels", "sinks", "sink_groups"}
TOP_LEVEL_KEYS = {"name", "metrics", "tiers"} | TIER_KEYS
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEFAULT_METRICS_PORT = 41414
LABEL_KEY = "tier"  # `label: agent` means the node label tier=agent


@dataclass
class SinkGroup:
    name: str
    sinks: list[str]
    processor: Any  # a ProcessorConfig
    raw_processor: dict


@dataclass
class Placement:
    """Where a tier's instances run.

    ``mode`` is ``per_node`` (one instance on every alive node matching the selector, like a
    daemon set), ``replicas`` (``replicas`` instances spread over matching nodes), or ``single``
    (a single-tier topology: one instance, placed by Ray).
    """

    mode: str = "single"
    replicas: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    resource: str | None = None

    def matches(self, node: dict) -> bool:
        """Whether a ``ray.nodes()`` entry can host this tier."""
        labels = node.get("Labels") or {}
        if any(labels.get(k) != v for k, v in self.labels.items()):
            return False
        if self.resource and not (node.get("Resources") or {}).get(self.resource):
            return False
        return True

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.labels.items()]
        if self.resource:
            parts.append(f"resource {self.resource}")
        return " and ".join(parts) if parts else "any node"


@dataclass
class Tier:
    """One tier's components. ``raw`` keeps each component's YAML mapping, which is what actors
    receive (they rebuild the typed config on their side)."""

    name: str
    placement: Placement = field(default_factory=Placement)
    sources: dict[str, Any] = field(default_factory=dict)
    channels: dict[str, Any] = field(default_factory=dict)
    sinks: dict[str, Any] = field(default_factory=dict)
    sink_groups: dict[str, SinkGroup] = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    def groups(self) -> dict[str, list[str]]:
        """Every sink runner: explicit groups, plus one implicit group per ungrouped sink."""
        out = {g.name: list(g.sinks) for g in self.sink_groups.values()}
        grouped = {s for g in self.sink_groups.values() for s in g.sinks}
        for sink in self.sinks:
            if sink not in grouped:
                out[sink] = [sink]
        return out

    def hops(self) -> dict[str, str]:
        """``{sink name: target tier}`` for this tier's ``rayflume`` sinks."""
        return {n: c.tier for n, c in self.sinks.items() if getattr(c, "tier", None)}


@dataclass
class Topology:
    """A validated topology: its tiers (one, named ``""``, for a single-tier file) and settings."""

    name: str
    tiers: dict[str, Tier] = field(default_factory=dict)
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = DEFAULT_METRICS_PORT
    raw: dict = field(default_factory=dict)

    @property
    def tiered(self) -> bool:
        return "" not in self.tiers

    def _single(self) -> Tier:
        if self.tiered:
            raise AttributeError(f"topology '{self.name}' has tiers; use topology.tiers[name]")
        return self.tiers[""]

    # single-tier conveniences
    sources = property(lambda self: self._single().sources)
    channels = property(lambda self: self._single().channels)
    sinks = property(lambda self: self._single().sinks)
    sink_groups = property(lambda self: self._single().sink_groups)

    def groups(self) -> dict[str, list[str]]:
        return self._single().groups()


# -- YAML ------------------------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys instead of keeping the last one."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicate_keys: list[str] = []

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                mark = key_node.start_mark
                self.duplicate_keys.append(f"line {mark.line + 1}: duplicate key '{key}'")
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: str = "<topology>") -> dict:
    loader = _UniqueKeyLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{source}: invalid YAML{where}: {problem}; fix the file's syntax"]) from None
    finally:
        loader.dispose()
    if loader.duplicate_keys:
        raise ConfigError([f"{source}: {d}; names must be unique" for d in loader.duplicate_keys])
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: a topology is a YAML mapping with name, sources, channels and "
                           f"sinks; got {type(data).__name__}"])
    return data


def load_topology(path: str | os.PathLike) -> Topology:
    """Read and validate a topology file. Raises ConfigError listing every problem."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the topology file: {exc.strerror}"]) from None
    return validate(parse_yaml(text, source=path), source=path)


def loads_topology(text: str) -> Topology:
    return validate(parse_yaml(text))


# -- component validation --------------------------------------------------------------------------
def _format_loc(prefix: str, loc) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _pydantic_errors(prefix: str, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling against the component's documented keys"
        elif err["type"] == "missing":
            msg = "required key is missing"
        out.append(f"{_format_loc(prefix, err['loc'])}: {msg}")
    return out


def build_config(kind: str, raw: dict, path: str, errors: list[str]):
    """Validate one component mapping; returns its typed config, or None after adding errors."""
    if not isinstance(raw, dict):
        errors.append(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
        return None
    if "type" in raw and raw["type"] is None:
        # YAML reads `type: null` as None; the only sensible meaning is the `null` component.
        raw = {**raw, "type": "null"}
    type_name = raw.get("type")
    if not isinstance(type_name, str):
        what = "required key is missing" if type_name is None else "must be a string"
        errors.append(f"{path}.type: {what}; known {kind} types: {', '.join(registry.known_types(kind))}")
        return None
    cls = registry.lookup(kind, type_name)
    try:
        if cls is not None:
            config = cls(**raw)
        elif kind == "interceptor" and ":" in type_name:
            from rayflume.interceptors.callable import resolve_callable_interceptor

            config = resolve_callable_interceptor(raw)
        else:
            hint = " or a Python import path 'module:callable'" if kind == "interceptor" else ""
            errors.append(f"{path}.type: unknown {kind} type '{type_name}'; known types: "
                          f"{', '.join(registry.known_types(kind))}{hint}")
            return None
    except ValidationError as exc:
        errors.extend(_pydantic_errors(path, exc))
        return None
    except (ValueError, TypeError, ImportError) as exc:
        errors.append(f"{path}: {exc}")
        return None
    check = getattr(config, "check", None)
    if callable(check):
        errors.extend(f"{path}: {msg}" for msg in check())
    return config


def _with_nested(config, path: str, errors: list[str]):
    """Resolve a source's interceptor and selector mappings into typed configs."""
    interceptors = []
    for i, raw in enumerate(config.interceptors):
        built = build_config("interceptor", raw, f"{path}.interceptors[{i}]", errors)
        if built is not None:
            interceptors.append(built)
    selector = build_config("selector", config.selector, f"{path}.selector", errors)
    return config.model_copy(update={"interceptors": interceptors, "selector": selector})


def validate(data: dict, source: str = "<topology>") -> Topology:
    """Validate a parsed topology mapping. Raises ConfigError listing every problem."""
    errors: list[str] = []
    name = data.get("name")
    if name is None:
        errors.append("name: required key is missing; give the topology a name")
        name = ""
    elif not isinstance(name, str) or not NAME_RE.match(name):
        errors.append(f"name: {name!r} is not a valid name; use letters, digits, '_', '-' and '.'")
        name = str(name)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            errors.append(f"{key}: unknown top-level key; expected one of {', '.join(sorted(TOP_LEVEL_KEYS))}")
    topo = Topology(name=name, raw=data)
    if "tiers" in data:
        for key in sorted(TIER_KEYS & set(data)):
            errors.append(f"{key}: with tiers, components go under a tier (tiers.<tier>.{key})")
        tiers = data.get("tiers")
        if not isinstance(tiers, dict) or not tiers:
            errors.append("tiers: expected a mapping of tier names to {placement, sources, channels, sinks}")
            tiers = {}
        for tier_name, tier_data in tiers.items():
            prefix = f"tiers.{tier_name}."
            if not isinstance(tier_name, str) or not NAME_RE.match(tier_name):
                errors.append(f"tiers.{tier_name}: invalid tier name; use letters, digits, '_', '-' and '.'")
                continue
            if not isinstance(tier_data, dict):
                errors.append(f"tiers.{tier_name}: expected a mapping with placement, sources, channels, sinks")
                continue
            for key in sorted(set(tier_data) - TIER_KEYS - {"placement"}):
                errors.append(f"{prefix}{key}: unknown key; a tier has placement, sources, channels, sinks and "
                              f"sink_groups")
            tier = _validate_tier(tier_name, tier_data, prefix, errors)
            tier.placement = _validate_placement(tier_data.get("placement"), f"{prefix}placement", errors)
            topo.tiers[tier_name] = tier
        _validate_hops(topo, errors)
    else:
        topo.tiers[""] = _validate_tier("", data, "", errors)
        for tier_sink, cfg in topo.tiers[""].sinks.items():
            if getattr(cfg, "tier", None):
                errors.append(f"sinks.{tier_sink}.tier: a rayflume sink sends to another tier; it needs a "
                              f"topology with tiers")
    _validate_metrics(data, topo, errors)
    if errors:
        raise ConfigError(errors, topology=name or source)
    return topo


def _validate_tier(tier_name: str, data: dict, prefix: str, errors: list[str]) -> Tier:
    tier = Tier(name=tier_name, raw={k: data.get(k) or {} for k in TIER_KEYS})
    for section, kind in SECTIONS.items():
        entries = data.get(section) or {}
        if not isinstance(entries, dict):
            errors.append(f"{prefix}{section}: expected a mapping of {kind} names to their settings")
            continue
        for comp_name, raw in entries.items():
            path = f"{prefix}{section}.{comp_name}"
            if not isinstance(comp_name, str) or not NAME_RE.match(comp_name):
                errors.append(f"{path}: invalid name; use letters, digits, '_', '-' and '.'")
                continue
            config = build_config(kind, raw, path, errors)
            if config is not None and kind == "source":
                config = _with_nested(config, path, errors)
            if config is not None:
                getattr(tier, section)[comp_name] = config
    # A channel that others can fill (a Kafka topic) or that is a destination itself (null,
    # Kafka) lets a tier have no source or no sink.
    optional = {"sources": any(not c.needs_source for c in tier.channels.values()),
                "sinks": any(not c.needs_sink for c in tier.channels.values())}
    for section, kind in SECTIONS.items():
        if not data.get(section) and not optional.get(section):
            errors.append(f"{prefix}{section}: at least one {kind} is required")
    _validate_groups(data, tier, prefix, errors)
    _validate_graph(data, tier, prefix, errors)
    return tier


def _validate_placement(raw, path: str, errors: list[str]) -> Placement:
    if raw is None:
        return Placement(mode="replicas", replicas=1)
    if not isinstance(raw, dict):
        errors.append(f"{path}: expected {{per_node: {{label: X}}}} or {{replicas: N, label: X}}")
        return Placement()
    for key in sorted(set(raw) - {"per_node", "replicas", "label", "labels", "resource"}):
        errors.append(f"{path}.{key}: unknown key; placement has per_node, or replicas with label, labels "
                      f"or resource")
    if ("per_node" in raw) == ("replicas" in raw):
        errors.append(f"{path}: give exactly one of per_node or replicas")
        return Placement()
    if "per_node" in raw:
        selector, where = (raw["per_node"] if isinstance(raw["per_node"], dict) else {}), f"{path}.per_node"
        placement = Placement(mode="per_node")
    else:
        replicas = raw["replicas"]
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            errors.append(f"{path}.replicas: must be a whole number of at least 1")
            replicas = 1
        selector, where = raw, path
        placement = Placement(mode="replicas", replicas=replicas)
    label, labels, resource = selector.get("label"), selector.get("labels") or {}, selector.get("resource")
    if label is not None:
        labels = {LABEL_KEY: str(label), **labels}
    if not isinstance(labels, dict):
        errors.append(f"{where}.labels: expected a mapping of node label keys to values")
        labels = {}
    placement.labels = {str(k): str(v) for k, v in labels.items()}
    placement.resource = resource
    return placement


def _validate_hops(topo: Topology, errors: list[str]) -> None:
    """Every rayflume sink targets a known other tier with a rayflume source; no cycles."""
    edges: dict[str, set[str]] = {t: set() for t in topo.tiers}
    for tier_name, tier in topo.tiers.items():
        for sink_name, target in tier.hops().items():
            path = f"tiers.{tier_name}.sinks.{sink_name}.tier"
            if target not in topo.tiers:
                errors.append(f"{path}: unknown tier '{target}'; tiers: {', '.join(sorted(topo.tiers))}")
                continue
            if target == tier_name:
                errors.append(f"{path}: a tier cannot send to itself")
                continue
            receivers = [n for n, c in topo.tiers[target].sources.items() if getattr(c, "receives_hops", False)]
            wanted = getattr(tier.sinks[sink_name], "source", None)
            if not receivers:
                errors.append(f"{path}: tier '{target}' has no rayflume source to receive from this sink; add "
                              f"one (type: rayflume)")
            elif wanted and wanted not in receivers:
                errors.append(f"tiers.{tier_name}.sinks.{sink_name}.source: tier '{target}' has no rayflume "
                              f"source named '{wanted}'; it has {', '.join(receivers)}")
            elif not wanted and len(receivers) > 1:
                errors.append(f"tiers.{tier_name}.sinks.{sink_name}.source: tier '{target}' has several rayflume "
                              f"sources ({', '.join(receivers)}); name one")
            edges[tier_name].add(target)
    # cycles: depth-first search over the tier graph
    state: dict[str, int] = {}

    def visit(t, trail):
        state[t] = 1
        for nxt in sorted(edges.get(t, ())):
            if state.get(nxt) == 1:
                errors.append(f"tiers: the hops form a cycle: {' -> '.join(trail + [nxt])}")
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[t] = 2

    for t in sorted(edges):
        if t not in state:
            visit(t, [t])


def _validate_groups(data: dict, topo: Tier, prefix: str, errors: list[str]) -> None:
    groups = data.get("sink_groups") or {}
    if not isinstance(groups, dict):
        errors.append(f"{prefix}sink_groups: expected a mapping of group names to {{sinks, processor}}")
        return
    owner: dict[str, str] = {}
    for gname, raw in groups.items():
        path = f"{prefix}sink_groups.{gname}"
        if not isinstance(raw, dict):
            errors.append(f"{path}: expected a mapping with 'sinks' and 'processor'")
            continue
        unknown = set(raw) - {"sinks", "processor"}
        for key in sorted(unknown):
            errors.append(f"{path}.{key}: unknown key; a sink group has 'sinks' and 'processor'")
        sinks = raw.get("sinks")
        if not isinstance(sinks, list) or not sinks:
            errors.append(f"{path}.sinks: required: a non-empty list of sink names")
            continue
        for i, s in enumerate(sinks):
            if s not in (data.get("sinks") or {}):
                errors.append(f"{path}.sinks[{i}]: unknown sink '{s}'")
            elif s in owner:
                errors.append(f"{path}.sinks[{i}]: sink '{s}' is already in group '{owner[s]}'; a sink "
                              f"belongs to at most one group")
            else:
                owner[s] = gname
        raw_proc = raw.get("processor") or {"type": "failover" if len(sinks) > 1 else "default"}
        proc = build_config("processor", raw_proc, f"{path}.processor", errors)
        if proc is None:
            continue
        for s in sorted(proc.sinks_named() - set(sinks)):
            errors.append(f"{path}.processor: names sink '{s}', which is not in the group's sinks")
        if proc.type == "default" and len(sinks) != 1:
            errors.append(f"{path}.processor.type: 'default' drives exactly one sink; use failover or "
                          f"load_balance for {len(sinks)} sinks")
        topo.sink_groups[gname] = SinkGroup(gname, list(sinks), proc, raw_proc)


def _validate_metrics(data: dict, topo: Topology, errors: list[str]) -> None:
    metrics = data.get("metrics")
    if metrics is None:
        return
    if not isinstance(metrics, dict) or set(metrics) - {"host", "port"}:
        errors.append("metrics: expected a mapping with 'host' and 'port' (port null disables the endpoint)")
        return
    topo.metrics_host = metrics.get("host", topo.metrics_host)
    port = metrics.get("port", topo.metrics_port)
    if port is not None and (not isinstance(port, int) or not 0 <= port <= 65535):
        errors.append(f"metrics.port: {port!r} is not a port number (0 picks a free port, null disables)")
    topo.metrics_port = port


def _validate_graph(data: dict, topo: Tier, prefix: str, errors: list[str]) -> None:
    raw_sinks = data.get("sinks") or {}
    channel_names = set((data.get("channels") or {}))
    written, drained = set(), set()

    for sname, raw in (data.get("sources") or {}).items():
        # Channel references are checked from the raw mapping, so they are reported even when
        # the source's own keys had errors.
        listed = raw.get("channels") if isinstance(raw, dict) else None
        listed = [c for c in listed if isinstance(c, str)] if isinstance(listed, list) else []
        for i, ch in enumerate(listed):
            if ch not in channel_names:
                errors.append(f"{prefix}sources.{sname}.channels[{i}]: unknown channel '{ch}'")
            written.add(ch)
        if len(set(listed)) != len(listed):
            errors.append(f"{prefix}sources.{sname}.channels: a channel is listed twice")
        cfg = topo.sources.get(sname)
        if cfg is None:
            continue
        if cfg.selector is not None:
            for ch in sorted(cfg.selector.channels_named() - set(cfg.channels)):
                errors.append(f"{prefix}sources.{sname}.selector: names channel '{ch}', which is not in the "
                              f"source's channels")
        for ch in cfg.channels:
            chan = topo.channels.get(ch)
            if chan is not None and cfg.batch_size > chan.transaction_capacity:
                errors.append(f"{prefix}sources.{sname}.batch_size: {cfg.batch_size} exceeds transaction_capacity "
                              f"{chan.transaction_capacity} of channel '{ch}'; lower batch_size or raise "
                              f"transaction_capacity")
    for sname, raw in raw_sinks.items():
        ch = raw.get("channel") if isinstance(raw, dict) else None
        if ch is not None and ch not in channel_names:
            errors.append(f"{prefix}sinks.{sname}.channel: unknown channel '{ch}'")
        drained.add(ch)
        cfg = topo.sinks.get(sname)
        chan = topo.channels.get(ch)
        if cfg is not None and chan is not None and cfg.batch_size > chan.transaction_capacity:
            errors.append(f"{prefix}sinks.{sname}.batch_size: {cfg.batch_size} exceeds transaction_capacity "
                          f"{chan.transaction_capacity} of channel '{ch}'; lower batch_size or raise "
                          f"transaction_capacity")
    for ch in sorted(channel_names):
        cfg = topo.channels.get(ch)
        if ch not in written and ch not in drained and (cfg is None or cfg.needs_source):
            errors.append(f"{prefix}channels.{ch}: unused channel: no source writes to it and no sink drains it")
        elif ch not in drained and getattr(cfg, "needs_sink", True):
            errors.append(f"{prefix}channels.{ch}: no sink drains this channel; it would fill up and stop its "
                          f"sources. Add a sink with channel: {ch}")

    seen: dict[str, str] = {}
    for section in ("sources", "channels", "sinks", "sink_groups"):
        for n in (data.get(section) or {}):
            if n in seen and seen[n] != section:
                errors.append(f"{prefix}{section}.{n}: the name '{n}' is also used in {seen[n]}; names must be "
                              f"unique across sources, channels, sinks and sink groups")
            seen.setdefault(n, section)
