"""The core shared by the network sources (``syslog_tcp``, ``syslog_udp``, ``http``, ``netcat``).

A TCP connection is served by a thread while it has something to read; a connection idle for
``PARK_AFTER_S`` (between messages or HTTP requests) is parked (:mod:`rayflume.sources._parking`) and
resumed in a new thread when it is readable again, so idle connections cost no thread. A UDP
socket has one thread. They hand what they received to the runner's ``poll()`` through a bounded
:class:`HandOff` queue of :class:`Item` objects, each optionally carrying a :class:`Completion`
that the source completes in ``ack()`` (the batch is committed to every required channel) or with
a failure in ``on_put_failure()`` / ``stop()``. A server thread that must answer its client after
the commit (HTTP 200, netcat ``OK``) waits on that completion, always with a timeout.

Backpressure: the queue is bounded in bytes. A TCP reader blocks in :meth:`HandOff.put` when it
is full, so it stops reading and the client's TCP window closes; a UDP reader or an HTTP request
uses a non-blocking put and drops (UDP, counted) or answers 503 (HTTP).

Also here: :class:`NetworkSourceConfig` (``bind`` 127.0.0.1, ``port``, ``allowed_clients``,
``buffer_bytes``), the TCP server (:func:`make_tcp_server`, :class:`StreamSession`), which
enforces the client limits of :mod:`rayflume.sources._limits` and does TLS handshakes
(:mod:`rayflume.sources._tls`) in the connection's thread, the UDP receive loop
(:class:`UdpReceiver`) and thread-safe counters. Framing helpers are in
:mod:`rayflume.sources._framing`.
"""
from __future__ import annotations

import abc
import functools
import ipaddress
import logging
import select
import socket
import socketserver
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from pydantic import Field, field_validator

from rayflume.config_base import SourceConfig
from rayflume.event import EventBatch
from rayflume.sources.base import Source, SourceContext
from rayflume.sources._framing import (  # noqa: F401 (re-exported)
    batch_of, binary_from, empty_headers, gather_ranges, headers_from_columns, split_lines, strip_cr)
from rayflume.sources._limits import (  # noqa: F401 (re-exported)
    DEFAULT_MAX_CONNECTIONS, LIMIT_COUNTERS, ClientLimitsConfig, ConnectionLimits, ConnectionTracker, Watch, parse_networks)
from rayflume.sources._parking import Parking
from rayflume.sources._tls import TlsConfig, TlsUnavailable, peer_problem, resolve_tls, tls_server_context  # noqa: F401 (re-exported)

log = logging.getLogger("rayflume.source.server")

DEFAULT_BIND = "127.0.0.1"
DEFAULT_BUFFER_BYTES = 16 << 20
HANDSHAKE_TIMEOUT_S = 10.0
PARK_AFTER_S = 2.0  # a connection with nothing to read for this long gives up its thread
READ_BYTES = 1 << 16
POLL_WAIT_S = 0.1

# Counters every network source reports (created at start so server threads never grow the dict
# while the actor iterates it for metrics).
CONNECTION_COUNTERS = ("OpenConnectionCount", "ConnectionAcceptedCount", "ConnectionRejectedCount",
                       "TlsHandshakeFailCount", "TlsClientRefusedCount", "EventRejectedCount") + LIMIT_COUNTERS


# -- completions and the hand-off queue ------------------------------------------------------------

