"""Flume's bucket-path escapes, resolved per batch with Arrow kernels.

A path template (``hdfs.path``) and a file-prefix template (``hdfs.filePrefix``) may hold:

- ``%{name}``: the value of header ``name`` (empty when the event lacks it, as in Flume);
- ``%t``: the event's timestamp in epoch milliseconds (never rounded);
- ``%a %A %b %B %c %d %e %D %H %I %j %k %m %n %M %p %s %S %y %Y %z``: fields of the event's
  timestamp in ``time_zone``, with Java's meanings as Flume's ``BucketPath`` uses them
  (``%a`` Tue, ``%A`` Tuesday, ``%b`` Jun, ``%B`` June, ``%c`` ``Tue Jun 5 09:04:07 2012``,
  ``%d`` 05, ``%e`` 5, ``%D`` 06/05/12, ``%H`` 09, ``%I`` 09 (12-hour), ``%j`` 157 (day of year),
  ``%k`` 9, ``%m`` 06, ``%n`` 6, ``%M`` 04, ``%p`` AM, ``%s`` epoch seconds, ``%S`` 07, ``%y`` 12,
  ``%Y`` 2012, ``%z`` +0000); English names, whatever the machine's locale;
- ``%[localhost]``, ``%[IP]``, ``%[FQDN]``: the host the sink runs on (resolved once);
- ``%%``: a literal ``%``.

Timestamps come from each event's ``timestamp`` header (epoch ms, e.g. from the ``timestamp``
interceptor). An event without one makes the whole batch fail, as in Flume, with a message saying
to add the interceptor or to set ``use_local_timestamp``, which stamps the batch with the sink's
clock instead (one reading per batch). With ``round``, the timestamp is rounded down to a multiple
of ``round_value`` ``round_unit`` s of its own wall clock (minutes within the hour, seconds within
the minute, hours within the day, exactly like Flume's ``TimestampRoundDownUtil``) before every
time escape but ``%t``.

How a batch is routed: nothing is formatted per event. The sink computes, with Arrow kernels and
numpy, one small integer key column per ingredient the templates use: the wall-clock time
truncated to the finest field the templates print (a ``%Y/%m/%d/%H`` path groups by the hour),
the rounded epoch second for ``%s``, the raw millisecond for ``%t``, the UTC offset for ``%z``, and
the dictionary code of every header named by ``%{...}``. Combining those columns gives one group id
per event; each distinct group is formatted once, in Python, from one representative event.

Header values and host names are sanitised before they enter a path, so that no header can move a
file outside the sink's root (the static part of the path before its first escape):

1. ``/``, ``\\`` and control characters (U+0000-U+001F, U+007F) become ``_``;
2. then every ``..`` becomes ``__``, and a value that is exactly ``.`` becomes ``_``;
3. the result is cut to at most 200 UTF-8 bytes (a longer path component would fail every write,
   so one bad header would block the channel).

So ``%{host}`` = ``../../etc`` is written as ``______etc``. After formatting, empty path segments are
dropped and the directory is checked to lie under the root (a failed check is a bug and raises).
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayflume.errors import DeliveryError
from rayflume.event import EventBatch

log = logging.getLogger("rayflume.sink.hdfs")

__all__ = ["Token", "parse_template", "static_root", "sanitize", "local_zone_name", "host_values",
           "BucketRouter", "Route", "TIME_ESCAPES", "MAX_VALUE_BYTES"]

# Escapes whose value depends on the event time, beyond %t.
TIME_ESCAPES = frozenset("aAbBcdDeHIjkmMnpsSyYz")
HOST_ESCAPES = {"localhost": "localhost", "ip": "IP", "fqdn": "FQDN"}
MAX_VALUE_BYTES = 200

# Granularity of each wall-clock field: the finest field printed decides how far the wall time
# is truncated before grouping.
_SECOND, _MINUTE, _HOUR, _DAY, _MONTH, _YEAR = range(6)
_FIELD_GRAIN = {
    "S": _SECOND, "c": _SECOND,
    "M": _MINUTE,
    "H": _HOUR, "I": _HOUR, "k": _HOUR, "p": _HOUR,
    "a": _DAY, "A": _DAY, "d": _DAY, "e": _DAY, "j": _DAY, "D": _DAY,
    "b": _MONTH, "B": _MONTH, "m": _MONTH, "n": _MONTH,
    "y": _YEAR, "Y": _YEAR,
}
_GRAIN_MS = {_SECOND: 1_000, _MINUTE: 60_000, _HOUR: 3_600_000, _DAY: 86_400_000}
_ROUND_UNITS = {"second": "second", "minute": "minute", "hour": "hour"}

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")
_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class Token:
    """One piece of a template: ``kind`` is ``text``, ``header``, ``time`` or ``host``."""

    kind: str
    value: str


def parse_template(template: str, what: str = "path") -> list[Token]:
    """The tokens of ``template``; raises ValueError naming the bad escape and what is allowed."""
    tokens: list[Token] = []
    text: list[str] = []
    i, n = 0, len(template)

    def flush():
        if text:
            tokens.append(Token("text", "".join(text)))
            text.clear()

    while i < n:
        c = template[i]
        if c != "%":
            text.append(c)
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError(f"{what} {template!r} ends with a lone '%'; write '%%' for a literal percent sign")
        e = template[i + 1]
        if e == "%":
            text.append("%")
            i += 2
        elif e == "{":
            j = template.find("}", i + 2)
            if j < 0 or j == i + 2:
                raise ValueError(f"{what} {template!r}: '%{{' must be followed by a header name and '}}'")
            flush()
            tokens.append(Token("header", template[i + 2:j]))
            i = j + 1
        elif e == "[":
            j = template.find("]", i + 2)
            name = template[i + 2:j].lower() if j > 0 else ""
            if name not in HOST_ESCAPES:
                raise ValueError(f"{what} {template!r}: unknown host escape; use %[localhost], %[IP] or %[FQDN]")
            flush()
            tokens.append(Token("host", HOST_ESCAPES[name]))
            i = j + 1
        elif e in TIME_ESCAPES or e == "t":
            flush()
            tokens.append(Token("time", e))
            i += 2
        else:
            raise ValueError(f"{what} {template!r}: unknown escape '%{e}'; use %{{header}}, %t, one of "
                             f"%{' %'.join(sorted(TIME_ESCAPES))}, %[localhost], %[IP], %[FQDN], or %% for '%'")
    flush()
    return tokens


def static_root(template: str) -> str:
    """The directory part of ``template`` before its first escape (the whole template if none)."""
    tokens = parse_template(template)
    if all(t.kind == "text" for t in tokens):
        return template.rstrip("/") or "/"
    prefix = tokens[0].value if tokens[0].kind == "text" else ""
    cut = prefix.rfind("/")
    if cut < 0:
        return ""
    return prefix[:cut] or "/"


def sanitize(value: str | None) -> str:
    """A header value made safe as (part of) one path component; see the module docstring."""
    if not value:
        return ""
    out = "".join("_" if (ch in "/\\" or ord(ch) < 32 or ord(ch) == 127) else ch for ch in value)
    out = out.replace("..", "__")
    if out == ".":
        out = "_"
    raw = out.encode("utf-8")
    if len(raw) > MAX_VALUE_BYTES:
        out = raw[:MAX_VALUE_BYTES].decode("utf-8", errors="ignore")
    return out


def local_zone_name() -> str:
    """The IANA name of this machine's time zone (``TZ``, ``/etc/localtime``, ``/etc/timezone``), else UTC."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz and not os.path.isabs(tz):
        return tz
    try:
        target = os.path.realpath("/etc/localtime")
        marker = "/zoneinfo/"
        if marker in target:
            return target.split(marker, 1)[1]
    except OSError:
        pass
    try:
        with open("/etc/timezone") as fh:
            name = fh.read().strip()
            if name:
                return name
    except OSError:
        pass
    return "UTC"


