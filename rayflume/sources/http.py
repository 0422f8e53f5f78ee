"""The ``http`` source (Flume's HTTP source): events POSTed over HTTP(S), one transaction per request.

Every request is answered only once its fate is known:

===== ====================================================================================
200   every event of the request was committed to every required channel (after ``ack``)
400   the body cannot be turned into events (bad JSON, wrong shape); the message says why
401   a token is required (``auth_token``, ``auth_token_file`` or the named ``auth_tokens``) and
      the request has no ``Authorization: Bearer <token>`` or none of them (compared in constant
      time with ``hmac.compare_digest``)
405   any method but POST
411   no Content-Length (chunked uploads are not supported)
413   the request is longer than ``max_request_bytes``, parsing it would take more than
      ``max_parse_bytes``, an event body is longer than
      ``max_event_size_bytes``, or the request holds more events than the channel's
      ``transaction_capacity``
415   the Content-Type names a charset Python does not know
503   a required channel is full or unreachable (nothing of the request was committed), the
      source's queue or ``memory_budget_bytes`` is full, the source is stopping, or the commit did not finish within
      ``commit_timeout_s``; ``Retry-After`` is set. Only in the last case may the events still
      be committed later (the message says so), so a retry can duplicate them.
===== ====================================================================================

Handlers: ``json`` (Flume's JSONHandler): the body is a JSON array of ``{"headers": {...},
"body": "..."}``; the body text is encoded with the request's charset (Content-Type
``charset``, UTF-8 by default); header values must be strings (numbers and booleans are
converted, as Gson does in Flume). ``blob`` (Flume's BlobHandler): the raw request body is one
event; with ``blob_query_headers`` the query parameters become headers (first value of each).

Requests are served by ``http.server.ThreadingHTTPServer`` (HTTP/1.1 keep-alive) on the shared
server core: a thread per connection while a request is being served; a keep-alive connection idle
between requests is parked and holds no thread. At most ``max_connections`` connections (more get a
503 and are closed), and the client limits of :mod:`rayflume.sources._limits` (``allowed_clients``,
``max_connections_per_client``, ``idle_timeout_s`` between requests, and ``request_timeout_s``
for a whole request, head and body, from its first byte). A request is handed to the runner
through a bounded queue; several queued requests may be committed in one channel put (each is
still all-or-nothing). Memory: a body's length is reserved from ``memory_budget_bytes`` (shared by
all connections) before it is read, and its estimated parse cost before it is parsed; a body
whose parse would take more than ``max_parse_bytes`` (many tiny events) gets 413, a full budget
503. Optional TLS (``ssl``, ``ssl_certfile``, ``ssl_keyfile``); the handshake runs in the
connection's thread.

Delivery: at least once for a client that retries until it gets 200: a 200 is sent only after
the commit; a crash before it loses nothing the client was told was accepted.

Metrics beyond the runner's: ``BoundPort``, ``OpenConnectionCount``, ``ConnectionAcceptedCount``,
``ConnectionRejectedCount``, ``TlsHandshakeFailCount``, ``EventRejectedCount`` (events of
well-formed requests refused because the queue was full or the source stopping; the runner adds
those refused by a full channel), one ``HttpNNNCount`` per status code answered, and the
client-limit counters of :mod:`rayflume.sources._limits`.
"""
from __future__ import annotations

import contextlib
import hmac
import io
import json
import logging
import os
import re
import socket
import socketserver
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

import pyarrow as pa
from pydantic import Field, SecretStr, model_validator

from rayflume.errors import RayflumeError
from rayflume.event import HEADERS_TYPE, EventBatch
from rayflume.registry import register
from rayflume.sources._framing import batch_of, headers_from_columns
from rayflume.sources._limits import ByteBudget, ClientLimitsConfig, ConnectionTracker, Watch
from rayflume.sources._network import CONNECTION_COUNTERS, NetworkSourceConfig, family_of, is_loopback
from rayflume.sources._queued import ReplyingSource
from rayflume.sources._server import LimitedServerMixin, ServerThread, bind_or_close
from rayflume.sources._tls import TlsConfig, resolve_tls

log = logging.getLogger("rayflume.source.http")

