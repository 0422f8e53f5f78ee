"""The ``http`` sink: POSTs each batch to an HTTP endpoint (Flume's ``HttpSink``).

Unlike Flume, which sends one request per event, a batch is one POST whose body is, by
``format``:

* ``json_lines`` (default): one JSON object per event and line,
  ``{"headers": {"k": "v"}, "body": "..."}`` (the shape of Flume's JSON HTTP handler); the body
  is the event's bytes decoded as UTF-8, invalid bytes replaced by U+FFFD. Content type
  ``application/x-ndjson`` unless ``content_type_header`` says otherwise.
* ``raw``: the bodies, each followed by a newline. Content type ``text/plain`` by default.

The payload is built with Arrow kernels for the whole batch (JSON escaping included).

Response handling, as in Flume: the response's status code decides whether the take is committed
or rolled back, and whether the sink backs off. ``rollback`` and ``backoff`` map a status code
(``"503"``) or a class (``"5XX"``) to true/false; the most specific rule wins: the exact code,
then the class, then ``default_rollback`` / ``default_backoff`` (both true). One deliberate
difference: Flume applies the defaults to 2XX too, so an unconfigured Flume HTTP sink rolls
back every successful request; here ``2XX`` commits without back-off unless ``rollback`` /
``backoff`` name a 2XX code or class. A connection failure, a timeout, or a malformed status
rolls back and backs off.

* Rolled back: ``write`` raises, the runner rolls the take back and backs off (the runner always
  backs off after a failure, so "rollback without back-off" still waits a little).
* Committed with back-off (e.g. ``rollback: {"4XX": false}`` with the default back-off): the
  events are discarded (counted in ``EventDiscardedCount``) and the next request waits
  ``backoff_s``, doubling up to ``max_backoff_s`` while such responses continue.

Delivery: at-least-once for what is committed on 2XX (a batch rolled back after the server
processed it is sent again). The connection is kept alive between batches and reopened after any
error. ``connect_timeout_s`` bounds the connection, ``request_timeout_s`` each read and write on it.

HTTPS: the server's certificate is verified (and its host name checked) against ``ssl_ca_file``
(a PEM CA bundle), or the system's CAs without it. For a server that wants mutual TLS,
``ssl_certfile`` (PEM certificate chain) and ``ssl_keyfile`` (its PEM key; None: the key is in
``ssl_certfile``) are the client certificate. The files are read at start, on the sink's node; a
server that refuses the certificate fails the POST like any connection failure (rolled back).

Called from one thread at a time (see :class:`~rayflume.sinks.base.Sink`).
"""
from __future__ import annotations

import http.client
import logging
import re
import socket
import ssl
import time
from typing import Literal
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from rayflume.config_base import SinkConfig
from rayflume.errors import DeliveryError, RayflumeError
from rayflume.event import EventBatch
from rayflume.registry import register
from rayflume.sinks.base import Sink, SinkContext
from rayflume.sinks.serializers import TextSerializer, values_buffer
from rayflume.sources._tls import unreadable_files

log = logging.getLogger("rayflume.sink.http")

_RULE_KEY = re.compile(r"^[1-5](?:[0-9]{2}|XX)$")
# What a 2XX response does unless a rule names it (see the module docstring).
_SUCCESS_RULES = {"2XX": False}
_MAX_RESPONSE_READ = 1 << 16


# -- status rules -------------------------------------------------------------------------------------
def normalise_rules(rules: dict, what: str) -> dict[str, bool]:
    """``{"503": true, "5xx": false}`` -> upper-case keys, bool values; ValueError on a bad key."""
    out: dict[str, bool] = {}
    for key, value in (rules or {}).items():
        k = str(key).strip().upper()
        if not _RULE_KEY.match(k):
            raise ValueError(f"http sink: `{what}` key {key!r} is not a status code (\"503\") or class (\"5XX\")")
        if not isinstance(value, bool):
            raise ValueError(f"http sink: `{what}.{key}` must be true or false")
        out[k] = value
    return out


