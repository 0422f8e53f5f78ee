"""The UDP receive loop of the datagram sources (``syslog_udp``, ``netcat`` over UDP)."""
from __future__ import annotations

import logging
import select
import socket
import threading
from typing import Callable

from rayflume.counters import Counters
from rayflume.sources._limits import ConnectionLimits
from rayflume.sources._network import family_of

log = logging.getLogger("rayflume.source.server")

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
                pass  # the socket is empty: hand over what this burst read
            except OSError:
                if self._stop.is_set():
                    return
                log.warning("UDP receive failed", exc_info=True)
            if got and self.allowed.allowed:
                kept = [d for d in got if self.allowed.refusal(d[1][0]) is None]
                if len(kept) < len(got) and self.counters:
                    self.counters.add("ClientNotAllowedCount", len(got) - len(kept))
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
