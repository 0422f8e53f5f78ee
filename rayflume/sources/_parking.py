"""Idle connections without threads: a connection that has nothing to read is parked here.

A TCP stream source serves each connection in a thread while data flows (framing, queueing,
waiting for commits to reply). When a connection has had nothing to read for ``park_after_s``, its
thread hands it to :class:`Parking` and ends; one selector thread watches every parked socket and,
when one becomes readable (data, EOF, or a shutdown by the reaper or by ``stop()``), starts a
thread that resumes serving it with the state it had (its framer, its partial line). So a source
with thousands of idle connections runs one thread for all of them.

Thread-safe: ``park`` may be called from any thread; registration itself happens on the selector
thread (woken through a socket pair), so the selector is only ever touched by one thread.
"""
from __future__ import annotations

import logging
import selectors
import socket
import threading
from typing import Callable

log = logging.getLogger("rayflume.source.server")


class Parking:
    def __init__(self, name: str):
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._arrivals: list[tuple[socket.socket, Callable[[], None]]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-parking", daemon=True)
        self._thread.start()

    def park(self, sock: socket.socket, resume: Callable[[], None]) -> bool:
        """Watch ``sock``; call ``resume()`` in a new thread once it is readable. False once closed
        (the caller keeps the connection)."""
        with self._lock:
            if self._closed:
                return False
            self._arrivals.append((sock, resume))
        self._wake()
        return True

    @property
    def parked(self) -> int:
        return len(self._selector.get_map()) - 1

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # the wake-up pipe is full: the selector thread is awake anyway

    def _run(self) -> None:
        while True:
            with self._lock:
                arrivals, self._arrivals = self._arrivals, []
                closed = self._closed
            for sock, resume in arrivals:
                try:
                    self._selector.register(sock, selectors.EVENT_READ, resume)
                except (ValueError, OSError):  # closed meanwhile: let its owner find out
                    _start(resume)
            if closed:
                break
            for key, _ in self._selector.select():
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass  # drain every wake-up byte: one select pass handles them all
                    except (BlockingIOError, OSError):
                        pass  # nothing left to drain
                    continue
                self._selector.unregister(key.fileobj)
                _start(key.data)
        # closed: every parked connection is resumed once more, to see its end and clean up
        for key in list(self._selector.get_map().values()):
            if key.data is not None:
                self._selector.unregister(key.fileobj)
                _start(key.data)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop watching; parked connections are resumed (their sockets should be shut by now)."""
        with self._lock:
            self._closed = True
        self._wake()
        self._thread.join(timeout_s)


def _start(resume: Callable[[], None]) -> None:
    threading.Thread(target=resume, name="resumed-connection", daemon=True).start()