def decide(status: int, rules: dict[str, bool], default: bool) -> bool:
    """The most specific rule for ``status``: exact code, then class, then 2XX success, then default."""
    code = str(status)
    if code in rules:
        return rules[code]
    cls = code[0] + "XX"
    if cls in rules:
        return rules[cls]
    if cls in _SUCCESS_RULES:
        return _SUCCESS_RULES[cls]
    return default


# -- JSON lines with Arrow ---------------------------------------------------------------------------------
_SIMPLE_ESCAPES = [("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"),
                   ("\b", "\\b"), ("\f", "\\f")]
_OTHER_CONTROLS = [chr(c) for c in range(32) if chr(c) not in "\n\r\t\b\f"]


def json_escape(values: pa.Array) -> pa.Array:
    """JSON string escaping of every value of a string array (without the quotes)."""
    out = values
    for raw, escaped in _SIMPLE_ESCAPES:
        if pc.any(pc.match_substring(out, raw)).as_py():
            out = pc.replace_substring(out, raw, escaped)
    if pc.any(pc.match_substring_regex(out, "[\\x00-\\x1f]")).as_py():
        for ch in _OTHER_CONTROLS:
            if pc.any(pc.match_substring(out, ch)).as_py():
                out = pc.replace_substring(out, ch, f"\\u{ord(ch):04x}")
    return out


def as_text(values: pa.Array) -> pa.Array:
    """Binary values as UTF-8 strings; invalid bytes become U+FFFD (decoded in Python only then)."""
    try:
        return values.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([None if v is None else v.decode("utf-8", "replace") for v in values.to_pylist()],
                        pa.string())


def json_lines(batch: EventBatch) -> pa.Buffer:
    """``{"headers":{...},"body":"..."}\\n`` per event, as one buffer."""
    n = len(batch)
    if n == 0:
        return pa.py_buffer(b"")
    headers = batch.headers
    raw = np.asarray(headers.offsets, dtype=np.int64)
    start, end = int(raw[0]), int(raw[-1])
    keys = json_escape(headers.keys.slice(start, end - start))
    items = headers.items.slice(start, end - start)
    quoted_items = pc.binary_join_element_wise('"', json_escape(pc.fill_null(items, "")), '"', "")
    if items.null_count:
        quoted_items = pc.if_else(items.is_valid(), quoted_items, pa.scalar("null", pa.string()))
    pairs = pc.binary_join_element_wise('"', keys, '":', quoted_items, "")
    per_event = pa.ListArray.from_arrays(pa.array(raw - start, pa.int32()), pairs)
    header_text = pc.binary_join(per_event, ",")
    if headers.null_count:
        header_text = pc.if_else(headers.is_valid(), header_text, pa.scalar("", pa.string()))
    body = json_escape(as_text(pc.fill_null(batch.body, b"")))
    lines = pc.binary_join_element_wise('{"headers":{', header_text, '},"body":"', body, '"}\n', "")
    return values_buffer(lines)


# -- TLS -------------------------------------------------------------------------------------------------
_TLS_FILE_KEYS = ("ssl_certfile", "ssl_keyfile", "ssl_ca_file")


class TlsUnavailable(RayflumeError):
    """The http sink's certificate, key or CA bundle cannot be loaded on its node."""


def _no_password():
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's password.
    raise ValueError("the private key is encrypted; give an unencrypted PEM key (readable only by the user that "
                     "runs rayflume)")


def client_tls_problems(who: str, certfile: str | None, keyfile: str | None,
                        cafile: str | None) -> tuple[ssl.SSLContext | None, list[str]]:
    """(the client context, []) or (None, why it cannot be made here). Messages name the files by
    path, never their contents."""
    problems = unreadable_files(who, dict(zip(_TLS_FILE_KEYS, (certfile, keyfile, cafile))), "sink")
    if problems:
        return None, problems
    try:
        ctx = ssl.create_default_context(cafile=cafile)  # None: the system's CAs
    except (OSError, ssl.SSLError, ValueError) as exc:
        return None, [f"{who}: cannot load the CA bundle `ssl_ca_file` {cafile!r} ({exc}); give a PEM file of "
                      f"the CA certificates that sign the server's certificate"]
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile:
        try:
            ctx.load_cert_chain(certfile, keyfile, password=_no_password)
        except (OSError, ssl.SSLError, ValueError) as exc:
            return None, [f"{who}: cannot load the client certificate/key ({exc}); give a PEM certificate in "
                          f"`ssl_certfile` and its key in `ssl_keyfile`"]
    return ctx, []


