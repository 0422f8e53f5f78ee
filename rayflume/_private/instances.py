"""What the topology controller knows of its instances and their component actors.

:class:`Instance` is one instance of a tier (its node, and the machine identity of a ``per_node``
instance) holding a :class:`Managed` per component: the actor handle and what the controller saw
of it (restarts, replacements, a LOST record, the time it last died). Both are plain data, read by
every part of the controller (:mod:`rayflume._private.controller`) and written by its reconcile
and lifecycle code (:mod:`rayflume._private.lifecycle`) only.

Names: a component's metric name is ``<tier>.<instance>.<component>`` in a tiered topology and the
component's name otherwise (:func:`metric_key`), the names ``metrics()``, ``status()`` and
``/health`` all use. Nothing here starts or calls an actor except :func:`kill`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import ray

from rayflume._private import planner
from rayflume._private.planner import instance_label

logger = logging.getLogger("rayflume.controller")
# How long the controller waits for the components' answers to a call (a status, a push, a drain's
# size), all of them together where it sends them at once.
CALL_TIMEOUT_S = 10.0
KIND_KEY = {"CHANNEL": "channel", "SOURCE": "source", "SINK": "sinks"}


def describe(exc: BaseException) -> str:
    """``Type: first line`` of an exception, of the original one for an error raised in an actor."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else 'no message'}"


def kill(handle) -> None:
    """End an actor for good; one that is gone already (or never was) is fine."""
    if handle is None:
        return
    try:
        ray.kill(handle, no_restart=True)
    except Exception as exc:
        logger.info("kill of an actor failed (gone already?): %s", describe(exc))


def metric_key(tier: str, instance_id: str, kind: str, name: str) -> tuple[str, str]:
    return (kind, f"{tier}.{instance_id}.{name}" if tier else name)


@dataclass
class Managed:
    """One component actor and what the controller knows of it."""

    kind: str
    name: str
    raw: object  # what decides whether a redeploy changes it
    handle: object = None
    restarts_before: int = 0  # restarts of actors this one replaced
    replacements: int = 0
    last_restarts: int = 0
    announced_restarts: int = 0
    lost: str | None = None  # why a node-local component is gone for good
    died_at: float | None = None  # when a tick last saw it restarted or dead (epoch s), for alerts

    @property
    def restarts(self) -> int:
        return self.restarts_before + self.last_restarts + self.replacements

    @property
    def fingerprint(self) -> str:
        return planner.fingerprint(self.raw)


@dataclass
class Instance:
    tier: str
    instance_id: str
    node_id: str | None  # None: placed by Ray (single tier)
    identity: str | None = None  # the machine's identity (per_node tiers)
    components: dict = field(default_factory=dict)  # (kind, name) -> Managed

    @property
    def scope(self) -> str:
        """Prefix of actor names and metric keys ("" for a single-tier topology)."""
        return f"{self.tier}/{self.instance_id}" if self.tier else ""

    def label(self) -> str:
        return instance_label(self.tier, self.instance_id)

    def metric_key(self, kind: str, name: str) -> tuple[str, str]:
        return metric_key(self.tier, self.instance_id, kind, name)
