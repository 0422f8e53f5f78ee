"""Actor states read from Ray's GCS: the one place rayflume uses ``ray._private.state``.

The public ``ray.util.state.list_actors`` asks the dashboard's state server, which an embedded Ray
(``rayflume deploy`` without ``--address``) and the test clusters run without; so the controller
reads the GCS actor table directly. It does so once per reconcile tick (one listing for every
component of every instance), plus a single-actor look-up when it re-attaches to an actor by name.
"""
from __future__ import annotations

import logging

import ray

logger = logging.getLogger("rayflume.controller")
UNKNOWN = ("UNKNOWN", 0)


def _parse(info: dict) -> tuple[str, int]:
    return info.get("State", "UNKNOWN"), int(info.get("NumRestarts", 0))


def actor_table() -> dict[str, tuple[str, int]]:
    """``{actor id (hex): (state, restarts)}`` of every actor the GCS knows; {} if it cannot be read.

    States are Ray's: ALIVE, RESTARTING, DEAD, PENDING_CREATION, DEPENDENCIES_UNREADY."""
    try:
        return {actor_id: _parse(info) for actor_id, info in ray._private.state.actors().items()}
    except Exception:
        logger.warning("cannot list actors from the GCS", exc_info=True)
        return {}


def actor_state(handle) -> tuple[str, int]:
    """(state, restarts) of one actor, asked now; UNKNOWN if it cannot be read."""
    try:
        return _parse(ray._private.state.actors(handle._actor_id.hex()))
    except Exception:
        return UNKNOWN