class Completion:
    """The outcome of one handed-off item, waited for by the server thread that produced it.

    States: queued -> taken (by ``poll``) -> succeeded / failed; or queued -> cancelled (the waiter
    gave up before ``poll`` took it, so it is never delivered). Transitions are atomic; the first
    final state wins.
    """

    QUEUED, TAKEN, SUCCEEDED, FAILED, CANCELLED = range(5)

    __slots__ = ("_lock", "_done", "state", "status", "reason")

    def __init__(self):
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.state = Completion.QUEUED
        self.status: int | None = None   # a protocol status for the client (e.g. HTTP 503)
        self.reason = ""

    def _taken(self) -> bool:
        """Mark taken by ``poll``; False if cancelled (or already final). A requeued item is
        taken again."""
        with self._lock:
            if self.state not in (Completion.QUEUED, Completion.TAKEN):
                return False
            self.state = Completion.TAKEN
            return True

    def succeed(self) -> None:
        with self._lock:
            if self.state in (Completion.QUEUED, Completion.TAKEN):
                self.state = Completion.SUCCEEDED
        self._done.set()

    def fail(self, status: int | None, reason: str) -> None:
        with self._lock:
            if self.state in (Completion.QUEUED, Completion.TAKEN):
                self.state = Completion.FAILED
                self.status = status
                self.reason = reason
        self._done.set()

    def cancel(self) -> bool:
        """Withdraw a queued item. False when ``poll`` already took it (it may still commit)."""
        with self._lock:
            if self.state != Completion.QUEUED:
                return self.state == Completion.CANCELLED
            self.state = Completion.CANCELLED
        self._done.set()
        return True

    def wait(self, timeout_s: float | None) -> bool:
        """True once the item succeeded or failed (see ``state``); False on timeout."""
        return self._done.wait(timeout_s)

    @property
    def succeeded(self) -> bool:
        return self.state == Completion.SUCCEEDED


@dataclass
class Item:
    """One unit handed to ``poll``: a source-specific payload with its size and completion."""

    payload: Any
    events: int
    nbytes: int
    completion: Completion | None = None
    solo: bool = False          # deliver in a batch of its own (set after a too-large merged put)
    extra: dict = field(default_factory=dict)


class HandOff:
    """A bounded FIFO of :class:`Item` between server threads and the runner. Thread-safe.

    Bounded by ``max_bytes`` of payload; one item larger than that is still accepted into an
    empty queue, so nothing is ever too large to pass. Cancelled items are skipped by ``take``.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: deque[Item] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def closed(self) -> bool:
        return self._closed

    def _room(self, nbytes: int) -> bool:
        return not self._items or self._bytes + nbytes <= self.max_bytes

    def put(self, item: Item, block: bool = True, timeout_s: float | None = None) -> bool:
        """Queue ``item``; False when closed, or when full and not blocking (or timed out)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not self._closed and not self._room(item.nbytes):
                if not block:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 0.5)
            if self._closed:
                return False
            self._items.append(item)
            self._bytes += item.nbytes
            self._cond.notify_all()
            return True

    def take(self, max_events: int, wait_s: float = 0.0) -> list[Item]:
        """The oldest items, merged while their events fit in ``max_events`` (always at least
        one item if any is queued; a ``solo`` item is returned alone). Waits up to ``wait_s``
        for the first item."""
        out: list[Item] = []
        events = 0
        with self._cond:
            if not self._items and wait_s > 0 and not self._closed:
                self._cond.wait(wait_s)
            while self._items:
                item = self._items[0]
                if out and (item.solo or events + item.events > max_events):
                    break
                self._items.popleft()
                self._bytes -= item.nbytes
                if item.completion is not None and not item.completion._taken():
                    continue  # cancelled by its waiter: never delivered
                out.append(item)
                events += item.events
                if item.solo:
                    break
            if out:
                self._cond.notify_all()
        return out

    def requeue_front(self, items: list[Item]) -> None:
        """Put taken items back at the head, in order (their completions stay taken)."""
        with self._cond:
            for item in reversed(items):
                self._items.appendleft(item)
                self._bytes += item.nbytes
            self._cond.notify_all()

    def close(self) -> list[Item]:
        """Refuse further puts, wake every waiter, and return what was still queued."""
        with self._cond:
            self._closed = True
            left = list(self._items)
            self._items.clear()
            self._bytes = 0
            self._cond.notify_all()
        return left


# -- counters --------------------------------------------------------------------------------------

