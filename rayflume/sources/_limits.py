"""What a TCP source allows each client: who may connect, how many connections, how long.

:class:`ConnectionLimits` is the typed form of the keys every network source shares
(:class:`ClientLimitsConfig`). :class:`ConnectionTracker` enforces it at accept time: the
allow-list, the per-client and global connection limits (refusals counted by reason). Its reaper
thread closes connections that stay idle longer than ``idle_timeout_s``, or that keep a request
or frame incomplete longer than ``request_timeout_s`` (a slow client sending a byte at a time is
active, but never finishes), so hostile or broken clients cannot hold connection slots for ever.

A server thread reports on its connection through the :class:`Watch` the tracker gives it:
``received()`` when bytes arrive and ``pending(True/False)`` when a request or frame starts or
ends. Closing is a ``shutdown()`` of the socket, which wakes the server thread's blocked read.
Thread-safe.
"""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass

from pydantic import BaseModel, Field

DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_IDLE_TIMEOUT_S = 300.0
DEFAULT_REQUEST_TIMEOUT_S = 30.0
REAP_EVERY_S = 0.25
CLOSE_GRACE_S = 2.0  # after reading is shut, how long the connection's thread has to finish

LIMIT_COUNTERS = ("ClientNotAllowedCount", "ClientLimitRejectedCount", "IdleTimeoutCount", "RequestTimeoutCount")


def parse_networks(values, who: str = "network source") -> tuple:
    """``allowed_clients`` entries (addresses or CIDR blocks) as ip_network objects."""
    networks = []
    for value in values or ():
        try:
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{who}: `allowed_clients` entry {value!r} is neither an IP address nor a CIDR "
                             f"block such as 10.0.0.0/8") from None
    return tuple(networks)


@dataclass(frozen=True)
class ConnectionLimits:
    """``allowed``: networks a client's address must be in (empty: everyone);
    ``max_per_client``: connections from one address (None: only the global limit)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_client: int | None = None
    idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S
    request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S
    allowed: tuple = ()

    def refusal(self, ip: str) -> str | None:
        """Why a client at ``ip`` may not connect at all (not on the allow-list), or None."""
        if not self.allowed:
            return None
        try:
            addr = ipaddress.ip_address(ip.split("%")[0])
        except ValueError:
            return f"{ip} is not an IP address"
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if any(addr in net for net in self.allowed if net.version == addr.version):
            return None
        return f"{ip} is not in allowed_clients"


class ClientLimitsConfig(BaseModel):
    """Keys of every TCP source (mixed into its config): see :class:`ConnectionLimits`."""

    max_connections: int = Field(DEFAULT_MAX_CONNECTIONS, gt=0,
                                 description="Most simultaneous connections; more are refused and counted.")
    max_connections_per_client: int | None = Field(
        None, gt=0, description="Most simultaneous connections from one IP address (null: only max_connections).")
    idle_timeout_s: float | None = Field(
        DEFAULT_IDLE_TIMEOUT_S, gt=0, description="A connection that sends nothing for this long is closed "
                                                  "(null: never).")

    def limits(self, request_timeout_s: float | None) -> ConnectionLimits:
        # allowed_clients is a key of every network source (NetworkSourceConfig), UDP ones too
        return ConnectionLimits(self.max_connections, self.max_connections_per_client, self.idle_timeout_s,
                                request_timeout_s, parse_networks(getattr(self, "allowed_clients", ())))


class Watch:
    """One connection's activity, as its server thread reports it (see the module docstring)."""

    __slots__ = ("ip", "last_active", "pending_since", "closed_for", "closed_at")

    def __init__(self, ip: str):
        self.ip = ip
        self.last_active = time.monotonic()
        self.pending_since: float | None = None
        self.closed_for: str | None = None  # set by the reaper: the counter of the limit it was over
        self.closed_at: float | None = None

    def received(self) -> None:
        self.last_active = time.monotonic()

    def pending(self, incomplete: bool) -> None:
        """A request or frame is incomplete (True: since now, unless already) or complete (False)."""
        if not incomplete:
            self.pending_since = None
        elif self.pending_since is None:
            self.pending_since = time.monotonic()