def host_values() -> dict[str, str]:
    """Values of %[localhost], %[IP] and %[FQDN] for this process's host."""
    hostname = socket.gethostname()
    try:
        ip = socket.gethostbyname(hostname)
    except OSError:
        ip = "127.0.0.1"
    try:
        fqdn = socket.getfqdn(hostname) or hostname
    except OSError:
        fqdn = hostname
    return {"localhost": hostname, "IP": ip, "FQDN": fqdn}


@dataclass
class Route:
    """Where some events of a batch go: ``indices`` into the batch (None: all of it), in order."""

    directory: str
    prefix: str
    indices: np.ndarray | None

    def take(self, batch: EventBatch) -> EventBatch:
        return batch if self.indices is None else batch.take(pa.array(self.indices))


def _java_fields(dt: datetime) -> dict[str, str]:
    hour12 = dt.hour % 12 or 12
    day, month = _DAYS[dt.weekday()], _MONTHS[dt.month - 1]
    return {
        "a": day[:3], "A": day, "b": month[:3], "B": month,
        "c": f"{day[:3]} {month[:3]} {dt.day} {dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} {dt.year:04d}",
        "d": f"{dt.day:02d}", "e": str(dt.day), "D": f"{dt.month:02d}/{dt.day:02d}/{dt.year % 100:02d}",
        "H": f"{dt.hour:02d}", "I": f"{hour12:02d}", "j": f"{dt.timetuple().tm_yday:03d}",
        "k": str(dt.hour), "m": f"{dt.month:02d}", "n": str(dt.month), "M": f"{dt.minute:02d}",
        "p": "AM" if dt.hour < 12 else "PM", "S": f"{dt.second:02d}", "y": f"{dt.year % 100:02d}",
        "Y": f"{dt.year:04d}",
    }


