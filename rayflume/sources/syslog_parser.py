"""Syslog parsing for the ``syslog_tcp`` and ``syslog_udp`` sources: RFC 5424 and RFC 3164. The TCP
framing (RFC 6587) is :class:`rayflume.sources._framing.StreamFramer`.

Parsing works on a whole batch of raw messages (an Arrow binary array) with
``pyarrow.compute.extract_regex`` (RE2, byte semantics on binary input): one regex pass for
RFC 5424 over the batch, a second only over the messages that did not match, and so on. Header
arrays are built once per batch (:func:`rayflume.sources._framing.headers_from_columns`).
RFC 3339 timestamps are converted with Arrow's ISO-8601 cast, RFC 3164 dates (no year, no zone,
repeated within a batch) once per distinct value.

Each message falls in the first class it matches:

1. **RFC 5424** ``<PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]``.
   A timestamp without a zone offset is accepted here too (read in the agent's zone, below).
2. **Loose header** (counted as ``rfc3164``): ``<PRI>[VERSION][ ]TIMESTAMP [HOSTNAME] [TAG[\\[PID\\]]:]
   MSG``. This covers RFC 3164 and every loose form Flume's SyslogUtils accepts: a version with
   a timestamp and host but no APP-NAME .. STRUCTURED-DATA (``<10>1 2012-04-13T11:11:11Z host
   some msg``), no version (``<10>2012-04-13T11:11:11+08:00 host some msg``), a version before an
   RFC 3164 date, ``-`` for the timestamp or the host (absent, no header). The timestamp is
   ``Mmm d hh:mm:ss`` (RFC 3164) or RFC 3339, ``-`` or a zone-less ``yyyy-mm-ddThh:mm:ss[.f]``.
   The TAG becomes the app name, PID the proc id. The format is ambiguous without a host: the
   first word is taken as the host unless it ends in ``:`` or holds ``[`` (``su[12]: ...``), then
   it is the tag.
3. **PRI only**: a valid ``<PRI>`` followed by anything (what Python's ``SysLogHandler`` sends).
   Facility and severity are set; the rest is the body. Difference from Flume: Flume keeps the
   ``<PRI>`` in the body of a message it cannot parse further.
4. **Invalid**: anything else (no, empty, non-numeric or over-long PRI, PRI above 191). The body
   is the raw message, ``flume.syslog.status`` is ``Invalid`` and ``Facility`` and ``Severity``
   are ``0``, as in Flume; nothing is dropped.

Timestamps (the ``timestamp`` header, epoch milliseconds): fractions of a second are cut (not
rounded) to milliseconds; a timestamp without a zone offset, and an RFC 3164 date, are in the
agent's local time zone; an RFC 3164 date has no year, so it gets the latest year that puts it
at most one calendar month after now (Flume's rule: a 12-month window reaching a month ahead,
for senders whose clocks run ahead and for Dec 31 read on Jan 1). An impossible date (Feb 30,
month 13) sets no timestamp, the rest of the message is parsed as usual.

Headers (Flume's names where Flume sets them): ``Facility``, ``Severity``, ``timestamp``, ``host``,
and, beyond Flume, ``AppName``, ``ProcId``, ``MsgId`` and ``StructuredData`` (the SD text as
sent, e.g. ``[id@1 a="b"]``). The nil value ``-`` sets no header. ``flume.syslog.status`` is
``Invalid`` or ``Incomplete`` (a message longer than the maximum event size: see
:class:`~rayflume.sources._framing.StreamFramer`).

``keep_fields`` decides what stays in the body, as Flume's ``keepFields``: ``none`` (the body is
MSG alone), ``all`` (the raw message), or a list of ``priority``, ``version``, ``timestamp``,
``hostname``, ``app_name``, ``proc_id``, ``msg_id``, ``structured_data`` kept in front of MSG
in their original form. Difference from Flume: Flume leaves APP-NAME .. STRUCTURED-DATA (and the
RFC 3164 tag) in the body; rayflume moves them to headers, so list them to keep them in the body
too. A leading UTF-8 BOM of an RFC 5424 MSG is removed.
"""
from __future__ import annotations