STOP_GRACE_S = 2.0
DEFAULT_MAX_PARSE_BYTES = 256 << 20
DEFAULT_MEMORY_BUDGET_BYTES = 512 << 20
DEFAULT_TOKEN_NAME = "default"
TOKEN_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SECRET_REF = re.compile(r"^\$\{(env|file):([^}]+)\}$")
JSON_OBJECT_COST = 512  # bytes of Python objects per parsed JSON object, rounded up from measurement
STATUS_CODES = (200, 400, 401, 404, 405, 408, 411, 413, 415, 500, 503)
HTTP_COUNTERS = CONNECTION_COUNTERS + ("BoundPort",) + tuple(f"Http{c}Count" for c in STATUS_CODES)


class HttpError(Exception):
    """A request that cannot be accepted: ``status`` (4xx/5xx) and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# -- handlers --------------------------------------------------------------------------------------

def charset_of(content_type: str | None) -> str:
    """The ``charset`` parameter of a Content-Type header, UTF-8 when absent."""
    if content_type:
        for param in content_type.split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset" and value.strip():
                return value.strip().strip('"')
    return "utf-8"


def _header_value(i: int, key, value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    raise HttpError(400, f"event {i}: header {key!r} must be a string, not {type(value).__name__}")


def parse_json_events(body: bytes, content_type: str | None = None,
                      max_event_size_bytes: int | None = None) -> EventBatch:
    """Flume's JSONHandler: a JSON array of ``{"headers": {str: str}, "body": str}`` -> a batch.

    Raises :class:`HttpError` (400, 413 or 415) for anything else; never another exception.
    """
    charset = charset_of(content_type)
    try:
        text = body.decode(charset)
    except LookupError:
        raise HttpError(415, f"unsupported charset {charset!r} in Content-Type") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise HttpError(400, f"the request body is not valid {charset}: {exc}") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise HttpError(400, 'expected a JSON array of {"headers": {...}, "body": "..."} objects, '
                             f'got a JSON {type(data).__name__}')
    headers: list[list[tuple[str, str]]] = []
    bodies: list[bytes] = []
    for i, event in enumerate(data):
        if not isinstance(event, dict):
            raise HttpError(400, f'event {i}: expected an object {{"headers": {{...}}, "body": "..."}}, '
                                 f'got {type(event).__name__}')
        h = event.get("headers")
        if h is None:
            h = {}
        if not isinstance(h, dict):
            raise HttpError(400, f"event {i}: 'headers' must be an object of strings")
        b = event.get("body")
        if b is None:
            b = ""
        if not isinstance(b, str):
            raise HttpError(400, f"event {i}: 'body' must be a string, not {type(b).__name__}")
        try:
            raw = b.encode(charset)
            pairs = [(k, _header_value(i, k, v)) for k, v in h.items()]
            for k, v in pairs:
                k.encode("utf-8")
                v.encode("utf-8")
        except UnicodeError as exc:
            raise HttpError(400, f"event {i}: text that cannot be encoded ({exc})") from None
        if max_event_size_bytes is not None and len(raw) > max_event_size_bytes:
            raise HttpError(413, f"event {i}: body of {len(raw)} bytes is longer than max_event_size_bytes="
                                 f"{max_event_size_bytes}")
        headers.append(pairs)
        bodies.append(raw)
    try:
        return batch_of(pa.array(headers, HEADERS_TYPE), pa.array(bodies, pa.binary()))
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise HttpError(400, f"the events cannot be stored: {exc}") from None


def blob_event(body: bytes, query: str = "", query_headers: bool = True,
               max_event_size_bytes: int | None = None) -> EventBatch:
    """Flume's BlobHandler: the whole body is one event; query parameters become headers."""
    if max_event_size_bytes is not None and len(body) > max_event_size_bytes:
        raise HttpError(413, f"the body of {len(body)} bytes is longer than max_event_size_bytes="
                             f"{max_event_size_bytes}")
    columns = []
    if query_headers and query:
        seen: dict[str, str] = {}
        for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True, errors="replace"):
            seen.setdefault(key, value)
        columns = [(k, pa.array([v], pa.string())) for k, v in seen.items() if k]
    try:
        return batch_of(headers_from_columns(1, columns), pa.array([body], pa.binary()))
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise HttpError(400, f"the query parameters cannot be headers: {exc}") from None


# -- the server ------------------------------------------------------------------------------------

_REFUSAL_TEXT = b"too many connections; retry later\n"
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Retry-After: 1\r\nConnection: close\r\nContent-Length: " + str(len(_REFUSAL_TEXT)).encode()
           + b"\r\n\r\n" + _REFUSAL_TEXT)