def _offset(ms: int) -> str:
    sign = "+" if ms >= 0 else "-"
    minutes = abs(int(ms)) // 60_000
    return f"{sign}{minutes // 60:02d}{minutes % 60:02d}"


def _codes(values: np.ndarray) -> np.ndarray:
    """Dense codes 0..k-1 of an int64 key column."""
    return np.unique(values, return_inverse=True)[1].astype(np.int64, copy=False).reshape(-1)


class BucketRouter:
    """Splits a batch by the directory and file prefix its events go to.

    ``directory`` and ``prefix`` are templates (see the module docstring); ``directory`` is a path
    inside the sink's file system (``/data/x``, or ``bucket/key-prefix`` on S3). ``wall_clock``
    (epoch seconds) stamps batches when ``use_local_timestamp``; ``hosts`` overrides the host
    escapes (tests). Stateless between calls; safe to share between threads.
    """

    def __init__(self, directory: str, prefix: str = "FlumeData", *, round: bool = False, round_value: int = 1,
                 round_unit: str = "second", time_zone: str | None = None, use_local_timestamp: bool = False,
                 timestamp_header: str = "timestamp", hosts: dict[str, str] | None = None,
                 wall_clock: Callable[[], float] = time.time, who: str = "hdfs sink"):
        self.who = who
        self.dir_tokens = parse_template(directory, "path")
        self.prefix_tokens = parse_template(prefix, "file_prefix")
        self.root = static_root(directory)
        self.directory_template = directory
        self.prefix_template = prefix
        if round and round_unit not in _ROUND_UNITS:
            raise ValueError(f"{who}: round_unit must be second, minute or hour, not {round_unit!r}")
        self.round = bool(round)
        self.round_value = int(round_value)
        self.round_unit = round_unit
        self.time_zone = time_zone or local_zone_name()
        self.use_local_timestamp = use_local_timestamp
        self.timestamp_header = timestamp_header
        self.wall_clock = wall_clock
        tokens = self.dir_tokens + self.prefix_tokens
        self.hosts = {k: sanitize(v) for k, v in (hosts or host_values()).items()} \
            if any(t.kind == "host" for t in tokens) else {}
        self.headers = list(dict.fromkeys(t.value for t in tokens if t.kind == "header"))
        time_fields = {t.value for t in tokens if t.kind == "time"}
        self.time_fields = time_fields
        grains = [_FIELD_GRAIN[f] for f in time_fields if f in _FIELD_GRAIN]
        self.wall_grain = min(grains) if grains else None
        self.needs_seconds = "s" in time_fields
        self.needs_raw = "t" in time_fields
        self.needs_offset = "z" in time_fields
        self.uses_time = bool(time_fields)
        self.constant = not self.uses_time and not self.headers
        if self.constant:
            self._constant_route = (self._confine(self._render(self.dir_tokens, {}, {})),
                                    self._render(self.prefix_tokens, {}, {}))
        # Fail now, not on the first batch, on a zone Arrow cannot use.
        if self.uses_time:
            pa.array([0], pa.int64()).cast(pa.timestamp("ms", tz=self.time_zone))
            pc.local_timestamp(pa.array([0], pa.int64()).cast(pa.timestamp("ms", tz=self.time_zone)))

    # -- per batch --------------------------------------------------------------------------------
    def route(self, batch: EventBatch) -> list[Route]:
        """The routes of ``batch``, in order of first appearance; raises DeliveryError on a bad timestamp."""
        n = len(batch)
        if n == 0:
            return []
        if self.constant:
            return [Route(*self._constant_route, None)]
        columns: list[np.ndarray] = []
        time_keys = self._time_keys(batch) if self.uses_time else {}
        columns.extend(time_keys.values())
        header_arrays = {}
        for name in self.headers:
            values = batch.header(name)
            header_arrays[name] = values
            encoded = pc.dictionary_encode(values, null_encoding="encode")
            columns.append(np.asarray(encoded.indices, dtype=np.int64))
        code = _codes(columns[0]) if len(columns[0]) == n else np.zeros(n, np.int64)
        for col in columns[1:]:
            c = _codes(col)
            code = code * (int(c.max()) + 1) + c
            if code.max() > (1 << 40):  # keep the combined code small: re-densify
                code = _codes(code)
        uniq, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        # Format each distinct key once, from one representative event.
        keyed: dict[tuple[str, str], list[int]] = {}
        for g in np.argsort(first, kind="stable"):
            rep = int(first[g])
            times = {k: int(v[rep]) for k, v in time_keys.items()}
            heads = {name: arr[rep].as_py() for name, arr in header_arrays.items()}
            directory = self._confine(self._render(self.dir_tokens, times, heads))
            prefix = self._render(self.prefix_tokens, times, heads)
            keyed.setdefault((directory, prefix), []).append(int(g))
        if len(uniq) == 1:
            (directory, prefix), = keyed
            return [Route(directory, prefix, None)]
        order = np.argsort(inverse, kind="stable")
        bounds = np.concatenate(([0], np.cumsum(np.bincount(inverse, minlength=len(uniq)))))
        routes = []
        for (directory, prefix), groups in keyed.items():
            parts = [order[bounds[g]:bounds[g + 1]] for g in groups]
            idx = parts[0] if len(parts) == 1 else np.sort(np.concatenate(parts))
            routes.append(Route(directory, prefix, None if len(keyed) == 1 else idx))
        return routes

    def timestamps(self, batch: EventBatch) -> np.ndarray:
        """Epoch ms of every event (from its header, or the clock with use_local_timestamp)."""
        n = len(batch)
        if self.use_local_timestamp:
            return np.full(n, int(self.wall_clock() * 1000), dtype=np.int64)
        values = batch.header(self.timestamp_header)
        missing = values.null_count
        if missing:
            raise DeliveryError(
                f"{self.who}: {missing} of {n} events have no '{self.timestamp_header}' header, which the time "
                f"escapes of path {self.directory_template!r} need; add the timestamp interceptor to the source "
                f"(interceptors: [{{type: timestamp}}]) or set use_local_timestamp: true on the sink")
        try:
            ts = pc.cast(values, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            ok = pc.fill_null(pc.match_substring_regex(values, r"^-?[0-9]{1,18}$"), False)
            bad = pc.filter(values, pc.invert(ok))
            sample = bad[0].as_py() if len(bad) else "?"
            raise DeliveryError(
                f"{self.who}: {len(bad)} of {n} events have a '{self.timestamp_header}' header that is not epoch "
                f"milliseconds (e.g. {sample[:40]!r}); fix the interceptor that sets it, or set "
                f"use_local_timestamp: true on the sink") from None
        return np.asarray(ts, dtype=np.int64)

    def _time_keys(self, batch: EventBatch) -> dict[str, np.ndarray]:
        ts = self.timestamps(batch)
        stamped = pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz=self.time_zone))
        wall = pc.local_timestamp(stamped)
        wall_ms = np.asarray(wall.cast(pa.int64()), dtype=np.int64)
        if self.round:
            rounded = pc.floor_temporal(wall, multiple=self.round_value, unit=self.round_unit,
                                        calendar_based_origin=True)
            rounded_ms = np.asarray(rounded.cast(pa.int64()), dtype=np.int64)
        else:
            rounded, rounded_ms = wall, wall_ms
        keys: dict[str, np.ndarray] = {}
        if self.wall_grain is not None:
            if self.wall_grain in _GRAIN_MS:
                unit = _GRAIN_MS[self.wall_grain]
                keys["wall"] = rounded_ms - np.mod(rounded_ms, unit)
            else:
                floored = pc.floor_temporal(rounded, unit="month" if self.wall_grain == _MONTH else "year")
                keys["wall"] = np.asarray(floored.cast(pa.int64()), dtype=np.int64)
        if self.needs_seconds:
            # The rounded instant: rounding moved the wall clock back by (wall - rounded).
            keys["sec"] = np.floor_divide(ts - (wall_ms - rounded_ms), 1000)
        if self.needs_raw:
            keys["t"] = ts
        if self.needs_offset:
            keys["off"] = wall_ms - ts
        return keys

    # -- formatting ---------------------------------------------------------------------------------
    def _render(self, tokens: Sequence[Token], times: dict[str, int], heads: dict[str, str | None]) -> str:
        fields = _java_fields(_EPOCH + timedelta(milliseconds=times["wall"])) if "wall" in times else {}
        out = []
        for tok in tokens:
            if tok.kind == "text":
                out.append(tok.value)
            elif tok.kind == "header":
                out.append(sanitize(heads.get(tok.value)))
            elif tok.kind == "host":
                out.append(self.hosts[tok.value])
            elif tok.value == "t":
                out.append(str(times["t"]))
            elif tok.value == "s":
                out.append(str(times["sec"]))
            elif tok.value == "z":
                out.append(_offset(times["off"]))
            else:
                out.append(fields[tok.value])
        return "".join(out)

    def _confine(self, directory: str) -> str:
        """``directory`` without empty, ``.`` or ``..`` segments below the root; must lie under the root."""
        root = self.root
        if not directory.startswith(root):
            raise DeliveryError(f"{self.who}: bucket directory {directory!r} is not under the root {root!r}; "
                                f"this is a bug, please report it")
        rest = directory[len(root):]
        segments = [("_" if s in (".", "..") else s) for s in rest.split("/") if s]
        if not segments:
            return root
        sep = "" if root.endswith("/") or not root else "/"
        return root + sep + "/".join(segments)
