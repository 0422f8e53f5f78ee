"""Where a topology controller keeps its desired state: JSON documents by key.

The store is Ray's internal key-value store, which lives in the GCS on the head node. Chosen over
a file under a state directory on the head because:

* its lifetime is that of the actors the state describes: both live in the GCS, so the state
  survives a controller restart (and, with GCS fault tolerance, a head restart) exactly as long
  as the components it names do. A file would outlive a cluster restart and describe actors that
  no longer exist;
* it needs no directory setting and no disk on the head that the controller can write;
* a put of one key replaces the value whole in one GCS write: a reader sees the old document or
  the new one, never a mix. The controller keeps everything in one document per topology, so one
  put is one atomic change of its state.

Ray has no public key-value API: ``ray.experimental.internal_kv`` is private and may change
between Ray versions. This module is the only place that uses it, so a change there is fixed
here. :class:`MemoryStore` has the same interface for tests without Ray.
"""
from __future__ import annotations

import json
from typing import Protocol

KV_NAMESPACE = "rayflume"


class StateStore(Protocol):
    """JSON documents (dicts) by key. ``put`` replaces a document atomically."""

    def get(self, key: str) -> dict | None: ...

    def put(self, key: str, doc: dict) -> None: ...

    def delete(self, key: str) -> None: ...


def _encode(doc: dict) -> bytes:
    # Encoded before anything is written: a document that is not JSON fails here, storing nothing.
    return json.dumps(doc, sort_keys=True).encode()


class MemoryStore:
    """A :class:`StateStore` in a dict, holding encoded copies (callers cannot change them)."""

    def __init__(self):
        self._data: dict[str, bytes] = {}

    def get(self, key: str) -> dict | None:
        raw = self._data.get(key)
        return json.loads(raw) if raw is not None else None

    def put(self, key: str, doc: dict) -> None:
        self._data[key] = _encode(doc)

    def delete(self, key: str) -> None:
        self._data.pop(key, None)


class RayKVStore:
    """A :class:`StateStore` in Ray's internal KV (the GCS); usable where Ray is initialised."""

    def get(self, key: str) -> dict | None:
        from ray.experimental import internal_kv

        raw = internal_kv._internal_kv_get(key.encode(), namespace=KV_NAMESPACE)
        return json.loads(raw) if raw else None

    def put(self, key: str, doc: dict) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(key.encode(), _encode(doc), overwrite=True, namespace=KV_NAMESPACE)

    def delete(self, key: str) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(key.encode(), namespace=KV_NAMESPACE)