class _HttpServer(LimitedServerMixin, ThreadingHTTPServer):
    source: "HttpSource"
    refusal = REFUSAL

    def finish_request(self, request, client_address) -> bool:
        return self.RequestHandlerClass(request, client_address, self).parked

    def server_bind(self):
        # HTTPServer.server_bind resolves the bind address's FQDN, which can stall on DNS; the
        # name is only used in CGI environments.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port


class _HttpServer6(_HttpServer):
    address_family = socket.AF_INET6


class _WatchedReads(io.RawIOBase):
    """A connection's reads, reported to its :class:`Watch`: any byte of a request starts the
    request's deadline (a client sending its head a byte at a time is closed by the reaper)."""

    def __init__(self, sock, watch: Watch):
        self._sock, self._watch = sock, watch
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self._sock.recv_into(buf)
        if n:
            self.total += n
            self._watch.received()
            self._watch.pending(True)
        return n


class _RequestReads(io.BufferedReader):
    """The handler's buffered reads (``readline`` and ``read``, all that http.server uses), which
    know how many bytes they hold unread: a connection is parked only when nothing is buffered."""

    def __init__(self, raw: _WatchedReads):
        super().__init__(raw, 1 << 16)
        self._raw = raw
        self._consumed = 0

    @property
    def buffered(self) -> int:
        return self._raw.total - self._consumed

    def readline(self, size=-1):
        line = super().readline(size)
        self._consumed += len(line)
        return line

    def read(self, size=-1):
        data = super().read(size)
        self._consumed += len(data)
        return data


class _Handler(BaseHTTPRequestHandler):
    """Serves one keep-alive connection's requests. Between requests an idle connection is parked
    by the server (:meth:`LimitedServerMixin.wait_or_park`) and resumed in a new thread when its
    next request arrives, so idle keep-alive clients hold no thread."""

    protocol_version = "HTTP/1.1"
    server_version = "rayflume"
    sys_version = ""
    parked = False

    def setup(self):
        # The tracker's reaper closes idle connections and requests over their deadline (counted);
        # a socket timeout beyond both is only a backstop.
        limits = self.server.tracker.limits
        self.timeout = None if limits.idle_timeout_s is None else (
            limits.idle_timeout_s + (limits.request_timeout_s or 0) + 5)
        super().setup()
        self.watch = self.server.tracker.watch_of(self.request) or Watch(self.client_address[0])
        self.rfile = _RequestReads(_WatchedReads(self.connection, self.watch))

    def handle(self):
        self.close_connection = True
        self.parked = self._serve()

    def _serve(self) -> bool:
        """Serve requests until the connection ends (False) or is parked while idle (True)."""
        while True:
            if self.server.wait_or_park(self.connection, self._resume, self.rfile.buffered > 0):
                return True
            self.handle_one_request()
            if self.close_connection:
                return False

    def _resume(self) -> bool:
        self.parked = self._serve()
        if not self.parked:
            super().finish()
        return self.parked

    def finish(self):
        if not self.parked:  # a parked connection's files stay open for the thread that resumes it
            super().finish()

    def handle_one_request(self):
        super().handle_one_request()
        self.watch.pending(False)  # answered: the time until the next request is idle time

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        log.debug("http source %s: " + format, self.address_string(), *args)

    def _respond(self, status: int, message: str = "", close: bool = False, headers: dict | None = None,
                 body: bool = True) -> None:
        source = self.server.source
        source.counters.add(f"Http{status}Count" if status in STATUS_CODES else "Http500Count")
        data = (message + "\n").encode("utf-8") if message else b""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data) if body else 0))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if body and data:
                self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _not_allowed(self, body: bool = True) -> None:
        self._respond(405, f"method {self.command} is not allowed; POST events", close=True,
                      headers={"Allow": "POST"}, body=body)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed  # noqa: N815

    def do_HEAD(self):  # noqa: N802
        self._not_allowed(body=False)

    def do_POST(self):  # noqa: N802
        source = self.server.source
        if not source.authorized(self.headers.get("Authorization")):
            self._respond(401, "missing or wrong bearer token", close=True,
                          headers={"WWW-Authenticate": 'Bearer realm="rayflume"'})
            return
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self._respond(411, "chunked uploads are not supported; send a Content-Length", close=True)
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self._respond(411, "a Content-Length header is required", close=True)
            return
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self._respond(400, f"bad Content-Length {length_text!r}", close=True)
            return
        if length > source.max_request_bytes:
            self._respond(413, f"the request of {length} bytes is longer than max_request_bytes="
                               f"{source.max_request_bytes}", close=True)
            return
        # Memory is reserved before the body is read and before it is parsed, from a budget shared
        # by all connections: a flood of large or expanding bodies gets 503/413, not the actor's RAM.
        if not source.memory.try_reserve(length):
            self._respond(503, f"the source is reading {source.memory.used} bytes of other requests "
                               f"(memory_budget_bytes={source.memory.max_bytes}); retry", close=True,
                          headers={"Retry-After": "1"})
            return
        reserved = length
        try:
            try:
                body = self.rfile.read(length)
            except OSError:  # reset, or (TLS) reading shut for the deadline
                body = b""
            if len(body) < length:
                if self.watch.closed_for == "RequestTimeoutCount":
                    self._respond(408, f"the request did not arrive within request_timeout_s="
                                       f"{source.request_timeout_s}s", close=True)
                self.close_connection = True
                return  # the client went away, or was too slow
            cost = source.parse_cost(body)
            if cost > source.max_parse_bytes:
                self._respond(413, f"parsing this request would take about {cost} bytes of memory, more than "
                                   f"max_parse_bytes={source.max_parse_bytes}; send fewer events per request")
                return
            if not source.memory.try_reserve(cost - reserved):
                self._respond(503, f"the source is parsing other requests (memory_budget_bytes="
                                   f"{source.memory.max_bytes}); retry", close=True, headers={"Retry-After": "1"})
                return
            reserved = cost
            query = urllib.parse.urlsplit(self.path).query
            try:
                batch = source.parse(body, self.headers.get("Content-Type"), query)
            except HttpError as exc:
                self._respond(exc.status, exc.message)
                return
            del body
        finally:
            source.memory.release(reserved)
        with source.in_flight():
            status, message, headers = source.submit(batch)
            self._respond(status, message, headers=headers)


