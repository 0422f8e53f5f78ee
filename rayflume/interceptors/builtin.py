"""Flume's header interceptors: ``timestamp``, ``host``, ``static``, ``remove_header``, ``uuid``.

Each works on a whole batch with :mod:`rayflume.interceptors.headers` (Arrow kernels and numpy);
none drops events or touches bodies. Runtime objects hold no mutable state once built, so one
instance may be used from several threads.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from rayflume.config_base import InterceptorConfig
from rayflume.event import EventBatch, binary_array
from rayflume.interceptors.base import Interceptor
from rayflume.interceptors.headers import keys_in, keys_matching, keys_named, remove_headers, set_header
from rayflume.registry import register

log = logging.getLogger(__name__)


def _check_header_name(component: str, key: str, value: str) -> str:
    if not value:
        raise ValueError(f"interceptor '{component}': '{key}' must be a non-empty header name")
    return value


# -- timestamp ------------------------------------------------------------------------------------

class TimestampInterceptor(Interceptor):
    """Sets ``header_name`` to the current time in epoch milliseconds (one clock read per batch)."""

    def __init__(self, header_name: str = "timestamp", preserve_existing: bool = False):
        self.header_name = header_name
        self.preserve_existing = preserve_existing

    def intercept(self, batch: EventBatch) -> EventBatch:
        if len(batch) == 0:
            return batch
        now_ms = str(time.time_ns() // 1_000_000)
        return set_header(batch, self.header_name, now_ms, self.preserve_existing)


@register("interceptor", "timestamp")
class TimestampInterceptorConfig(InterceptorConfig):
    """``timestamp``: the time the source handled the event, in ms since the epoch."""

    header_name: str = Field("timestamp", description="Header that receives the time in epoch ms.")
    preserve_existing: bool = Field(False, description="Keep an event's existing value of the header.")

    @field_validator("header_name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_header_name("timestamp", "header_name", v)

    def build(self) -> TimestampInterceptor:
        return TimestampInterceptor(self.header_name, self.preserve_existing)


# -- host -----------------------------------------------------------------------------------------

def local_address(use_ip: bool) -> str | None:
    """The agent's IP address (``use_ip``) or canonical host name; None if it cannot be resolved."""
    try:
        hostname = socket.gethostname()
        if not use_ip:
            return socket.getfqdn(hostname) or hostname
        return socket.gethostbyname(hostname)
    except OSError as exc:
        log.warning("host interceptor: cannot resolve the local %s (%s); events will get no host header",
                    "address" if use_ip else "host name", exc)
        return None


class HostInterceptor(Interceptor):
    """Sets ``host_header`` to the IP address or host name of the process it runs in.

    The address is resolved once, when the interceptor is built (inside the source actor, so it
    names the node the source runs on). If it cannot be resolved, events pass unchanged, as in
    Flume.
    """

    def __init__(self, host_header: str = "host", use_ip: bool = True, preserve_existing: bool = False,
                 address: str | None = None):
        self.host_header = host_header
        self.preserve_existing = preserve_existing
        self.address = address if address is not None else local_address(use_ip)

    def intercept(self, batch: EventBatch) -> EventBatch:
        if self.address is None:
            return batch
        return set_header(batch, self.host_header, self.address, self.preserve_existing)


@register("interceptor", "host")
class HostInterceptorConfig(InterceptorConfig):
    """``host``: the IP address (default) or host name of the agent that received the event."""

    host_header: str = Field("host", description="Header that receives the address.")
    use_ip: bool = Field(True, description="True: the IP address; false: the canonical host name.")
    preserve_existing: bool = Field(False, description="Keep an event's existing value of the header.")

    @field_validator("host_header")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_header_name("host", "host_header", v)

    def build(self) -> HostInterceptor:
        return HostInterceptor(self.host_header, self.use_ip, self.preserve_existing)


# -- static ---------------------------------------------------------------------------------------

class StaticInterceptor(Interceptor):
    """Sets one constant header; chain several for more."""

    def __init__(self, key: str = "key", value: str = "value", preserve_existing: bool = True):
        self.key = key
        self.value = value
        self.preserve_existing = preserve_existing

    def intercept(self, batch: EventBatch) -> EventBatch:
        return set_header(batch, self.key, self.value, self.preserve_existing)


@register("interceptor", "static")
class StaticInterceptorConfig(InterceptorConfig):
    """``static``: one constant header on every event."""

    key: str = Field("key", description="Header name.")
    value: str = Field("value", description="Header value.")
    preserve_existing: bool = Field(True, description="Keep an event's existing value of the header.")

    @field_validator("key")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_header_name("static", "key", v)

    def build(self) -> StaticInterceptor:
        return StaticInterceptor(self.key, self.value, self.preserve_existing)


# -- remove_header --------------------------------------------------------------------------------

def _check_re2(component: str, key: str, pattern: str) -> str:
    """Arrow's regex engine is RE2; a pattern it rejects is a config error, not a runtime one."""
    try:
        pc.match_substring_regex(pa.array([""], pa.string()), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"interceptor '{component}': '{key}' is not a valid RE2 regular expression "
                         f"({exc}); fix the pattern (look-arounds and back-references are not supported)")
    return pattern