class ConnectionTracker:
    """Counts and remembers open connections, enforcing :class:`ConnectionLimits`. Thread-safe."""

    REFUSAL_SLOTS = 8

    def __init__(self, limits: ConnectionLimits | int, counters=None):
        self.limits = limits if isinstance(limits, ConnectionLimits) else ConnectionLimits(max_connections=limits)
        self.counters = counters
        if counters:
            counters.create(LIMIT_COUNTERS)
        self._lock = threading.Lock()
        self._open: dict = {}  # socket -> Watch
        self._per_client: dict[str, int] = {}
        self._reserved = 0
        self._refusing = 0
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    @property
    def max_connections(self) -> int:
        return self.limits.max_connections

    def _count(self, key: str) -> None:
        if self.counters:
            self.counters.add(key)

    def reserve_refusal(self) -> bool:
        """A slot to answer a refused client politely (a few at a time; beyond: just close)."""
        with self._lock:
            if self._refusing >= self.REFUSAL_SLOTS:
                return False
            self._refusing += 1
            return True

    def release_refusal(self) -> None:
        with self._lock:
            self._refusing -= 1

    def reserve(self, ip: str = "") -> str | None:
        """Take a connection slot for a client at ``ip``; or say why not (and count it)."""
        if ip and self.limits.refusal(ip):
            self._count("ClientNotAllowedCount")
            return self.limits.refusal(ip)
        with self._lock:
            if self._reserved >= self.limits.max_connections:
                reason = f"{self.limits.max_connections} connections are open (max_connections)"
            elif self.limits.max_per_client and self._per_client.get(ip, 0) >= self.limits.max_per_client:
                reason = f"{ip} has {self.limits.max_per_client} connections open (max_connections_per_client)"
            else:
                self._reserved += 1
                self._per_client[ip] = self._per_client.get(ip, 0) + 1
                reason = None
        if reason is None:
            self._count("ConnectionAcceptedCount")
        elif "per_client" in reason:
            self._count("ClientLimitRejectedCount")
        return reason

    def unreserve(self, ip: str = "") -> None:
        """Give back a slot whose connection never opened."""
        with self._lock:
            self._release(ip)

    def _release(self, ip: str) -> None:
        self._reserved -= 1
        left = self._per_client.get(ip, 1) - 1
        if left > 0:
            self._per_client[ip] = left
        else:
            self._per_client.pop(ip, None)

    def opened(self, sock, ip: str = "") -> Watch:
        watch = Watch(ip)
        with self._lock:
            self._open[sock] = watch
            n = len(self._open)
        if self.counters:
            self.counters.set("OpenConnectionCount", n)
        return watch

    def watch_of(self, sock) -> Watch | None:
        return self._open.get(sock)

    def replace(self, old, new) -> None:
        """``old`` was wrapped (TLS) into ``new``: remember the wrapper, which owns the socket now."""
        with self._lock:
            watch = self._open.pop(old, None)
            if watch is not None:
                self._open[new] = watch

    def closed(self, sock) -> None:
        with self._lock:
            watch = self._open.pop(sock, None)
            self._release(watch.ip if watch else "")
            n = len(self._open)
        if self.counters:
            self.counters.set("OpenConnectionCount", n)

    # -- reaping ------------------------------------------------------------------------------------
    def start_reaper(self, name: str) -> None:
        if self.limits.idle_timeout_s is None and self.limits.request_timeout_s is None:
            return
        self._reaper = threading.Thread(target=self._reap_loop, name=f"{name}-reaper", daemon=True)
        self._reaper.start()

    def _reap_loop(self) -> None:
        while not self._stop.wait(REAP_EVERY_S):
            self.reap()

    def reap(self, now: float | None = None) -> int:
        """Close the connections over a time limit now; returns how many."""
        now = time.monotonic() if now is None else now
        idle_s, request_s = self.limits.idle_timeout_s, self.limits.request_timeout_s
        with self._lock:
            victims, stuck = [], []
            for sock, w in self._open.items():
                if w.closed_for:
                    if w.closed_at is not None and now - w.closed_at > CLOSE_GRACE_S:
                        stuck.append(sock)  # its thread is blocked writing to a client that does not read
                        w.closed_at = None
                    continue
                if request_s is not None and w.pending_since is not None and now - w.pending_since > request_s:
                    w.closed_for = "RequestTimeoutCount"
                elif idle_s is not None and now - w.last_active > idle_s:
                    w.closed_for = "IdleTimeoutCount"
                else:
                    continue
                w.closed_at = now
                victims.append((sock, w.closed_for))
        # Reading is shut first, so that the connection's thread wakes up and may still answer (an
        # HTTP 408); the base-class call leaves a TLS socket's session intact for that answer.
        for sock, reason in victims:
            self._count(reason)
            _shutdown(sock, socket.SHUT_RD)
        for sock in stuck:
            _shutdown(sock, socket.SHUT_RDWR)
        return len(victims)

    def close_all(self) -> None:
        self._stop.set()
        with self._lock:
            socks = list(self._open)
        for sock in socks:
            _shutdown(sock, socket.SHUT_RDWR)

    @property
    def open_count(self) -> int:
        return len(self._open)


def _shutdown(sock, how: int) -> None:
    try:
        socket.socket.shutdown(sock, how)
    except OSError:
        pass  # already closed or reset by the client: there is nothing left to shut


class ByteBudget:
    """Bytes that requests being read or parsed may hold at once, shared by all connections of a
    source; a request reserves before it reads or parses, and gives back after. Thread-safe."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def try_reserve(self, nbytes: int) -> bool:
        with self._lock:
            if self._used + nbytes > self.max_bytes:
                return False
            self._used += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes
