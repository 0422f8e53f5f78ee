"""What a validated topology is: the :class:`Topology` and its tiers (:class:`Tier`, with its
:class:`Placement` and :class:`SinkGroup`), and the names of a topology file's sections.

Plain data, built by :func:`rayflume.topology.validate` (and the ``topology_*`` modules it runs) and
read by the controller, the planner and the API. Every class here is public as
``rayflume.topology.<Name>``, where users import it from; it lives here so that the validation
modules can build it without importing :mod:`rayflume.topology`, which imports them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

SECTIONS = {"sources": "source", "channels": "channel", "sinks": "sink"}
TIER_KEYS = {"sources", "channels", "sinks", "sink_groups"}
TOP_LEVEL_KEYS = {"name", "metrics", "tiers", "runtime_env", "alerts", "volume"} | TIER_KEYS
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
    # the bearer token as written (a literal, or ``${env:NAME}``) or the file holding it: read by the
    # controller on its node (see rayflume._private.metrics.resolve_token); never in a repr
    metrics_token: str | None = field(default=None, repr=False)
    metrics_token_file: str | None = None
    # metrics.export: the counters exported to Prometheus (endpoint and Ray metrics); None: all
    metrics_export: tuple[str, ...] | None = None
    # volume: {header, max_values}: the header whose values the hourly volume store counts
    volume_header: str | None = None
    volume_max_values: int = 200
    # Ray's runtime environment for the controller and every component actor (user code shipped
    # with working_dir / py_modules, pip packages, env_vars); None: Ray's default environment
    runtime_env: dict | None = None
    # the ``alerts`` section (rayflume._private.alerts.AlertsConfig); None: no alerts
    alerts: object = None
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