def split_list(text: str, separator: str) -> list[str]:
    """Split like Java's ``String.split``: trailing empty names are dropped; so are leading ones."""
    return [name for name in re.split(separator, text.strip()) if name]


class RemoveHeaderInterceptor(Interceptor):
    """Removes every header whose name equals ``with_name``, is in ``names`` or fully matches
    ``matching``. With none of them given it passes batches unchanged."""

    def __init__(self, with_name: str | None = None, names: list[str] | None = None,
                 matching: str | None = None):
        self.with_name = with_name
        self.names = list(names or [])
        self.matching = matching
        predicates = []
        if with_name:
            predicates.append(keys_named(with_name))
        if self.names:
            predicates.append(keys_in(self.names))
        if matching:
            predicates.append(keys_matching(matching))
        self._predicates = predicates

    def _selected(self, keys: pa.StringArray) -> np.ndarray:
        mask = np.zeros(len(keys), dtype=bool)
        for predicate in self._predicates:
            mask |= np.asarray(pc.fill_null(predicate(keys), False), dtype=bool)
        return mask

    def intercept(self, batch: EventBatch) -> EventBatch:
        if not self._predicates:
            return batch
        return remove_headers(batch, self._selected)


@register("interceptor", "remove_header")
class RemoveHeaderInterceptorConfig(InterceptorConfig):
    """``remove_header``: removes headers by exact name, by list, or by regex (any of them)."""

    with_name: str | None = Field(None, description="Name of a header to remove.")
    from_list: str | None = Field(None, description="Names of headers to remove, separated by from_list_separator.")
    from_list_separator: str = Field(r"\s*,\s*", description="Regex separating the names in from_list.")
    matching: str | None = Field(None, description="Remove headers whose whole name matches this RE2 regex.")

    @field_validator("from_list_separator")
    @classmethod
    def _separator(cls, v: str) -> str:
        if not v:
            raise ValueError("interceptor 'remove_header': 'from_list_separator' must not be empty")
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"interceptor 'remove_header': 'from_list_separator' is not a valid regex ({exc})")
        return v

    @field_validator("matching")
    @classmethod
    def _matching(cls, v: str | None) -> str | None:
        return v if v is None else _check_re2("remove_header", "matching", v)

    def build(self) -> RemoveHeaderInterceptor:
        names = split_list(self.from_list, self.from_list_separator) if self.from_list else []
        return RemoveHeaderInterceptor(self.with_name, names, self.matching)


# -- uuid -----------------------------------------------------------------------------------------

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# The two ASCII hex digits of every byte value packed in one little-endian uint16, so a lookup
# of the random bytes, viewed as uint8, is the hex text in order.
_BYTE_HEX = (_HEX[np.arange(256) >> 4].astype("<u2") | (_HEX[np.arange(256) & 15].astype("<u2") << 8))
# (start in the 32 hex digits, end, start in the 36-character 8-4-4-4-12 text)
_GROUPS = ((0, 8, 0), (8, 12, 9), (12, 16, 14), (16, 20, 19), (20, 32, 24))


def random_uuids(n: int, prefix: str = "") -> pa.StringArray:
    """``n`` random (version 4) UUID strings, each preceded by ``prefix``.

    One ``os.urandom`` call and numpy formatting for the whole array (100,000 in under 10 ms
    here, against about 200 ms for ``str(uuid.uuid4())`` per event).
    """
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    digits = _BYTE_HEX[raw].view(np.uint8)  # (n, 32)
    head = prefix.encode("utf-8")
    width = len(head) + 36
    text = np.empty((n, width), dtype=np.uint8)
    if head:
        text[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
    body = text[:, len(head):]
    for start, end, at in _GROUPS:
        body[:, at: at + end - start] = digits[:, start:end]
        if at:
            body[:, at - 1] = ord("-")
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError("too many UUIDs for one string array; split the batch")
    return binary_array(offsets.astype(np.int32), text, value_type=pa.string())


class UuidInterceptor(Interceptor):
    """Sets ``header_name`` to ``prefix`` + a fresh random UUID, different for every event."""

    def __init__(self, header_name: str = "id", preserve_existing: bool = True, prefix: str = ""):
        self.header_name = header_name
        self.preserve_existing = preserve_existing
        self.prefix = prefix

    def intercept(self, batch: EventBatch) -> EventBatch:
        if len(batch) == 0:
            return batch
        return set_header(batch, self.header_name, random_uuids(len(batch), self.prefix), self.preserve_existing)


@register("interceptor", "uuid")
class UuidInterceptorConfig(InterceptorConfig):
    """``uuid`` (Flume's morphline UUIDInterceptor): a unique id per event."""

    header_name: str = Field("id", description="Header that receives the UUID.")
    preserve_existing: bool = Field(True, description="Keep an event's existing value of the header.")
    prefix: str = Field("", description="Text put before every UUID.")

    @field_validator("header_name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_header_name("uuid", "header_name", v)

    def build(self) -> UuidInterceptor:
        return UuidInterceptor(self.header_name, self.preserve_existing, self.prefix)