class HttpSource(ReplyingSource):
    """The HTTP source. Request threads parse, queue and wait; ``poll``/``ack``/``on_put_failure``
    run on the runner's thread. See the module docstring for statuses and delivery."""

    counter_names = HTTP_COUNTERS

    def __init__(self, name: str, config: HttpSourceConfig):
        super().__init__(name, config.batch_size, config.buffer_bytes)
        self.bind = config.bind
        self.port = config.port
        self.handler = config.handler
        self.max_event_size_bytes = config.max_event_size_bytes
        self.max_request_bytes = config.max_request_bytes
        # None, or a function reading the tokens (files, ${env:}/${file:}) at start, on the source's node
        self._load_tokens = config.token_loader(name)
        self._tokens: dict[str, bytes] = {}  # token name -> token
        self.tls = config.tls_loader(name)
        self.limits = config.limits(config.request_timeout_s)
        self.max_connections = self.limits.max_connections
        self.commit_timeout_s = config.commit_timeout_s
        self.request_timeout_s = config.request_timeout_s
        self.max_parse_bytes = config.max_parse_bytes
        self.memory = ByteBudget(config.memory_budget_bytes)
        self.blob_query_headers = config.blob_query_headers
        self.bound_port: int | None = None
        self._server: ServerThread | None = None
        self._busy = 0
        self._busy_lock = threading.Lock()

    # -- server side ------------------------------------------------------------------------------
    def open(self) -> None:
        # Token file and certificate are read here, on the source's node, at each start.
        tokens = self._load_tokens() if self._load_tokens is not None else {}
        tls = resolve_tls(self.tls)
        self._tokens = {name: t.encode("utf-8") for name, t in tokens.items() if t}
        self.counters.create(f"AuthTokenUseCount.{name}" for name in self._tokens)
        cls = _HttpServer6 if family_of(self.bind) == socket.AF_INET6 else _HttpServer
        server = cls((self.bind, self.port), _Handler, bind_and_activate=False)
        server.source = self
        server.tracker = ConnectionTracker(self.limits, self.counters)
        server.tls = tls
        server.counters = self.counters
        self._server = ServerThread(bind_or_close(server), f"http-{self.name}").start()
        self.set_bound_port(self._server.port)
        if self._tokens and self.tls is None and not is_loopback(self.bind):
            self.context.logger.warning("http source '%s': auth_token is sent in clear text on %s; set ssl: true",
                                        self.name, self.bind)
        self.context.logger.info("http source '%s' listening on %s:%d%s", self.name, self.bind, self.bound_port,
                                 " (TLS)" if self.tls else "")

    def close(self) -> None:
        if self._server is None:
            return
        self._server.server.shutdown()  # accept nothing new
        deadline = time.monotonic() + STOP_GRACE_S
        while self._busy and time.monotonic() < deadline:  # let answers being written go out
            time.sleep(0.01)
        self._server.stop()

    @contextlib.contextmanager
    def in_flight(self):
        with self._busy_lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._busy_lock:
                self._busy -= 1

    def authorized(self, header: str | None) -> bool:
        """Whether ``header`` (Authorization) carries one of the tokens, when any is required; each
        use is counted under the token's name."""
        if not self._tokens:
            return True
        if not header:
            return False
        scheme, _, given = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        given_bytes = given.strip().encode("utf-8", "replace")
        # every token is compared (in constant time), so the time taken does not say which matched
        matched = [name for name, token in self._tokens.items() if hmac.compare_digest(given_bytes, token)]
        if matched:
            self.counters.add(f"AuthTokenUseCount.{matched[0]}")
        return bool(matched)

    def parse_cost(self, body: bytes) -> int:
        """Bytes parsing ``body`` may take at its peak (measured: twice the body, plus up to about
        450 bytes per JSON object; counting every ``{`` overestimates, never under)."""
        if self.handler == "blob":
            return 2 * len(body)
        return 2 * len(body) + JSON_OBJECT_COST * body.count(b"{")

    def parse(self, body: bytes, content_type: str | None, query: str) -> EventBatch:
        if self.handler == "blob":
            return blob_event(body, query, self.blob_query_headers, self.max_event_size_bytes)
        return parse_json_events(body, content_type, self.max_event_size_bytes)

