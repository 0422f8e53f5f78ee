"""Stable names for the instances of ``per_node`` tiers.

Ray gives a node a new NodeID whenever its raylet starts (a restart, a reboot), so an instance
named after the NodeID would come back under a new name, with an empty channel in a new
directory. Instead an instance is named after the machine:

1. the node label ``rayflume_node_id`` (``ray start --labels rayflume_node_id=web-7``), if set;
2. else the node's host name;
3. else its IP address.

The result is sanitised for actor names, metric keys and paths: lower case, ``[a-z0-9_-]`` only
(a ``.`` would split metric keys), at most 63 characters. Pure functions of ``ray.nodes()``
entries, so they are tested without Ray.
"""
from __future__ import annotations

import re

LABEL = "rayflume_node_id"
MAX_LEN = 63
_UNSAFE = re.compile(r"[^a-z0-9_-]+")


def sanitize(value: str) -> str:
    """``value`` as a name safe in actor names, metric keys and paths ("node" if nothing is left)."""
    name = _UNSAFE.sub("-", str(value).strip().lower()).strip("-")
    return name[:MAX_LEN].strip("-") or "node"


def node_identity(node: dict) -> tuple[str, str]:
    """(sanitised identity, where it comes from) of a ``ray.nodes()`` entry."""
    labels = node.get("Labels") or {}
    if labels.get(LABEL):
        return sanitize(labels[LABEL]), f"label {LABEL}"
    if node.get("NodeManagerHostname"):
        return sanitize(node["NodeManagerHostname"]), "host name"
    return sanitize(node.get("NodeManagerAddress") or ""), "IP address"


def assign_instances(nodes: list[dict], placed: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Instance ids for the nodes in ``nodes`` that have no instance yet.

    ``placed`` is ``{instance id: node id}`` of the tier's instances that run now; they keep their
    ids. A new node gets its identity as instance id. When that id is taken by a running instance
    (two alive nodes with one identity, e.g. several Ray nodes on one host without the label), it
    gets ``<identity>-2``, ``-3``..., the first free one, nodes taken in NodeID order. Returns
    ``({node id: instance id}, [warnings about shared identities])``.
    """
    taken = set(placed)
    on_nodes = set(placed.values())
    out: dict[str, str] = {}
    warnings: list[str] = []
    for node in sorted(nodes, key=lambda n: n["NodeID"]):
        node_id = node["NodeID"]
        if node_id in on_nodes:
            continue
        base, source = node_identity(node)
        instance_id, k = base, 1
        while instance_id in taken:
            k += 1
            instance_id = f"{base}-{k}"
        if k > 1:
            warnings.append(
                f"node {node_id[:12]} has the identity '{base}' ({source}) of a node that is already running an "
                f"instance: it runs as '{instance_id}', a name it may not get back after a restart. Give every "
                f"node a unique label {LABEL} (ray start --labels {LABEL}=NAME) so that an instance keeps its "
                f"channel and positions across restarts")
        taken.add(instance_id)
        out[node_id] = instance_id
    return out, warnings
