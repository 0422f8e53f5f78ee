"""The ``hdfs`` sink: Flume's HDFS sink over ``pyarrow.fs`` (HDFS, S3, local disk).

``write(batch)``:

1. routes the batch to its buckets (``(directory, file prefix)``), computed per batch with Arrow
   (:class:`~rayflume.sinks.hdfs.paths.BucketRouter`); a batch whose events lack the ``timestamp``
   header a time escape needs fails whole, as in Flume;
2. plans, per bucket, which events go to which file: the open file takes events while it holds
   fewer than ``roll_count`` events and fewer than ``roll_size_bytes`` body bytes (Flume checks the
   same before each append), and a full file is closed right after the append that filled it;
3. runs the plan on a pool of ``threads_pool_size`` worker threads, buckets in parallel, the steps
   of one bucket in order, every file system call bounded by ``call_timeout_s``;
4. returns once every touched file holds its events durably, so the runner may commit the take.

What "durably" means depends on the storage, and the sink claims no more than it has:

- local disk: the bytes are written and ``fdatasync``-ed (and a new file's directory entry
  ``fsync``-ed) before ``write`` returns;
- HDFS: the stream is ``hflush``-ed (in every DataNode's memory, not on their disks), as Flume does;
- S3 and other object stores: an object exists only once completely uploaded, so every write of an
  open file uploads its bytes as a *part object* under the in-use name; the part is durable when
  ``write`` returns. Closing the file assembles its parts into the final object: one part is moved
  (S3: a server-side copy and a delete), several are read back and uploaded again as one object,
  then deleted. The cost: one PUT per bucket per batch, and each byte crosses the network three
  times (part upload, read back, final upload) when a file has several parts. Large batches
  (``batch_size``) keep the number of parts small.

Failures: if a write fails or times out, ``write`` raises DeliveryError and the runner rolls the take
back. The file that failed is not written to again: it is cut back to its last whole batch where
the storage allows, then finished (renamed) in the background; other buckets of the batch may
already hold their events, which arrive again with the retried batch (at-least-once: duplicates
possible, loss not). A call that timed out keeps running in its thread; its file is finished only
after that call returned. Closing and renaming failures never fail a write: they are retried every
``retry_interval_s`` (``close_tries`` times, 0 = until they succeed).

``maintain()`` closes files open longer than ``roll_interval_s`` and files idle longer than
``idle_timeout_s``, and retries pending finishes. ``stop()`` closes every file. ``start()`` first
finishes the in-use files this sink's naming matches under its root (the static directory before
the path's first escape), left by a crash or a kill: nothing stays in use forever. Local in-use files
are locked while written, so a live writer's file is never taken over; on HDFS and S3 two running
sinks must not share a path and a ``file_prefix`` (Flume's rule too; add ``%[localhost]`` to the
prefix when several agents write one directory).

Methods are called from one thread at a time (see :class:`~rayflume.sinks.base.Sink`); the sink
uses its worker threads internally.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rayflume.errors import DeliveryError
from rayflume.event import EventBatch
from rayflume.sinks.base import Sink, SinkContext
from rayflume.sinks.hdfs.bucket import BucketFile, InUseGroup, Naming, find_in_use, recover
from rayflume.sinks.hdfs.paths import BucketRouter
from rayflume.sinks.hdfs.storage import Storage, fs_path, resolve
from rayflume.sinks.hdfs.writers import make_format

log = logging.getLogger("rayflume.sink.hdfs")

__all__ = ["HdfsSink"]


def _body_lengths(batch: EventBatch) -> np.ndarray:
    body = batch.body
    n = len(body)
    if n == 0:
        return np.zeros(0, np.int64)
    offsets = np.frombuffer(body.buffers()[1], dtype=np.int32, count=n + 1, offset=body.offset * 4)
    return np.diff(offsets).astype(np.int64)


@dataclass
class _Step:
    """One file system call of a plan: ``fn`` runs in a worker thread; the handlers in the sink's."""

    kind: str                       # append | close | recover
    fn: Callable
    file: BucketFile | None = None
    group: InUseGroup | None = None
    events: int = 0


@dataclass
class _Pending:
    """A file to finish later: after a failed or timed-out call, or a failed close."""

    file: BucketFile
    due: float
    attempts: int = 0
    future: Future | None = None   # a timed-out call still running; finish only after it returned


@dataclass
class _Outcome:
    errors: list[str] = field(default_factory=list)


