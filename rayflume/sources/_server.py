"""The TCP server core shared by the TCP sources (``syslog_tcp``, ``netcat``, ``http``): accept
with the client limits of :mod:`rayflume.sources._limits`, TLS handshakes
(:mod:`rayflume.sources._tls`) in the connection's thread, and parking.

A TCP connection is served by a thread while it has something to read; a connection idle for
``PARK_AFTER_S`` (between messages or HTTP requests) is parked (:mod:`rayflume.sources._parking`)
and resumed in a new thread when it is readable again, so idle connections cost no thread. Stream
sources hand each connection's bytes to a :class:`StreamSession` (:func:`make_tcp_server`); the
http source plugs ``http.server``'s handler into :class:`LimitedServerMixin`. Both run under a
:class:`ServerThread`.
"""
from __future__ import annotations

import abc
import functools
import logging
import select
import socket
import socketserver
import ssl
import threading
from typing import Callable

from rayflume.counters import Counters
from rayflume.sources._limits import ConnectionLimits, ConnectionTracker, Watch
from rayflume.sources._network import family_of
from rayflume.sources._parking import Parking
from rayflume.sources._tls import peer_problem, resolve_tls

log = logging.getLogger("rayflume.source.server")

HANDSHAKE_TIMEOUT_S = 10.0
PARK_AFTER_S = 2.0  # a connection with nothing to read for this long gives up its thread
READ_BYTES = 1 << 16


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
                self.counters.add("ConnectionRejectedCount")
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
                request.settimeout(min(HANDSHAKE_TIMEOUT_S,
                                       self.tracker.limits.request_timeout_s or HANDSHAKE_TIMEOUT_S))
                try:
                    conn = self.tls.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    if self.counters:
                        self.counters.add("TlsHandshakeFailCount")
                    log.info("TLS handshake with %s failed: %s", client_address, exc)
                    return
                self.tracker.replace(request, conn)
                refused = peer_problem(conn)
                if refused:
                    if self.counters:
                        self.counters.add("TlsClientRefusedCount")
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


def start_stream_server(source, what: str, new_session) -> "ServerThread":
    """Start the TCP server of a stream ``source`` (one with ``bind``, ``port``, ``limits``, ``tls``,
    ``counters``, ``context``, ``set_bound_port``): its TLS files are read here, on the source's
    node, at each start; the bound port is reported and the start logged as ``what``."""
    tls = resolve_tls(source.tls)
    server = make_tcp_server(source.bind, source.port, new_session, source.limits, tls, source.counters)
    thread = ServerThread(server, f"{what.replace('_', '-')}-{source.name}").start()
    source.set_bound_port(thread.port)
    source.context.logger.info("%s source '%s' listening on %s:%d%s", what, source.name, source.bind, thread.port,
                               " (TLS)" if tls is not None else "")
    return thread


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