class HttpSink(Sink):
    """POSTs batches; see the module docstring for the status-code rules and the guarantees."""

    def __init__(self, name: str, config: "HttpSinkConfig"):
        self.name = name
        self.endpoint = config.endpoint
        parts = urlsplit(config.endpoint)  # the config checked the scheme, host and TLS keys
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.ssl_certfile = config.ssl_certfile
        self.ssl_keyfile = config.ssl_keyfile
        self.ssl_ca_file = config.ssl_ca_file
        self._ssl_context: ssl.SSLContext | None = None
        self.connect_timeout_s = config.connect_timeout_s
        self.request_timeout_s = config.request_timeout_s
        self.format = config.format
        self.content_type = config.content_type_header or ("application/x-ndjson" if config.format == "json_lines"
                                                           else "text/plain")
        self.accept = config.accept_header
        self.default_backoff = config.default_backoff
        self.default_rollback = config.default_rollback
        self.backoff_rules = config.backoff  # normalised by the config
        self.rollback_rules = config.rollback
        self.backoff_s = config.backoff_s
        self.max_backoff_s = config.max_backoff_s
        self.extra_headers = dict(config.request_headers)
        self.batch_size = config.batch_size
        self.context = SinkContext(name=name)
        self._conn: http.client.HTTPConnection | None = None
        self._text = TextSerializer(append_newline=True)
        self._pause_until = 0.0
        self._next_pause = config.backoff_s
        self.sleep = time.sleep  # injectable for tests

    def start(self, context: SinkContext) -> None:
        super().start(context)
        if self._scheme == "https":
            self._tls()  # the files are read here, on the sink's node: a problem is the sink's start error

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            ctx, problems = client_tls_problems(f"http sink '{self.name}'", self.ssl_certfile, self.ssl_keyfile,
                                                self.ssl_ca_file)
            if problems:
                raise TlsUnavailable("; ".join(problems))
            self._ssl_context = ctx
        return self._ssl_context

    def stop(self) -> None:
        self._close()

    # -- delivery ---------------------------------------------------------------------------------
    def write(self, batch: EventBatch) -> None:
        n = len(batch)
        if n == 0:
            return
        wait = self._pause_until - time.monotonic()
        if wait > 0:
            self.sleep(wait)
        payload = json_lines(batch) if self.format == "json_lines" else self._text.serialize(batch)
        try:
            status = self._post(payload)
        except (OSError, http.client.HTTPException) as exc:
            self._close()
            self.context.count("ConnectionFailedCount")
            raise DeliveryError(f"http sink '{self.name}': POST to {self.endpoint} failed: {exc!r}; the take of "
                                f"{n} events is rolled back") from exc
        self.context.count(f"HttpResponse{str(status)[0]}XXCount")
        if status < 100:
            raise DeliveryError(f"http sink '{self.name}': malformed status {status} from {self.endpoint}; rolled back")
        rollback = decide(status, self.rollback_rules, self.default_rollback)
        backoff = decide(status, self.backoff_rules, self.default_backoff)
        if rollback:
            raise DeliveryError(f"http sink '{self.name}': {self.endpoint} answered {status}; the take of {n} events "
                                f"is rolled back and retried")
        if status // 100 != 2:
            self.context.count("EventDiscardedCount", n)
            log.warning("http sink '%s': %s answered %d; committing (discarding) %d events as configured",
                        self.name, self.endpoint, status, n)
        if backoff:
            self._pause_until = time.monotonic() + self._next_pause
            self._next_pause = min(self.max_backoff_s, self._next_pause * 2)
        else:
            self._pause_until = 0.0
            self._next_pause = self.backoff_s

    def _post(self, payload) -> int:
        conn = self._conn or self._connect()
        headers = {"Content-Type": self.content_type, "Accept": self.accept,
                   "Content-Length": str(len(payload)), **self.extra_headers}
        conn.request("POST", self._path, body=memoryview(payload), headers=headers)
        resp = conn.getresponse()
        resp.read(_MAX_RESPONSE_READ)
        if not resp.isclosed() or resp.will_close:
            # An unread remainder or a server closing the connection: start fresh next time.
            self._close()
        return resp.status

    def _connect(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.connect_timeout_s,
                                               context=self._tls())
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.connect_timeout_s)
        conn.connect()
        conn.sock.settimeout(self.request_timeout_s)
        if isinstance(conn.sock, socket.socket):
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = conn
        self.context.count("ConnectionCreatedCount")
        return conn

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
            self.context.count("ConnectionClosedCount")