class HdfsSink(Sink):
    """Writes batches into bucketed, rolling files; see the module docstring for its guarantees.

    ``clock`` (monotonic seconds) times rolls and idle closes; ``wall_clock`` (epoch seconds) stamps
    batches with ``use_local_timestamp`` and numbers files. ``storage`` replaces the storage the
    path names (tests); ``hosts`` overrides the host escapes.
    """

    def __init__(self, name: str, config, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, storage: Storage | None = None,
                 hosts: dict[str, str] | None = None):
        self.name = name
        self.config = config
        self.who = f"hdfs sink '{name}'"
        self.batch_size = config.batch_size
        self.clock = clock
        self.wall_clock = wall_clock
        self.context = SinkContext(name=name)
        self.fmt = make_format(config.serializer, config.append_newline, config.compression,
                               config.compression_level)
        self.router = BucketRouter(fs_path(config.path), config.file_prefix, round=config.round,
                                   round_value=config.round_value, round_unit=config.round_unit,
                                   time_zone=config.time_zone, use_local_timestamp=config.use_local_timestamp,
                                   hosts=hosts, wall_clock=wall_clock, who=self.who)
        self.naming = Naming(self.router.prefix_tokens, config.effective_suffix, config.in_use_prefix,
                             config.in_use_suffix, clock_ms=lambda: int(self.wall_clock() * 1000))
        self.storage = storage
        self._pool: ThreadPoolExecutor | None = None
        self._open: OrderedDict[tuple[str, str], BucketFile] = OrderedDict()
        self._pending: list[_Pending] = []
        self._recovery_due: float | None = None
        self._stopped = False

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, context: SinkContext) -> None:
        super().start(context)
        self._pool = ThreadPoolExecutor(self.config.threads_pool_size, thread_name_prefix=f"hdfs-{self.name}")
        if self.storage is None:
            c = self.config
            try:
                self.storage, _ = resolve(c.path, s3_endpoint_override=c.s3_endpoint_override,
                                          s3_region=c.s3_region, s3_access_key=c.s3_access_key,
                                          s3_secret_key=c.s3_secret_key, s3_scheme=c.s3_scheme,
                                          hdfs_user=c.hdfs_user)
            except Exception as exc:
                self._pool.shutdown(wait=False)
                raise DeliveryError(f"{self.who}: cannot open the file system of {c.path!r}: {exc}") from exc
        self._recover()

    def write(self, batch: EventBatch) -> None:
        if self._pool is None:
            raise DeliveryError(f"{self.who}: write() before start()")
        if len(batch) == 0:
            return
        now = self.clock()
        routes = self.router.route(batch)
        lines = [self._plan((r.directory, r.prefix), r.take(batch), now) for r in routes]
        outcome = self._run(lines)
        self._evict()
        if outcome.errors:
            shown = "; ".join(outcome.errors[:3]) + (f" (and {len(outcome.errors) - 3} more)"
                                                    if len(outcome.errors) > 3 else "")
            raise DeliveryError(f"{self.who}: writing {len(batch)} events failed: {shown}; the take is rolled "
                                f"back and will be retried")

    def maintain(self) -> None:
        if self._pool is None or self._stopped:
            return
        now = self.clock()
        lines = []
        for key, f in list(self._open.items()):
            if self._roll_due(f, now) or self._idle(f, now):
                del self._open[key]
                lines.append([self._close_step(f)])
        lines.extend(self._due_finishes(now))
        if lines:
            self._run(lines)
        if self._recovery_due is not None and now >= self._recovery_due:
            self._recover()

    def stop(self) -> None:
        if self._pool is None or self._stopped:
            return
        self._stopped = True
        lines = [[self._close_step(f)] for f in self._open.values()]
        self._open.clear()
        if lines:
            self._run(lines)
        # Calls that timed out get one more call timeout to return; then their files are finished.
        deadline = time.monotonic() + self.config.call_timeout_s
        for p in self._pending:
            if p.future is not None:
                try:
                    p.future.exception(timeout=max(0.0, deadline - time.monotonic()))
                except Exception:
                    pass
        lines = self._due_finishes(float("inf"))
        if lines:
            self._run(lines)
        for p in self._pending:
            log.warning("%s: %s is left unfinished; it is finished when the sink starts again", self.who,
                        p.file.in_use_paths() or p.file.final_name)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- status (tests, metrics) ----------------------------------------------------------------------
    @property
    def open_files(self) -> list[BucketFile]:
        return list(self._open.values())

    @property
    def pending_files(self) -> list[BucketFile]:
        return [p.file for p in self._pending]

    # -- planning ----------------------------------------------------------------------------------
    def _roll_due(self, f: BucketFile, now: float) -> bool:
        interval = self.config.roll_interval_s
        return interval > 0 and now - f.opened_at >= interval

    def _idle(self, f: BucketFile, now: float) -> bool:
        idle = self.config.idle_timeout_s
        return idle > 0 and now - f.last_write >= idle

    def _new_file(self, key: tuple[str, str], now: float) -> BucketFile:
        return BucketFile(self.storage, self.fmt, self.naming, key[0], key[1], now)

    def _plan(self, key: tuple[str, str], sub: EventBatch, now: float) -> list[_Step]:
        """The steps that put ``sub`` into the files of bucket ``key``, rolling by count and size."""
        rc, rs = self.config.roll_count, self.config.roll_size_bytes
        f = self._open.pop(key, None)  # re-inserted last: the open files are kept in LRU order
        steps: list[_Step] = []
        if f is not None and self._roll_due(f, now):
            steps.append(self._close_step(f))
            f = None
        n = len(sub)
        lengths = _body_lengths(sub)
        before = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=before[1:])  # before[i]: body bytes of the events ahead of event i
        events = f.events if f is not None else 0
        size = f.body_bytes if f is not None else 0
        pos = 0
        while pos < n:
            if f is None:
                f = self._new_file(key, now)
                events = size = 0
            room = n - pos
            if rc:
                room = min(room, rc - events)
            if rs:
                room = min(room, int(np.searchsorted(before, before[pos] + (rs - size), side="left")) - pos)
            if room <= 0:
                steps.append(self._close_step(f))
                f = None
                continue
            nbytes = int(before[pos + room] - before[pos])
            steps.append(self._append_step(f, sub.slice(pos, room), nbytes, now))
            events += room
            size += nbytes
            pos += room
            if (rc and events >= rc) or (rs and size >= rs):
                steps.append(self._close_step(f))
                f = None
        if f is not None:
            self._open[key] = f
        return steps

    def _append_step(self, f: BucketFile, chunk: EventBatch, nbytes: int, now: float) -> _Step:
        def run():
            opened = f.opened
            written = f.append(chunk, nbytes, now)
            return written, not opened
        return _Step("append", run, file=f, events=len(chunk))

    def _close_step(self, f: BucketFile) -> _Step:
        return _Step("close", f.finish, file=f)

    def _evict(self) -> None:
        lines = []
        while len(self._open) > self.config.max_open_files:
            _key, f = self._open.popitem(last=False)
            lines.append([self._close_step(f)])
        if lines:
            self._run(lines)

    def _due_finishes(self, now: float) -> list[list[_Step]]:
        lines = []
        for p in self._pending:
            if p.due <= now and (p.future is None or p.future.done()):
                p.future = None
                lines.append([_Step("close", p.file.finish, file=p.file)])
        return lines

    # -- execution ---------------------------------------------------------------------------------
    def _run(self, lines: list[list[_Step]]) -> _Outcome:
        """Run each line's steps in order, lines in parallel, each call bounded by call_timeout_s."""
        outcome = _Outcome()
        queues = [list(reversed(line)) for line in lines if line]
        running: dict[Future, tuple[int, _Step, float]] = {}
        timeout = self.config.call_timeout_s

        def submit(q: int) -> None:
            if queues[q]:
                step = queues[q].pop()
                running[self._pool.submit(step.fn)] = (q, step, time.monotonic() + timeout)

        for q in range(len(queues)):
            submit(q)
        while running:
            wait_s = max(0.0, min(d for _, _, d in running.values()) - time.monotonic())
            done, _ = wait(list(running), timeout=wait_s, return_when=FIRST_COMPLETED)
            for fut in done:
                q, step, _ = running.pop(fut)
                exc = fut.exception()
                if exc is None:
                    self._succeeded(step, fut.result())
                    submit(q)
                elif self._failed(step, exc, outcome):
                    queues[q].clear()
                else:
                    submit(q)
            now = time.monotonic()
            for fut, (q, step, deadline) in list(running.items()):
                if deadline <= now and not fut.done():
                    del running[fut]
                    if self._timed_out(step, fut, outcome):
                        queues[q].clear()
                    else:
                        submit(q)
        return outcome

    def _count(self, key: str, n: int = 1) -> None:
        self.context.count(key, n)

    def _forget(self, f: BucketFile) -> None:
        for key, open_file in list(self._open.items()):
            if open_file is f:
                del self._open[key]

    def _pending_entry(self, f: BucketFile) -> _Pending | None:
        return next((p for p in self._pending if p.file is f), None)

    def _succeeded(self, step: _Step, result) -> None:
        if step.kind == "append":
            written, opened = result
            self._count("BytesWrittenCount", written)
            if opened:
                self._count("ConnectionCreatedCount")
        elif step.kind == "close":
            entry = self._pending_entry(step.file)
            if entry is not None:
                self._pending.remove(entry)
            if step.file.final_path is not None:
                self._count("ConnectionClosedCount")
                log.debug("%s: finished %s", self.who, step.file.final_path)
        elif step.kind == "recover":
            if result is False:
                log.info("%s: %s is locked by a live writer; not recovering it", self.who, step.group.paths[0])
            else:
                self._count("FilesRecoveredCount")
                log.info("%s: finished %s left unfinished by an earlier run%s", self.who,
                         self.storage.display(step.group.paths[0]),
                         f" as {self.storage.display(result)}" if result else " (it was empty: deleted)")

    def _failed(self, step: _Step, exc: BaseException, outcome: _Outcome) -> bool:
        """Handle a failed call; True when the rest of its line must be dropped."""
        self._count("ConnectionFailedCount")
        if step.kind == "append":
            f = step.file
            self._forget(f)
            self._retry_later(f, due=self.clock())
            outcome.errors.append(f"{self.storage.display(f.in_use_path)}: {exc!r}")
            return True
        if step.kind == "close":
            log.warning("%s: closing %s failed (%r); retrying in %.0f s", self.who,
                        self.storage.display(step.file.in_use_path), exc, self.config.retry_interval_s)
            self._retry_later(step.file, due=self.clock() + self.config.retry_interval_s, attempt=True)
            return False
        log.warning("%s: recovering %s failed (%r); retrying later", self.who, step.group.paths, exc)
        self._recovery_due = self.clock() + min(self.config.retry_interval_s, 30.0)
        return False

    def _timed_out(self, step: _Step, fut: Future, outcome: _Outcome) -> bool:
        self._count("CallTimeoutCount")
        what = f"{step.kind} of {self.storage.display(step.file.in_use_path) if step.file else step.group.paths}"
        log.warning("%s: %s did not return within call_timeout_s=%s", self.who, what, self.config.call_timeout_s)
        if step.file is not None:
            self._forget(step.file)
            entry = self._retry_later(step.file, due=self.clock(), attempt=step.kind == "close")
            if entry is not None:
                entry.future = fut
        else:
            self._recovery_due = self.clock() + min(self.config.retry_interval_s, 30.0)
        if step.kind == "append":
            outcome.errors.append(f"{what}: no answer within {self.config.call_timeout_s} s")
            return True
        return False

    def _retry_later(self, f: BucketFile, due: float, attempt: bool = False) -> _Pending | None:
        entry = self._pending_entry(f)
        if entry is None:
            entry = _Pending(f, due)
            self._pending.append(entry)
        entry.due = due
        if attempt:
            entry.attempts += 1
            tries = self.config.close_tries
            if tries and entry.attempts >= tries:
                self._pending.remove(entry)
                log.error("%s: gave up finishing %s after %d attempts; it is finished when the sink starts again",
                          self.who, self.storage.display(f.in_use_path), entry.attempts)
                return None
        return entry

    # -- recovery ----------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Finish the in-use files of earlier runs found under the root."""
        self._recovery_due = None
        root = self.router.root
        if root in ("", "/"):
            log.warning("%s: path %r has no fixed directory before its first escape; in-use files of earlier runs "
                        "are not looked for", self.who, self.config.path)
            return
        fut = self._pool.submit(self.storage.list_files, root)
        try:
            entries = fut.result(timeout=self.config.call_timeout_s)
        except Exception as exc:
            log.warning("%s: cannot list %s to finish earlier in-use files (%r); retrying later", self.who,
                        self.storage.display(root), exc)
            self._recovery_due = self.clock() + min(self.config.retry_interval_s, 30.0)
            return
        known = {p for f in [*self._open.values(), *self.pending_files] for p in f.in_use_paths()}
        known |= {f.in_use_path for f in [*self._open.values(), *self.pending_files]}
        groups = [g for g in find_in_use(entries, self.naming, self.storage) if not set(g.paths) & known]
        if groups:
            log.info("%s: finishing %d file(s) left in use by an earlier run under %s", self.who, len(groups),
                     self.storage.display(root))
            self._run([[_Step("recover", (lambda g=g: recover(self.storage, self.fmt, self.naming, g)), group=g)]
                       for g in groups])