import calendar
import datetime as _dt
import re
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayflume.event import EventBatch
from rayflume.sources._framing import COMPLETE, CONTINUATION, batch_of, headers_from_columns

# The TCP framer lives with the other framers; it and its status codes stay importable from here,
# next to the parser that reads them.
from rayflume.sources._framing import HEAD as HEAD
from rayflume.sources._framing import StreamFramer as StreamFramer

STATUS_HEADER = "flume.syslog.status"
INVALID = "Invalid"
INCOMPLETE = "Incomplete"

H_FACILITY = "Facility"
H_SEVERITY = "Severity"
H_TIMESTAMP = "timestamp"
H_HOST = "host"
H_APP = "AppName"
H_PROC = "ProcId"
H_MSGID = "MsgId"
H_SD = "StructuredData"

FIELDS = ("priority", "version", "timestamp", "hostname", "app_name", "proc_id", "msg_id",
          "structured_data")
ALL = frozenset(FIELDS)
NONE: frozenset = frozenset()

_PRI = r"(?P<p_pri><(?P<pri>1[0-8][0-9]|19[01]|0?[0-9]{1,2})>)"
# The zone offset is optional: Flume reads a zone-less timestamp in the agent's zone, and senders
# that omit it are common enough that rejecting them would lose the whole header.
_ZONE = r"(?:Z|[+-][0-9]{2}:[0-9]{2})"
_TS3339 = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?" + _ZONE + "?"
_SDNAME = r'[!#-<>-\\^-~]+'  # PRINTUSASCII except '=', SP, ']' and '"'
_SD = r'(?:\[' + _SDNAME + r'(?: ' + _SDNAME + r'="(?:[^"\\]|\\.)*")*\])+'
# Counted repetitions ({1,255}) multiply RE2's NFA states and made extraction 2.5x slower, so
# the RFC's field length limits are not enforced.
RFC5424 = (r"(?s)^" + _PRI
           + r"(?P<p_ver>(?P<ver>[1-9][0-9]?) )"
           + r"(?P<p_ts>(?P<ts>-|" + _TS3339 + r") )"
           + r"(?P<p_host>(?P<host>[!-~]+) )"
           + r"(?P<p_app>(?P<app>[!-~]+) )"
           + r"(?P<p_proc>(?P<proc>[!-~]+) )"
           + r"(?P<p_msgid>(?P<msgid>[!-~]+) )"
           + r"(?P<p_sd>(?P<sd>-|" + _SD + r"))"
           + r"(?:(?P<p_sep> )(?:\xef\xbb\xbf)?(?P<msg>.*))?$")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# One or two spaces before a one- or two-digit day, as Flume accepts ("Oct  1", "Oct 11", "Oct  11").
_TSBSD = r"(?:" + "|".join(_MONTHS) + r") {1,2}[0-9]{1,2} [0-9]{2}:[0-9]{2}:[0-9]{2}"
# The loose header class (see the module docstring). The optional one-digit version and the
# optional space after it are Flume's: its patterns put ``(\d?)\s?`` between PRI and timestamp,
# so "<10>1 2012-...", "<10>2012-...", "<10> Oct 11 ..." and "<10>1 Oct 11 ..." all parse.
RFC3164 = (r"(?s)^" + _PRI
           + r"(?P<p_ver>[0-9]? ?)"
           + r"(?P<p_ts>(?P<ts>" + _TSBSD + r"|" + _TS3339 + r"|-)(?: |$))"
           # printable ASCII except '[' ']', not ending in ':' (a tag-only message has no host)
           + r"(?P<p_host>(?P<host>[!-Z\\^-~]*[!-9;-Z\\^-~]) )?"
           + r"(?P<p_tag>(?P<tag>[!-9;-Z\\^-~]+)(?:\[(?P<pid>[!-\\^-~]+)\])?: ?)?"
           + r"(?P<msg>.*)$")