# -- configuration ---------------------------------------------------------------------------------

def resolve_secret(value: str, what: str) -> str:
    """``value`` itself, or what ``${env:NAME}`` / ``${file:/path}`` refers to, read here.
    Raises :class:`TokenUnavailable` (``what`` names the component and key) without the secret."""
    value = value.strip()
    ref = SECRET_REF.match(value)
    if not ref:
        return value
    kind, target = ref.groups()
    if kind == "env":
        secret = os.environ.get(target, "").strip()
        if not secret:
            raise TokenUnavailable(f"{what}: the environment variable {target} is not set or empty on this node; "
                                   f"set it in the environment of the Ray node that runs the source")
        return secret
    try:
        with open(target, encoding="utf-8") as f:
            secret = f.read().strip()
    except (OSError, ValueError) as exc:
        raise TokenUnavailable(f"{what}: cannot read {target!r} on this node "
                               f"({getattr(exc, 'strerror', None) or type(exc).__name__}); put the file there "
                               f"or fix the path") from None
    if not secret:
        raise TokenUnavailable(f"{what}: {target!r} is empty; write the token into it")
    return secret


class TokenUnavailable(RayflumeError):
    """A token of the http source (a file, an environment variable) cannot be read on its node."""


@register("source", "http")
class HttpSourceConfig(NetworkSourceConfig, TlsConfig, ClientLimitsConfig):
    """``http`` (Flume's HTTP source). Binds 127.0.0.1 unless ``bind`` says otherwise."""

    handler: Literal["json", "blob"] = Field("json", description="json: Flume's JSONHandler; blob: the raw "
                                                                  "body is one event (Flume's BlobHandler).")
    blob_query_headers: bool = Field(True, description="blob handler: query parameters become headers.")
    max_event_size_bytes: int = Field(1 << 20, gt=0, description="Longest event body; longer: 413.")
    max_request_bytes: int = Field(16 << 20, gt=0, description="Longest request body; longer: 413.")
    auth_token: SecretStr | None = Field(None, description="Require 'Authorization: Bearer <token>' (401 "
                                                           "otherwise). Prefer auth_token_file.")
    auth_token_file: str | None = Field(None, description="File holding the bearer token (surrounding "
                                                          "whitespace ignored).")
    auth_tokens: dict[str, SecretStr] = Field(
        default_factory=dict, description="Named bearer tokens, any of which is accepted (uses counted per name "
                                          "as AuthTokenUseCount.<name>); remove one and redeploy to revoke it. "
                                          "A value may be ${env:NAME} or ${file:/path}, read on the source's "
                                          "node at start.")
    commit_timeout_s: float = Field(30.0, gt=0, description="Longest wait for the channel commit before 503.")
    request_timeout_s: float = Field(30.0, gt=0, description="Longest time a whole request (head and body) may "
                                                             "take to arrive; a slower client is closed.")
    max_parse_bytes: int = Field(DEFAULT_MAX_PARSE_BYTES, gt=0,
                                 description="Most memory one request may take to parse (estimated before "
                                             "parsing: a body of many tiny events expands most); more: 413.")
    memory_budget_bytes: int = Field(DEFAULT_MEMORY_BUDGET_BYTES, gt=0,
                                     description="Most memory all requests being read and parsed may hold at "
                                                 "once; more: 503 with Retry-After.")
    buffer_bytes: int = Field(64 << 20, gt=0, description="Most bytes of requests queued for the channel; "
                                                          "more: 503.")

    @model_validator(mode="after")
    def _token(self):
        if self.auth_token is not None and self.auth_token_file is not None:
            raise ValueError("http source: give `auth_token` or `auth_token_file`, not both")
        if self.auth_token is not None and not self.auth_token.get_secret_value().strip():
            raise ValueError("http source: `auth_token` is empty; give a token or remove the key")
        for name, value in self.auth_tokens.items():
            if not TOKEN_NAME.match(name):
                raise ValueError(f"http source: `auth_tokens` name {name!r} must be letters, digits, '-' or '_'")
            if not value.get_secret_value().strip():
                raise ValueError(f"http source: `auth_tokens.{name}` is empty; give a token or remove it")
            if (value.get_secret_value().strip().startswith("${")
                    and not SECRET_REF.match(value.get_secret_value().strip())):
                raise ValueError(f"http source: `auth_tokens.{name}` looks like a reference but is neither "
                                 f"${{env:NAME}} nor ${{file:/path}}")
        if (self.auth_token is not None or self.auth_token_file is not None) and DEFAULT_TOKEN_NAME in self.auth_tokens:
            raise ValueError(f"http source: `auth_tokens` may not name a token {DEFAULT_TOKEN_NAME!r} beside "
                             f"`auth_token`/`auth_token_file` (that is its name); rename it")
        if self.max_event_size_bytes > self.max_request_bytes:
            raise ValueError(f"http source: `max_event_size_bytes` ({self.max_event_size_bytes}) is larger than "
                             f"`max_request_bytes` ({self.max_request_bytes}); lower it or raise max_request_bytes")
        return self

    def _token_problem(self, who: str) -> str | None:
        """Why ``auth_token_file`` cannot be used on this machine, or None."""
        path = self.auth_token_file
        if path is None:
            return None
        if not os.access(path, os.R_OK):
            return (f"{who}: `auth_token_file` {path!r} does not exist or is not readable on this node; put the "
                    f"file on every node that runs this source, or fix `auth_token_file`")
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, ValueError) as exc:
            return f"{who}: `auth_token_file` {path!r} cannot be read ({exc}); write the token into it as text"
        if not token:
            return f"{who}: `auth_token_file` {path!r} is empty; write the token into it"
        return None

    def token_loader(self, name: str):
        """None without tokens; else a function that returns the tokens by name (``auth_token`` or
        ``auth_token_file`` under the name "default", and ``auth_tokens``), reading files and
        environment variables where it is called (the source calls it at start, on its node). It
        raises :class:`TokenUnavailable` naming the source, the key and what to do when it cannot."""
        if self.auth_token is None and self.auth_token_file is None and not self.auth_tokens:
            return None
        who = f"http source '{name}'"

        def load() -> dict[str, str]:
            tokens = {}
            if self.auth_token_file is not None:
                problem = self._token_problem(who)
                if problem:
                    raise TokenUnavailable(problem)
                with open(self.auth_token_file, encoding="utf-8") as f:
                    tokens[DEFAULT_TOKEN_NAME] = f.read().strip()
            if self.auth_token is not None:
                tokens[DEFAULT_TOKEN_NAME] = resolve_secret(self.auth_token.get_secret_value(), f"{who}: `auth_token`")
            for key, value in self.auth_tokens.items():
                tokens[key] = resolve_secret(value.get_secret_value(), f"{who}: `auth_tokens.{key}`")
            return tokens

        return load

    def check(self) -> list[str]:
        """Whether this machine can read the TLS files and the token file; the source reads them on
        its node at start."""
        problems = self.tls_problems()
        problem = self._token_problem("http source")
        if problem:
            problems.append(problem)
        return problems

    def build(self, name: str) -> HttpSource:
        return HttpSource(name, self)