@register("sink", "http")
class HttpSinkConfig(SinkConfig):
    """``http``: one POST per batch; status codes decide commit or rollback (Flume's HttpSink)."""

    endpoint: str = Field(min_length=1, description="The URL to POST to (http:// or https://).")
    connect_timeout_s: float = Field(5.0, gt=0, description="Connection timeout (Flume's connectTimeout).")
    request_timeout_s: float = Field(5.0, gt=0, description="Timeout of each read/write (Flume's requestTimeout).")
    content_type_header: str | None = Field(None, description="Content-Type; default by format.")
    accept_header: str = Field("text/plain", description="Accept header.")
    format: Literal["json_lines", "raw"] = Field("json_lines", description="json_lines or raw bodies.")
    default_backoff: bool = Field(True, description="Back off after a status no rule names.")
    default_rollback: bool = Field(True, description="Roll back after a status no rule names.")
    backoff: dict[str, bool] = Field(default_factory=dict, description="Status code or class -> back off.")
    rollback: dict[str, bool] = Field(default_factory=dict, description="Status code or class -> roll back.")
    backoff_s: float = Field(1.0, gt=0, description="First pause after a committed response with back-off.")
    max_backoff_s: float = Field(30.0, gt=0, description="Longest such pause (doubling).")
    request_headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    ssl_certfile: str | None = Field(None, description="https: PEM client certificate (chain) for servers that "
                                                       "require mutual TLS.")
    ssl_keyfile: str | None = Field(None, description="https: PEM key of ssl_certfile; None: the key is in "
                                                      "ssl_certfile.")
    ssl_ca_file: str | None = Field(None, description="https: PEM CA bundle that verifies the server's "
                                                      "certificate; None: the system's CAs.")

    @field_validator("backoff", "rollback", mode="before")
    @classmethod
    def _rules(cls, v, info):
        return normalise_rules({str(k): val for k, val in (v or {}).items()}, info.field_name)

    @model_validator(mode="after")
    def _check(self):
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"http sink: `endpoint` must be an http:// or https:// URL, got {self.endpoint!r}")
        try:
            parts.port
        except ValueError as exc:
            raise ValueError(f"http sink: `endpoint` has a bad port: {exc}") from None
        tls_keys = [k for k in _TLS_FILE_KEYS if getattr(self, k) is not None]
        if tls_keys and parts.scheme != "https":
            keys = ", ".join(f"`{k}`" for k in tls_keys)
            raise ValueError(f"http sink: {keys} {'is' if len(tls_keys) == 1 else 'are'} set but `endpoint` "
                             f"{self.endpoint!r} is not https://; use an https:// endpoint or remove them")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("http sink: `ssl_keyfile` is set without `ssl_certfile`; give the PEM client "
                             "certificate in `ssl_certfile` too, or remove `ssl_keyfile`")
        return self

    def check(self) -> list[str]:
        """Whether this machine can load the TLS files; the sink loads them on its node at start."""
        if urlsplit(self.endpoint).scheme != "https":
            return []
        return client_tls_problems("http sink", self.ssl_certfile, self.ssl_keyfile, self.ssl_ca_file)[1]

    def build(self, name: str) -> HttpSink:
        return HttpSink(name, self)