PRI_ONLY = r"(?s)^" + _PRI + r"(?P<msg>.*)$"

_FACILITY_TEXT = pa.array([str(i) for i in range(24)], pa.string())
_SEVERITY_TEXT = pa.array([str(i) for i in range(8)], pa.string())
_MONTH_NUMBER = {m: i + 1 for i, m in enumerate(_MONTHS)}


def parse_keep_fields(value) -> frozenset:
    """``keep_fields`` from config: ``none``/``false``, ``all``/``true``, a list of field names
    or a space/comma-separated string of them (Flume's form). Raises ValueError on unknown names."""
    if value is None or value is False:
        return NONE
    if value is True:
        return ALL
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none", "false"):
            return NONE
        if text in ("all", "true"):
            return ALL
        names = [n for n in re.split(r"[\s,]+", text) if n]
    else:
        names = [str(n).strip().lower() for n in value]
    aliases = {"host": "hostname", "appname": "app_name", "procid": "proc_id", "msgid": "msg_id",
               "pri": "priority", "sd": "structured_data"}
    out = set()
    for name in names:
        name = aliases.get(name, name)
        if name not in FIELDS:
            raise ValueError(f"unknown field {name!r} in keep_fields; use none, all, or any of {', '.join(FIELDS)}")
        out.add(name)
    return frozenset(out)


# -- parsing ---------------------------------------------------------------------------------------

@dataclass
class ParseResult:
    batch: EventBatch
    counts: dict = field(default_factory=dict)  # rfc5424, rfc3164, pri_only, invalid, incomplete


def _nullify(arr: pa.Array, *blank: bytes) -> pa.Array:
    """``arr`` with the values in ``blank`` (RFC 5424 nil ``-``, a group that did not take part)
    made null."""
    mask = None
    for b in blank:
        m = pc.equal(arr, pa.scalar(b, pa.binary()))
        mask = m if mask is None else pc.or_(mask, m)
    return pc.if_else(mask, pa.scalar(None, arr.type), arr)


def _ascii(arr: pa.Array) -> pa.Array:
    return arr.cast(pa.string())


def _text(arr: pa.Array) -> pa.Array:
    """Binary -> string; invalid UTF-8 is replaced (per value, only when the fast cast fails)."""
    try:
        return arr.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([None if v is None else v.decode("utf-8", "replace") for v in arr.to_pylist()],
                        pa.string())


def _rfc3339_ms_one(text: str) -> int | None:
    """Epoch ms of one RFC 3339 timestamp with a zone offset (None if impossible): the slow path
    for what Arrow's cast rejects (a leap second, month 13, a year outside 1678-2261)."""
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})", text)
    if m is None:
        return None
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    frac = (m.group(7) or "0")[:3].ljust(3, "0")
    zone = m.group(8)
    try:
        base = _dt.datetime(y, mo, d, h, mi, min(s, 59), tzinfo=_dt.timezone.utc)
    except ValueError:
        return None
    offset = 0
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return int(calendar.timegm(base.timetuple()) - offset) * 1000 + int(frac)


def _ns_to_ms(ts: pa.Array) -> pa.Array:
    ns = ts.cast(pa.int64())
    # floor, not truncation toward zero: before 1970 too the fraction's digits beyond ms are cut
    ms = np.floor_divide(np.asarray(ns.fill_null(0), dtype=np.int64), 1_000_000)
    return pa.array(ms, pa.int64(), mask=np.asarray(ns.is_null(), dtype=bool) if ns.null_count else None)


