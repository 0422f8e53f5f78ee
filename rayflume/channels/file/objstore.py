"""Object-store access for the file channel: one replaceable I/O object, and the channel's lock object.

:class:`ObjectStore` is to an object store what :class:`~rayflume._private.fileio.FileIO` is
to a local disk: every request the channel makes goes through it, so tests substitute a subclass
that fails, delays or counts requests. It wraps a ``pyarrow.fs`` filesystem and only uses what an
object store does well: write a whole object, read a whole object, list a prefix, delete.

An object store has no append, no fsync and no rename. The channel relies on one property only:
an object whose PUT returned is durable and visible to every later read and listing (S3 has been
strongly read-after-write and list-after-write consistent since December 2020). It does not rely
on PUTs being atomic, although single-request PUTs are: every record inside an object carries its
own checksum, so a partial object, should a store ever expose one, costs the records it lacks and
is counted, never delivered.

:class:`ObjectLock` replaces ``flock``: a small JSON object ``<root>/lock`` naming its owner,
renewed by a heartbeat thread. See its docstring for what it guarantees and what it does not.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import socket
import threading
import time
import uuid
from urllib.parse import urlparse

from rayflume.channels.file.errors import ChannelLocked

log = logging.getLogger(__name__)

# URI schemes whose filesystem the channel accepts for its log (tested against an S3 API).
SUPPORTED_SCHEMES = ("s3",)


def is_uri(path: str) -> bool:
    """Whether ``path`` names an object store (``scheme://...``) rather than a local directory."""
    return isinstance(path, str) and "://" in path and not path.lower().startswith("file://")


def check_uri(uri: str) -> str:
    """Validate an object-store URI for the channel; return it without a trailing slash.

    Raises ValueError with a message naming the problem.
    """
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise ValueError(f"{uri!r}: the file channel supports object stores with the schemes "
                         f"{SUPPORTED_SCHEMES}, not {scheme!r}; use s3://bucket/prefix (any S3 API, "
                         f"with object_store_options.endpoint_override for non-AWS stores)")
    if not parsed.netloc:
        raise ValueError(f"{uri!r} names no bucket; write s3://bucket/prefix")
    if parsed.query or parsed.fragment:
        raise ValueError(f"{uri!r}: options in the URI are not accepted; give them in "
                         f"object_store_options (endpoint_override, region, scheme, ...)")
    return uri.rstrip("/")


def make_filesystem(options: dict | None):
    """The ``pyarrow.fs.S3FileSystem`` for ``options``; raises TypeError/ValueError on bad options."""
    from pyarrow import fs as pafs

    # allow_delayed_open: objects below pyarrow's part size (10 MiB) are written with a single
    # PutObject at close instead of a multipart upload (one request, atomic).
    opts = {"allow_delayed_open": True, **(options or {})}
    return pafs.S3FileSystem(**opts)


class ObjectStore:
    """Whole-object I/O under one root (``bucket/prefix``) of a ``pyarrow.fs`` filesystem.

    Thread-safe (pyarrow filesystems are). Keys are paths relative to the root, ``/``-separated.
    Errors are ``OSError`` (``FileNotFoundError`` for a missing object), as pyarrow raises them.
    """

    def __init__(self, filesystem, root: str, uri: str):
        self.fs = filesystem
        self.root = root.strip("/")
        self.uri = uri.rstrip("/")

    @classmethod
    def from_uri(cls, uri: str, options: dict | None = None) -> "ObjectStore":
        uri = check_uri(uri)
        parsed = urlparse(uri)
        return cls(make_filesystem(options), parsed.netloc + parsed.path, uri)

    def at(self, uri: str) -> "ObjectStore":
        """The same store (same filesystem, same class and settings) rooted at ``uri``."""
        uri = check_uri(uri)
        parsed = urlparse(uri)
        other = copy.copy(self)
        other.root = (parsed.netloc + parsed.path).strip("/")
        other.uri = uri
        return other

    def contains(self, other: "ObjectStore") -> bool:
        """Whether ``other``'s root lies inside (or is) this store's root."""
        return other.root == self.root or other.root.startswith(self.root + "/")

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def uri_of(self, key: str) -> str:
        return f"{self.uri}/{key}"

    def put(self, key: str, parts) -> None:
        """Write one object from ``parts`` (bytes-like); durable once this returns."""
        out = self.fs.open_output_stream(self.path(key))
        try:
            for p in parts:
                if len(p):
                    out.write(p)
        finally:
            # close() sends the object (PutObject, or completes the multipart upload); its
            # failure is the put's failure.
            out.close()

    def get(self, key: str) -> bytes:
        """The whole object; FileNotFoundError if it does not exist."""
        with self.fs.open_input_stream(self.path(key)) as f:
            return f.read()

    def list(self, prefix: str = "") -> dict[str, int]:
        """Key -> size of every object under ``prefix`` (recursively)."""
        from pyarrow import fs as pafs

        base = self.path(prefix.strip("/"))
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        cut = len(self.root) + 1
        return {info.path[cut:]: info.size for info in infos if info.type == pafs.FileType.File}

    def delete(self, key: str) -> None:
        """Delete one object; a missing object is not an error."""
        try:
            self.fs.delete_file(self.path(key))
        except FileNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> None:
        """Delete everything under ``prefix`` (and the directory marker pyarrow may have left)."""
        try:
            self.fs.delete_dir(self.path(prefix.strip("/")))
        except FileNotFoundError:
            pass


LOCK_KEY = "lock"
LOCK_READ_ATTEMPTS = 4  # reads of an unparseable lock object before it counts as damaged
LOCK_REREAD_S = 0.05    # pause before the next read, growing with each attempt (0.3 s in all)
# The owner trusts its lock for this fraction of the TTL after the start of its last renewal;
# a contender only takes over after a full TTL without a renewal (see ObjectLock).
VALID_FRACTION = 0.75
RENEWALS_PER_TTL = 4


class ObjectLock:
    """An advisory, heartbeat-renewed lock object ``<root>/lock`` (JSON: owner, host, pid, epoch...).

    Acquiring: if no lock object exists, or it is marked released, or its ``expires_at`` (wall
    clock) is past, the lock is taken at once. Otherwise the contender watches it: if it changes
    (the owner renewed it) the contender raises :class:`ChannelLocked` -- a live instance holds the
    channel; if it stays unchanged for the lock's own ``ttl_s`` (measured on the contender's
    monotonic clock) the owner is considered dead and the lock is taken. So opening a channel whose
    previous instance crashed waits at most ``ttl_s``; a clean close releases the lock and the next
    open is immediate. After writing its lock the new owner reads it back and raises if another
    contender overwrote it in between.

    Holding: a daemon thread renews the lock every ``ttl_s / 4`` (read it, check the owner is
    still us, write it back with a new sequence number). :meth:`valid` is True only while the last
    successful renewal *started* less than ``0.75 * ttl_s`` ago and no other owner was seen; the
    log acknowledges a write only if :meth:`valid` holds after the write completed (fencing).
    When renewals fail for that long (the store is unreachable) the instance is *suspended*: it
    acknowledges nothing, and keeps trying; if it then finds the lock object still naming it (no
    other instance took over) it renews it, reads it back and resumes. If it finds another owner
    it has *lost* the lock for good (:attr:`lost_reason`): close the instance.

    What it does not do: S3 offers no compare-and-swap through ``pyarrow.fs``, so this is advisory.
    It is safe if requests finish within ``ttl_s / 4``, wall clocks agree within ``ttl_s / 4`` and
    no process pauses longer than that between a write completing and the validity check after it.
    A *zombie* (an old instance partitioned from the store or paused for longer than the TTL) loses
    the lock: its next acknowledgement check fails, every put or commit it had in flight fails with
    :class:`ChannelLockLost` (nothing is acknowledged), and once it reads the new owner's lock it
    refuses every later write. Objects it still managed to write land under its own epoch's segment
    ids, so they never overwrite the new owner's objects; they lie before the new owner's replay
    position (its epoch's ids are higher), so they are never replayed, and as nothing refers to
    them, the next owner that lists them deletes them after a checkpoint, like consumed objects.
    """

    def __init__(self, store: ObjectStore, channel: str, ttl_s: float):
        if ttl_s <= 0:
            raise ValueError(f"file channel '{channel}': lock_ttl_s must be positive, not {ttl_s}")
        self.store = store
        self.channel = channel
        self.ttl_s = float(ttl_s)
        self.owner = uuid.uuid4().hex
        self.epoch = 0
        self.previous: dict | None = None
        self.lost_reason = ""
        self.renewals = 0
        self._seq = 0
        self._confirmed = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()

    # -- acquire / release ---------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lock (see the class docstring) or raise ChannelLocked. Network errors raise OSError."""
        first_seen = None
        while True:
            cur = self._read()
            if cur is None or cur.get("released") or cur.get("owner") == self.owner:
                break
            if _num(cur.get("expires_at")) < time.time():
                log.warning("file channel '%s': taking over the expired lock %s of %s", self.channel,
                            self.store.uri_of(LOCK_KEY), _who(cur))
                break
            ident = (cur.get("owner"), cur.get("seq"))
            t = time.monotonic()
            ttl = _num(cur.get("ttl_s"), self.ttl_s)
            if first_seen is None:
                first_seen = (ident, t)
            elif ident != first_seen[0]:
                raise ChannelLocked(
                    f"file channel '{self.channel}': {self.store.uri} is in use by another live "
                    f"instance ({_who(cur)}, lock {self.store.uri_of(LOCK_KEY)} renewed at "
                    f"{_stamp(cur.get('renewed_at'))}); give every file channel its own data_dirs, or "
                    f"stop the other instance first")
            elif t - first_seen[1] >= ttl:
                log.warning("file channel '%s': the lock %s of %s was not renewed for %.1fs; its "
                            "owner is gone, taking over", self.channel, self.store.uri_of(LOCK_KEY),
                            _who(cur), ttl)
                break
            time.sleep(max(0.01, min(ttl / (2 * RENEWALS_PER_TTL), 1.0)))
        self.previous = cur
        self.epoch = int(_num(cur.get("epoch"), 0)) + 1 if cur else 1
        t0 = time.monotonic()
        self._write(released=False)
        back = self._read()
        if back is None or back.get("owner") != self.owner:
            raise ChannelLocked(
                f"file channel '{self.channel}': another instance ({_who(back or {})}) took the lock "
                f"{self.store.uri_of(LOCK_KEY)} at the same moment; stop one of them")
        self._confirmed = t0
        self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                        name=f"file-channel-lock-{self.channel}")
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and mark the lock released (if it is still ours), so a reopen is immediate."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        if self.lost_reason:
            return
        try:
            cur = self._read()
            if cur is not None and cur.get("owner") == self.owner:
                self._write(released=True)
        except OSError as exc:
            log.warning("file channel '%s': could not release the lock %s (%s); the next instance "
                        "waits up to %.1fs for it to expire", self.channel,
                        self.store.uri_of(LOCK_KEY), exc, self.ttl_s)
        self.lost_reason = "the lock was released"

    def abandon(self) -> None:
        """Stop renewing without releasing, as a crash would (for tests and for a failed open)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    # -- holding -------------------------------------------------------------------------------
    def valid(self) -> bool:
        return not self.lost_reason and time.monotonic() < self._confirmed + VALID_FRACTION * self.ttl_s

    def _heartbeat(self) -> None:
        suspended = False
        while not self._stop.wait(self.ttl_s / RENEWALS_PER_TTL):
            t0 = time.monotonic()
            lapsed = not self.valid()
            if lapsed and not suspended:
                suspended = True
                log.error("file channel '%s': could not renew its lock %s for %.1fs; it "
                          "acknowledges nothing until it renews it", self.channel,
                          self.store.uri_of(LOCK_KEY), VALID_FRACTION * self.ttl_s)
            try:
                cur = self._read()
                if cur is None or cur.get("owner") != self.owner:
                    self._lose(f"its lock {self.store.uri_of(LOCK_KEY)} is now "
                               f"{'gone' if cur is None else 'held by ' + _who(cur)}")
                    return
                self._write(released=False)
                if lapsed:  # someone may have been taking over at the same moment: check
                    back = self._read()
                    if back is None or back.get("owner") != self.owner:
                        self._lose(f"its lock {self.store.uri_of(LOCK_KEY)} was taken by "
                                   f"{_who(back or {})} while it could not renew it")
                        return
            except OSError as exc:
                log.warning("file channel '%s': renewing the lock %s failed (%s); retrying",
                            self.channel, self.store.uri_of(LOCK_KEY), exc)
                continue
            self._confirmed = t0
            self.renewals += 1
            if suspended:
                suspended = False
                log.warning("file channel '%s': renewed its lock %s again (nobody took over); "
                            "acknowledging writes again", self.channel, self.store.uri_of(LOCK_KEY))

    def _lose(self, why: str) -> None:
        self.lost_reason = why
        log.error("file channel '%s' lost its ownership of %s: %s; it stops writing (another "
                  "instance may own the channel now)", self.channel, self.store.uri, why)

    # -- the object ----------------------------------------------------------------------------
    def _read(self) -> dict | None:
        # A read can see a torn object while its owner renews it (the size read before the
        # bytes, each from a different version): only a lock that stays unreadable over several
        # reads is damaged for good and treated as released. Taking one torn read for a release
        # would let two instances own the channel.
        for attempt in range(LOCK_READ_ATTEMPTS):
            try:
                data = self.store.get(LOCK_KEY)
            except FileNotFoundError:
                return None
            try:
                value = json.loads(data)
                if not isinstance(value, dict):
                    raise ValueError("not an object")
                return value
            except ValueError:
                if attempt + 1 < LOCK_READ_ATTEMPTS:
                    time.sleep(LOCK_REREAD_S * (attempt + 1))
        log.warning("file channel '%s': the lock object %s is unreadable (%d reads); treating it as "
                    "released", self.channel, self.store.uri_of(LOCK_KEY), LOCK_READ_ATTEMPTS)
        return None

    def _write(self, released: bool) -> None:
        with self._write_lock:
            self._seq += 1
            now = time.time()
            body = {"owner": self.owner, "channel": self.channel, "host": socket.gethostname(),
                    "pid": os.getpid(), "epoch": self.epoch, "seq": self._seq, "ttl_s": self.ttl_s,
                    "renewed_at": now, "expires_at": now + self.ttl_s, "released": released}
            self.store.put(LOCK_KEY, [json.dumps(body).encode()])


def _num(value, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _who(lock: dict) -> str:
    return f"owner {str(lock.get('owner', '?'))[:12]} pid {lock.get('pid', '?')} on {lock.get('host', '?')}"


def _stamp(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(_num(t)))