class Counters:
    """Counters shared by server threads and the runner thread, updated under one lock.

    Writes go to the context's dict (what the actor reports); keys must be created with
    :meth:`create` at start so the dict never grows while it is being iterated elsewhere.
    """

    def __init__(self, context: SourceContext):
        self.context = context
        self._lock = threading.Lock()

    def create(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                self.context.counters.setdefault(name, 0)

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.context.count(key, n)

    def set(self, key: str, value) -> None:
        with self._lock:
            self.context.counters[key] = value

    def get(self, key: str, default=0):
        return self.context.counters.get(key, default)


# -- configuration ---------------------------------------------------------------------------------

def _check_bind(component: str, value: str) -> str:
    if not value:
        raise ValueError(f"{component}: `bind` must be an address such as 127.0.0.1 (0.0.0.0 listens "
                         f"on every interface)")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not all(part and len(part) <= 63 for part in value.split(".")):
            raise ValueError(f"{component}: `bind` {value!r} is neither an IP address nor a host name")
    return value


class NetworkSourceConfig(SourceConfig):
    """Keys every network source shares (TCP ones add ``max_connections``). Not registered."""

    bind: str = Field(DEFAULT_BIND, description="Address to listen on. 127.0.0.1 by default: set "
                                                "0.0.0.0 (or an interface address) to accept remote clients.")
    port: int = Field(ge=0, le=65535, description="Port to listen on; 0 picks a free one (reported as "
                                                  "the BoundPort metric).")
    allowed_clients: list[str] = Field(
        default_factory=list, description="IP addresses or CIDR blocks allowed to send (connections or "
                                          "datagrams from elsewhere are refused and counted); empty: any.")
    buffer_bytes: int = Field(DEFAULT_BUFFER_BYTES, gt=0,
                              description="Most bytes received and not yet polled; when full, TCP "
                                          "readers stop reading (backpressure), UDP datagrams are "
                                          "dropped (counted) and HTTP requests get 503.")

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        return _check_bind(f"{cls.type_name or 'network'} source", v)

    @field_validator("allowed_clients")
    @classmethod
    def _allowed(cls, v):
        parse_networks(v, f"{cls.type_name or 'network'} source")
        return v


def is_loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return bind == "localhost"


def family_of(bind: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(bind).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


# -- TCP servers with a connection limit -----------------------------------------------------------

class LimitedServerMixin:
    """For ``socketserver`` threading servers: refuses connections over the limit in the accept
    thread (without blocking it), does the TLS handshake in the connection's own thread, and parks
    connections that wait idle (:meth:`wait_or_park`) so that they hold no thread.

    ``finish_request`` returns True when it parked the connection (its thread then ends without
    closing it).

    Set on the instance: ``tracker`` (:class:`ConnectionTracker`), ``tls`` (an SSLContext or
    None), ``counters`` and optionally ``refusal`` (bytes sent to a refused client).
    """

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of connections waits here, not in SYN retries
    block_on_close = False
    allow_reuse_address = True
    refusal: bytes = b""
    tls: ssl.SSLContext | None = None
    tracker: ConnectionTracker
    counters: Counters | None = None
    parking: Parking | None = None  # set by ServerThread.start
    park_after_s: float = PARK_AFTER_S

    def process_request(self, request, client_address):
        refused = self.tracker.reserve(client_address[0])
        if refused:
            log.debug("connection from %s refused: %s", client_address, refused)
            if self.counters:
                self.counters.count("ConnectionRejectedCount")
            if self.refusal and self.tls is None and self.tracker.reserve_refusal():
                threading.Thread(target=self._refuse, args=(request,), daemon=True,
                                 name="refuse-connection").start()
            else:
                self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.tracker.unreserve(client_address[0])
            raise

    def _refuse(self, request) -> None:
        # Read the request head first and linger briefly after answering: closing a socket with
        # unread input sends a reset, which would destroy the answer before the client reads it.
        try:
            request.settimeout(0.5)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = request.recv(4096)
                if not chunk:
                    break
                head += chunk
            request.sendall(self.refusal)
            request.shutdown(socket.SHUT_WR)
            while request.recv(4096):
                pass
        except OSError:
            pass
        finally:
            request.close()
            self.tracker.release_refusal()

    def process_request_thread(self, request, client_address):
        conn = request
        parked = False
        self.tracker.opened(request, client_address[0])
        try:
            if self.tls is not None:
                request.settimeout(min(HANDSHAKE_TIMEOUT_S, self.tracker.limits.request_timeout_s or HANDSHAKE_TIMEOUT_S))
                try:
                    conn = self.tls.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    if self.counters:
                        self.counters.count("TlsHandshakeFailCount")
                    log.info("TLS handshake with %s failed: %s", client_address, exc)
                    return
                self.tracker.replace(request, conn)
                refused = peer_problem(conn)
                if refused:
                    if self.counters:
                        self.counters.count("TlsClientRefusedCount")
                    log.info("TLS client %s refused: %s", client_address, refused)
                    return
                conn.settimeout(None)
            parked = bool(self.finish_request(conn, client_address))
        except Exception:
            self.handle_error(conn, client_address)
        finally:
            if not parked:  # a parked connection is closed by the thread that resumes it
                self.shutdown_request(conn)
                self.tracker.closed(conn)

    def handle_error(self, request, client_address):
        log.warning("connection from %s failed", client_address, exc_info=True)

    def wait_or_park(self, conn, resume: Callable[[], bool], buffered: bool = False) -> bool:
        """Wait until ``conn`` has something to read (or ``buffered`` says the caller still holds
        unread bytes): False. True: it stayed idle for ``park_after_s`` and is parked instead; the
        caller's thread must let go of it, and ``resume()`` serves it again in a new thread once it
        is readable, returning whether it parked again."""
        while not buffered and not (isinstance(conn, ssl.SSLSocket) and conn.pending()) \
                and not _readable(conn, self.park_after_s):
            if self.parking is not None and self.parking.park(
                    conn, functools.partial(self._resumed, conn, resume)):
                return True
        return False

    def _resumed(self, conn, resume: Callable[[], bool]) -> None:
        parked = False
        try:
            parked = resume()
        except Exception:
            self.handle_error(conn, "a resumed connection")
        finally:
            if not parked:
                self.shutdown_request(conn)
                self.tracker.closed(conn)


class StreamSession(abc.ABC):
    """One connection of a stream source (syslog_tcp, netcat), fed by the server core: bytes as
    they arrive, then the end. Called from one thread at a time, though not always the same one
    (a connection parked while idle resumes in a new thread)."""

    @abc.abstractmethod
    def received(self, data: bytes) -> bool:
        """Handle ``data``; False ends the connection."""

    def ended(self, eof: bool, by_limit: bool) -> None:
        """The connection ended: ``eof`` (the client closed it; else a reset or a shut socket);
        ``by_limit``: closed for a time limit (an incomplete message should be dropped)."""


class _TcpServer(LimitedServerMixin, socketserver.ThreadingTCPServer):
    """The core of the stream sources: accept and limits (the mixin), then :meth:`_pump` reads
    each connection into its :class:`StreamSession` and parks it while idle (see
    :mod:`rayflume.sources._parking`)."""

    new_session: Callable[[socket.socket, tuple, Watch], StreamSession]

    def finish_request(self, conn, client_address) -> bool:
        watch = self.tracker.watch_of(conn) or Watch(client_address[0])
        return self._pump(conn, client_address, self.new_session(conn, client_address, watch), watch)

    def _pump(self, conn, client_address, session: StreamSession, watch: Watch) -> bool:
        """Serve ``conn`` until it ends (False) or is parked, idle (True)."""
        resume = functools.partial(self._pump, conn, client_address, session, watch)
        while True:
            if self.wait_or_park(conn, resume):
                return True
            try:
                data = conn.recv(READ_BYTES)
                eof = True
            except OSError:
                data, eof = b"", False  # reset, or shut by stop() or the reaper
            if not data:
                session.ended(eof, watch.closed_for is not None)
                return False
            watch.received()
            if not session.received(data):
                return False


def _readable(sock, timeout_s: float) -> bool:
    # poll, not select: descriptors of a source with thousands of connections exceed FD_SETSIZE
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN)
    except (OSError, ValueError):
        return True  # closed: the read says so
    return bool(poller.poll(timeout_s * 1000))


class _TcpServer6(_TcpServer):
    address_family = socket.AF_INET6


def make_tcp_server(bind: str, port: int, new_session: Callable[[socket.socket, tuple, Watch], StreamSession],
                    limits: ConnectionLimits | int, tls: ssl.SSLContext | None, counters: Counters | None):
    """A started-but-not-serving TCP server for a stream source: ``new_session(sock, address,
    watch)`` makes each connection's :class:`StreamSession` (after the TLS handshake when ``tls``);
    the session may send on ``sock`` and reports message boundaries on ``watch``. Serve with
    :class:`ServerThread`, which also parks idle connections."""
    cls = _TcpServer6 if family_of(bind) == socket.AF_INET6 else _TcpServer
    server = cls((bind, port), socketserver.BaseRequestHandler, bind_and_activate=False)
    server.tracker = ConnectionTracker(limits, counters)
    server.tls = tls
    server.counters = counters
    server.new_session = new_session
    return bind_or_close(server)


def bind_or_close(server):
    """Bind and listen a server made with ``bind_and_activate=False``; closed again if that fails."""
    try:
        server.server_bind()
        server.server_activate()
    except OSError:
        server.server_close()
        raise
    return server


class ServerThread:
    """Runs a ``socketserver`` server's ``serve_forever`` in a daemon thread; ``stop()`` shuts it
    down, closes the listening socket and every open connection."""

    def __init__(self, server, name: str):
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name=name, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> "ServerThread":
        if isinstance(self.server, LimitedServerMixin):
            self.server.parking = Parking(self.thread.name)
        self.thread.start()
        tracker = getattr(self.server, "tracker", None)
        if tracker is not None:
            tracker.start_reaper(self.thread.name)
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
        tracker = getattr(self.server, "tracker", None)
        if tracker is not None:
            tracker.close_all()
        parking = getattr(self.server, "parking", None)
        if parking is not None:
            parking.close()  # parked connections wake up to their shut sockets and end


# -- UDP -------------------------------------------------------------------------------------------

MAX_DATAGRAM = 65535


class UdpReceiver:
    """Receives datagrams on ``bind:port`` in a daemon thread and hands them, a burst at a time,
    to ``on_datagrams(list of (data, address))``: after the first datagram it keeps reading
    without waiting until the socket is empty or ``burst`` datagrams were read."""

    def __init__(self, bind: str, port: int, on_datagrams: Callable[[list], None], name: str,
                 burst: int = 1000, recv_buffer_bytes: int = 4 << 20, allowed: tuple = (),
                 counters: Counters | None = None):
        self.on_datagrams = on_datagrams
        self.allowed = ConnectionLimits(allowed=allowed)  # datagrams from elsewhere are dropped and counted
        self.counters = counters
        if counters and allowed:
            counters.create(("ClientNotAllowedCount",))
        self.burst = burst
        self.sock = socket.socket(family_of(bind), socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer_bytes)
        except OSError:
            pass  # best effort: the kernel caps it at net.core.rmem_max
        try:
            self.sock.bind((bind, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def start(self) -> "UdpReceiver":
        self.thread.start()
        return self

    def _run(self) -> None:
        sock = self.sock
        while not self._stop.is_set():
            got = []
            try:
                while len(got) < self.burst:
                    got.append(sock.recvfrom(MAX_DATAGRAM + 1))
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                if self._stop.is_set():
                    return
                log.warning("UDP receive failed", exc_info=True)
            if got and self.allowed.allowed:
                kept = [d for d in got if self.allowed.refusal(d[1][0]) is None]
                if len(kept) < len(got) and self.counters:
                    self.counters.count("ClientNotAllowedCount", len(got) - len(kept))
                got = kept
            if got:
                try:
                    self.on_datagrams(got)
                except Exception:
                    log.exception("handling %d datagram(s) failed", len(got))
                continue
            try:
                select.select([sock], [], [], 0.2)
            except (OSError, ValueError):
                if self._stop.is_set():
                    return

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2.0)
        self.sock.close()


# -- reverse lookups -------------------------------------------------------------------------------

class HostnameCache:
    """Reverse DNS of client addresses, cached (bounded); the address itself when unresolvable."""

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()

    def lookup(self, ip: str) -> str:
        name = self._names.get(ip)
        if name is not None:
            return name
        try:
            name = socket.gethostbyaddr(ip)[0]
        except (OSError, UnicodeError):
            name = ip
        with self._lock:
            if len(self._names) >= self.max_entries:
                self._names.clear()
            self._names[ip] = name
        return name


# -- the event-driven source base ------------------------------------------------------------------

class QueuedSource(Source):
    """Base of the network sources: server threads :meth:`submit` items, ``poll`` merges queued
    items (up to ``batch_size`` events) into one batch with :meth:`assemble`, ``ack`` completes
    their completions successfully.

    ``on_put_failure`` keeps the batch by default (the runner retries; server threads meanwhile
    block or drop as the queue fills). ``stop`` closes the servers, then fails every completion
    still pending so no client waits for ever.
    """

    counter_names: tuple[str, ...] = CONNECTION_COUNTERS
    waits_in_poll = True  # poll waits on the hand-off queue itself

    def __init__(self, name: str, batch_size: int, buffer_bytes: int):
        self.name = name
        self.batch_size = batch_size
        self.handoff = HandOff(buffer_bytes)
        self._pending_items: list[Item] | None = None
        self._pending_batch: EventBatch | None = None
        self._stopped = threading.Event()
        self.counters: Counters | None = None

    # subclasses ----------------------------------------------------------------------------------
    def open(self) -> None:
        """Start the servers (called by ``start``)."""

    def close(self) -> None:
        """Stop the servers and close every connection (called by ``stop``)."""

    def assemble(self, items: list[Item]) -> EventBatch:
        raise NotImplementedError

    # lifecycle -----------------------------------------------------------------------------------
    def start(self, context: SourceContext) -> None:
        super().start(context)
        self.counters = Counters(context)
        self.counters.create(self.counter_names)
        self.open()

    def set_bound_port(self, port: int) -> None:
        self.bound_port = port
        self.counters.set("BoundPort", port)

    def poll(self) -> EventBatch | None:
        if self._pending_batch is not None:
            return self._pending_batch
        if self._stopped.is_set():
            return None
        items = self.handoff.take(self.batch_size, wait_s=POLL_WAIT_S)
        if not items:
            return None
        try:
            batch = self.assemble(items)
        except Exception as exc:
            for item in items:
                if item.completion is not None:
                    item.completion.fail(500, f"the source could not build events: {exc}")
            raise
        self._pending_items = items
        self._pending_batch = batch
        return batch

    def ack(self) -> None:
        items, self._pending_items, self._pending_batch = self._pending_items, None, None
        for item in items or ():
            if item.completion is not None:
                item.completion.succeed()

    def abandon(self, status: int | None, reason: str) -> None:
        """Fail the pending batch's completions and forget it (the runner will poll again)."""
        items, self._pending_items, self._pending_batch = self._pending_items, None, None
        for item in items or ():
            if item.completion is not None:
                item.completion.fail(status, reason)

    def requeue_pending_solo(self) -> None:
        """Return the pending batch's items to the head of the queue, each to be delivered alone."""
        items, self._pending_items, self._pending_batch = self._pending_items, None, None
        for item in items or ():
            item.solo = True
        self.handoff.requeue_front(items or [])

    @property
    def pending_items(self) -> list[Item]:
        return list(self._pending_items or ())

    def stop(self) -> None:
        # Fail what waits first, so server threads can still answer their clients (HTTP 503)
        # before ``close`` shuts their connections.
        self._stopped.set()
        try:
            for item in self.handoff.close():
                if item.completion is not None:
                    item.completion.fail(503, "the source is stopping")
            self.abandon(503, "the source is stopping")
        finally:
            self.close()