def _values_and_validity(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """An int64 array as (writable values with 0 for null, validity mask)."""
    values = np.array(arr.fill_null(0), dtype=np.int64)
    valid = np.asarray(arr.is_valid(), dtype=bool) if arr.null_count else np.ones(len(arr), dtype=bool)
    return values, valid


def _zoned_ms(text: pa.Array) -> pa.Array:
    try:
        return _ns_to_ms(text.cast(pa.timestamp("ns", tz="UTC")))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _per_distinct(text, _rfc3339_ms_one)


def rfc3339_ms(values: pa.Array) -> pa.Array:
    """Epoch milliseconds (int64, null where absent or invalid) of RFC 3339 timestamps, the
    fraction cut to milliseconds. One without a zone offset is in the agent's local time zone."""
    text = values if values.type == pa.string() else values.cast(pa.string())
    try:
        return _ns_to_ms(text.cast(pa.timestamp("ns", tz="UTC")))  # the usual case: all zoned and valid
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _mixed_zone_ms(text)


def _mixed_zone_ms(text: pa.Array) -> pa.Array:
    """:func:`rfc3339_ms` for timestamps with or without a zone offset. Sorting them out first is
    cheaper than a failed cast: Arrow's cast error costs about as much as a whole cast."""
    zoneless = np.asarray(pc.invert(pc.match_substring_regex(text, _ZONE + "$")).fill_null(False), dtype=bool)
    if not zoneless.any():
        return _zoned_ms(text)
    # Read the zone-less ones as UTC wall-clock time first, then move them by the local offset.
    marked = pc.if_else(pa.array(zoneless), pc.binary_join_element_wise(text, "Z", ""), text)
    ms, valid = _values_and_validity(_zoned_ms(marked))
    rows = np.flatnonzero(zoneless & valid)
    ms[rows], valid[rows] = _local_wall_clock_ms(ms[rows])
    return pa.array(ms, pa.int64(), mask=~valid)


def _local_wall_clock_ms(wall_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Epoch ms of local wall-clock times given as if they were UTC, and which could be converted.

    The zone's UTC offset is looked up once per distinct minute (zone offsets change on minute
    boundaries), so a batch costs a few ``mktime`` calls, not one per message. A wall-clock time
    that does not exist or exists twice (a DST change) is resolved as ``mktime`` does."""
    minutes, inverse = np.unique(np.floor_divide(wall_ms, 60_000), return_inverse=True)
    offsets_s = np.zeros(len(minutes), dtype=np.int64)
    ok = np.ones(len(minutes), dtype=bool)
    for i, minute in enumerate(minutes.tolist()):
        try:
            fields = time.gmtime(minute * 60)
            offsets_s[i] = minute * 60 - int(time.mktime(tuple(fields[:8]) + (-1,)))
        except (OverflowError, ValueError, OSError):
            ok[i] = False
    return wall_ms - offsets_s[inverse] * 1000, ok[inverse]


def _per_distinct(text: pa.Array, convert) -> pa.Array:
    distinct = pc.unique(text).drop_null()
    converted = pa.array([convert(v) for v in distinct.to_pylist()], pa.int64())
    return converted.take(pc.index_in(text, value_set=distinct))


def bsd_ms(text: str, now_s: float) -> int | None:
    """Epoch ms of an RFC 3164 ``Mmm d hh:mm:ss`` in local time, in the latest year that puts it
    at most one calendar month after ``now_s`` (None for an impossible date such as Feb 30).

    This is Flume's window: a log line is about the recent past (Dec 31 read on Jan 1 is last
    year's), but a sender's clock may run ahead, and Flume accepts up to a month of that."""
    parts = text.split()
    if len(parts) != 3:
        return None
    month = _MONTH_NUMBER.get(parts[0])
    try:
        day = int(parts[1])
        h, mi, s = (int(x) for x in parts[2].split(":"))
    except ValueError:
        return None
    if month is None:
        return None
    if not (0 <= h < 24 and 0 <= mi < 60 and 0 <= s <= 60):
        return None
    s = min(s, 59)
    year = time.localtime(now_s).tm_year
    for y in (year + 1, year, year - 1):
        try:
            _dt.date(y, month, day)
        except ValueError:
            continue
        # One calendar month before the date, the day clamped to that month (Mar 31 -> Feb 28).
        earlier_y, earlier_m = (y, month - 1) if month > 1 else (y - 1, 12)
        earlier_d = min(day, calendar.monthrange(earlier_y, earlier_m)[1])
        if time.mktime((earlier_y, earlier_m, earlier_d, h, mi, s, 0, 0, -1)) <= now_s:
            return int(time.mktime((y, month, day, h, mi, s, 0, 0, -1))) * 1000
    return None


def _timestamps_3164(ts: pa.Array, now_s: float) -> pa.Array:
    """Epoch ms of the loose class's timestamps: RFC 3339 (vectorised), RFC 3164 dates (once per
    distinct value: they have no fraction and repeat within a batch) or ``-`` (null)."""
    text = _nullify(ts, b"-").cast(pa.string())
    iso = np.asarray(pc.match_substring_regex(text, "^[0-9]").fill_null(False), dtype=bool)
    if iso.all():
        return _mixed_zone_ms(text)  # zone-less timestamps are common here: no cast attempt first
    if not iso.any():
        return _per_distinct(text, lambda v: bsd_ms(v, now_s))
    ms = np.zeros(len(text), dtype=np.int64)
    valid = np.zeros(len(text), dtype=bool)
    for rows, convert in ((np.flatnonzero(iso), _mixed_zone_ms),
                          (np.flatnonzero(~iso), lambda t: _per_distinct(t, lambda v: bsd_ms(v, now_s)))):
        ms[rows], valid[rows] = _values_and_validity(convert(text.take(pa.array(rows))))
    return pa.array(ms, pa.int64(), mask=~valid)


def _join(parts: list[pa.Array]) -> pa.Array:
    parts = [p.fill_null(b"") if p.null_count else p for p in parts]
    if len(parts) == 1:
        return parts[0]
    return pc.binary_join_element_wise(*parts, pa.scalar(b"", pa.binary()))


class _Class:
    """Columns of one class of messages (all arrays of the class's length)."""

    def __init__(self, rows: np.ndarray, body: pa.Array, headers: dict[str, pa.Array | None]):
        self.rows = rows
        self.body = body
        self.headers = headers


def _pri_headers(pri: pa.Array) -> dict[str, pa.Array]:
    values = np.asarray(pri.cast(pa.string()).cast(pa.int32()), dtype=np.int32)
    return {H_FACILITY: _FACILITY_TEXT.take(pa.array(values >> 3)),
            H_SEVERITY: _SEVERITY_TEXT.take(pa.array(values & 7))}


def _ms_text(ms: pa.Array) -> pa.Array:
    return ms.cast(pa.string())


def _body(f: dict[str, pa.Array], raw: pa.Array, keep: frozenset, order: tuple[tuple[str, str], ...],
          extra: list[pa.Array]) -> pa.Array:
    """The bodies of one class of messages: the raw messages (``keep`` is ALL), the MSG parts (none
    kept), or the kept fields' text (the columns of ``order``'s kept names, then ``extra``) before
    the MSG parts."""
    if keep == ALL:
        return raw
    if not keep:
        return f["msg"]
    return _join([f[col] for name, col in order if name in keep] + extra + [f["msg"]])


def _rfc5424(m: pa.StructArray, raw: pa.Array, keep: frozenset, rows: np.ndarray) -> _Class:
    f = {name: m.field(name) for name in ("p_pri", "pri", "p_ver", "p_ts", "ts", "p_host", "host", "p_app",
                                          "app", "p_proc", "proc", "p_msgid", "msgid", "p_sd", "sd", "p_sep",
                                          "msg")}
    headers = _pri_headers(f["pri"])
    headers[H_TIMESTAMP] = _ms_text(rfc3339_ms(_nullify(f["ts"], b"-")))
    headers[H_HOST] = _ascii(_nullify(f["host"], b"-"))
    headers[H_APP] = _ascii(_nullify(f["app"], b"-"))
    headers[H_PROC] = _ascii(_nullify(f["proc"], b"-"))
    headers[H_MSGID] = _ascii(_nullify(f["msgid"], b"-"))
    headers[H_SD] = _text(_nullify(f["sd"], b"-"))
    order = (("priority", "p_pri"), ("version", "p_ver"), ("timestamp", "p_ts"), ("hostname", "p_host"),
             ("app_name", "p_app"), ("proc_id", "p_proc"), ("msg_id", "p_msgid"))
    sd = [f["p_sd"], f["p_sep"]] if "structured_data" in keep else []
    return _Class(rows, _body(f, raw, keep, order, sd), headers)


def _rfc3164(m: pa.StructArray, raw: pa.Array, keep: frozenset, rows: np.ndarray, now_s: float) -> _Class:
    f = {name: m.field(name) for name in ("p_pri", "pri", "p_ver", "p_ts", "ts", "p_host", "host", "p_tag",
                                          "tag", "pid", "msg")}
    headers = _pri_headers(f["pri"])
    headers[H_TIMESTAMP] = _ms_text(_timestamps_3164(f["ts"], now_s))
    # b"": the optional host group did not take part; b"-": the nil host of Flume's loose RFC 5424 form
    headers[H_HOST] = _ascii(_nullify(f["host"], b"", b"-"))
    headers[H_APP] = _ascii(_nullify(f["tag"], b""))
    headers[H_PROC] = _ascii(_nullify(f["pid"], b""))
    order = (("priority", "p_pri"), ("version", "p_ver"), ("timestamp", "p_ts"), ("hostname", "p_host"))
    tag = [f["p_tag"]] if "app_name" in keep or "proc_id" in keep else []
    return _Class(rows, _body(f, raw, keep, order, tag), headers)


def _pri_only(m: pa.StructArray, raw: pa.Array, keep: frozenset, rows: np.ndarray) -> _Class:
    headers = _pri_headers(m.field("pri"))
    if keep == ALL:
        body = raw
    elif "priority" in keep:
        body = _join([m.field("p_pri"), m.field("msg")])
    else:
        body = m.field("msg")
    return _Class(rows, body, headers)


HEADER_ORDER = (H_FACILITY, H_SEVERITY, H_TIMESTAMP, H_HOST, H_APP, H_PROC, H_MSGID, H_SD)


def parse_messages(frames, keep_fields: frozenset = NONE, status: np.ndarray | None = None,
                   extra_headers: list[tuple[str, pa.Array | None]] | None = None,
                   now_s: float | None = None) -> ParseResult:
    """Parse raw syslog messages into one :class:`EventBatch`, in the same order.

    ``frames``: a binary array (or a list of bytes). ``status``: the framer's codes per frame
    (None: all complete). ``extra_headers``: ``[(name, string array or None)]`` added after the
    syslog headers (client address, host name). Never raises on any input bytes.
    """
    if not isinstance(frames, pa.Array):
        frames = pa.array(list(frames), pa.binary())
    if frames.type != pa.binary():
        frames = frames.cast(pa.binary())
    if frames.null_count:
        frames = frames.fill_null(b"")
    n = len(frames)
    now_s = time.time() if now_s is None else now_s
    counts = {"rfc5424": 0, "rfc3164": 0, "pri_only": 0, "invalid": 0, "incomplete": 0}
    if n == 0:
        return ParseResult(EventBatch.empty(), counts)

    codes = np.zeros(n, dtype=np.int8) if status is None else np.asarray(status, dtype=np.int8)
    classes: list[_Class] = []
    todo = np.flatnonzero(codes != CONTINUATION)
    continuation = np.flatnonzero(codes == CONTINUATION)

    def subset(rows: np.ndarray) -> pa.Array:
        return frames if len(rows) == n else frames.take(pa.array(rows))

    stages = (("rfc5424", RFC5424, lambda m, raw, rows: _rfc5424(m, raw, keep_fields, rows)),
              ("rfc3164", RFC3164, lambda m, raw, rows: _rfc3164(m, raw, keep_fields, rows, now_s)),
              ("pri_only", PRI_ONLY, lambda m, raw, rows: _pri_only(m, raw, keep_fields, rows)))
    for label, pattern, build in stages:
        if len(todo) == 0:
            break
        raw = subset(todo)
        m = pc.extract_regex(raw, pattern)
        matched = np.asarray(m.is_valid(), dtype=bool) if m.null_count else np.ones(len(todo), dtype=bool)
        if matched.any():
            if matched.all():
                hit_rows, hit_raw, hit_m = todo, raw, m
            else:
                sel = pa.array(matched)
                hit_rows, hit_raw, hit_m = todo[matched], raw.filter(sel), m.filter(sel)
            classes.append(build(hit_m, hit_raw, hit_rows))
            counts[label] = len(hit_rows)
        todo = todo[~matched]

    status_text = np.full(n, None, dtype=object)
    if len(todo):
        # Flume gives every event Facility and Severity, 0 when the priority cannot be read, so a
        # selector or interceptor keyed on them still sees a value.
        zeros = pa.repeat(pa.scalar("0", pa.string()), len(todo))
        classes.append(_Class(todo, subset(todo), {H_FACILITY: zeros, H_SEVERITY: zeros}))
        counts["invalid"] = len(todo)
        status_text[todo] = INVALID
    if len(continuation):
        classes.append(_Class(continuation, subset(continuation), {}))
    incomplete = codes != COMPLETE
    status_text[incomplete] = INCOMPLETE
    counts["incomplete"] = int(incomplete.sum())

    # Put the classes back in input order: concatenate each column over the classes, then take
    # by the inverse of the concatenated row order.
    order = np.concatenate([c.rows for c in classes])
    if len(classes) == 1 and np.array_equal(order, np.arange(n)):
        inverse = None
    else:
        inverse = np.empty(n, dtype=np.int64)
        inverse[order] = np.arange(n, dtype=np.int64)
        inverse = pa.array(inverse)

    def merged(pieces: list[pa.Array]) -> pa.Array:
        arr = pieces[0] if len(pieces) == 1 else pa.concat_arrays(pieces)
        return arr if inverse is None else arr.take(inverse)

    body = merged([c.body for c in classes])
    columns = []
    for key in HEADER_ORDER:
        if not any(c.headers.get(key) is not None for c in classes):
            continue
        columns.append((key, merged([c.headers[key] if c.headers.get(key) is not None
                                     else pa.nulls(len(c.rows), pa.string()) for c in classes])))
    for key, values in extra_headers or ():
        if values is not None:
            columns.append((key, values))
    if counts["invalid"] or counts["incomplete"]:
        columns.append((STATUS_HEADER, pa.array(status_text, pa.string())))
    return ParseResult(batch_of(headers_from_columns(n, columns), body), counts)


def raw_invalid(frames, extra_headers=None) -> EventBatch:
    """Every frame as an Invalid event with its raw bytes (the fallback if parsing ever fails)."""
    if not isinstance(frames, pa.Array):
        frames = pa.array(list(frames), pa.binary())
    n = len(frames)
    zeros = pa.repeat(pa.scalar("0", pa.string()), n)
    columns = ([(H_FACILITY, zeros), (H_SEVERITY, zeros)] + list(extra_headers or [])
               + [(STATUS_HEADER, pa.repeat(pa.scalar(INVALID, pa.string()), n))])
    return batch_of(headers_from_columns(n, columns), frames.fill_null(b"") if frames.null_count else frames)
