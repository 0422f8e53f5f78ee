"""The ``hdfs`` sink: Flume's HDFS sink over ``pyarrow.fs`` (HDFS, S3, local disk).

``write(batch)``:

1. routes the batch to its buckets (``(directory, file prefix)``), computed per batch with Arrow
   (:class:`~rayflume.sinks.hdfs.paths.BucketRouter`); a batch whose events lack the ``timestamp``
   header a time escape needs fails whole, as in Flume;
2. plans, per bucket, which events go to which file: the open file takes events while it holds
   fewer than ``roll_count`` events and fewer than ``roll_size_bytes`` body bytes (Flume checks the
   same before each append), and a full file is closed right after the append that filled it
   (Flume leaves it open until the next event arrives);
3. runs the plan on a pool of ``threads_pool_size`` worker threads, buckets in parallel, the steps
   of one bucket in order, every file system call bounded by ``call_timeout_s``;
4. returns once every touched file holds its events durably, so the runner may commit the take.

What "durably" means depends on the storage, and the sink claims no more than it has:

- local disk: the bytes are written and ``fdatasync``-ed (and a new file's directory entry
  ``fsync``-ed) before ``write`` returns;
- HDFS, S3 and other ``pyarrow.fs`` file systems: a file is durable only once it is closed (an S3
  object exists only once completely uploaded; on HDFS, pyarrow's ``flush()`` is Java's ``flush()``,
  not the ``hflush`` Flume relies on, and does not wait for the DataNodes). So every write of an
  open file goes to its own *part file* under the in-use name, closed before ``write`` returns.
  Closing the file assembles its parts into the final file: a single part is moved (HDFS: a rename;
  S3: a server-side copy and a delete); several are read back and written again as one file, then
  deleted. The cost: one file creation (S3: one PUT) per bucket per batch, and each byte crosses the
  network three times (part, read back, final file) when a file has several parts. Large batches
  (``batch_size``) keep the number of parts small; ``roll_size_bytes`` near ``batch_size`` times
  the event size makes most files single-part.

Closing is asynchronous: a file that is full, due or evicted is handed to a second pool of
``threads_pool_size`` threads that closes it and gives it its final name (rename, part assembly
or Parquet conversion) while the sink goes on writing: none of that affects the durability of
committed events, which are already in the in-use file or its parts. When more than
2 x ``threads_pool_size`` finishes are running, ``write`` waits (up to ``call_timeout_s``) for some
to end, so that finishing keeps up with writing. ``wait_closed()`` waits for all of them.

Failures: if a write fails or times out, ``write`` raises DeliveryError and the runner rolls the take
back. The file that failed is not written to again: it is cut back to its last whole batch where
the storage allows, then finished in the background; other buckets of the batch may already hold
their events, which arrive again with the retried batch (at-least-once: duplicates possible, loss
not). A call that timed out keeps running in its thread; its file is finished only after that call
returned. A finish that fails never fails a write: it is retried every ``retry_interval_s``
(``close_tries`` times, 0 = until it succeeds), and whatever is still unfinished when the sink
stops is finished by the next start.

``maintain()`` closes files open longer than ``roll_interval_s`` and files idle longer than
``idle_timeout_s``, and retries pending finishes. ``stop()`` closes every file and waits for them
to be finished (for at most about ``call_timeout_s`` per ``threads_pool_size`` files). ``start()`` first
finishes the in-use files this sink's naming matches under its root (the static directory before
the path's first escape), left by a crash or a kill: nothing stays in use forever. Local in-use files
are locked while written, so a live writer's file is never taken over. The instances of one sink in
a tier name their files after their instance (see :mod:`~rayflume.sinks.hdfs.bucket`), so they
never collide or finish each other's files; otherwise, on HDFS and S3, two running sinks must not
share a path and a ``file_prefix`` (Flume's rule too: add ``%[localhost]`` to the prefix when
several agents write one directory).

Methods are called from one thread at a time (see :class:`~rayflume.sinks.base.Sink`); the sink
uses its worker threads internally.
"""
from __future__ import annotations

import hashlib
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
from rayflume.sinks.hdfs.paths import BucketRouter, sanitize
from rayflume.sinks.hdfs.storage import Storage, fs_path, resolve
from rayflume.sinks.hdfs.writers import make_format

log = logging.getLogger("rayflume.sink.hdfs")

__all__ = ["HdfsSink", "instance_tag"]


def instance_tag(scope: str) -> str:
    """The name part that tells a tier instance's files apart (``collector/1`` -> ``collector-1``)."""
    if not scope:
        return ""
    tag = sanitize(scope.replace("/", "-")).replace(".", "_")
    if len(tag) > 40:  # e.g. a node id as instance: keep it short and still unique
        tag = f"{tag[:27]}-{hashlib.sha1(scope.encode()).hexdigest()[:12]}"
    return tag


def _body_lengths(batch: EventBatch) -> np.ndarray:
    body = batch.body
    n = len(body)
    if n == 0:
        return np.zeros(0, np.int64)
    offsets = np.frombuffer(body.buffers()[1], dtype=np.int32, count=n + 1, offset=body.offset * 4)
    return np.diff(offsets).astype(np.int64)


@dataclass
class _Step:
    """One step of a plan. ``append`` and ``recover`` run ``fn`` in a worker thread under
    call_timeout_s; ``close`` hands the file to the background finisher and returns at once."""

    kind: str                       # append | close | recover
    fn: Callable | None = None
    file: BucketFile | None = None
    group: InUseGroup | None = None


@dataclass
class _Pending:
    """A file that is closed for writing but not finished yet.

    ``future`` is either the running finish (``finishing``) or a call that timed out and must
    return before the file may be finished. With no future, the finish starts once ``due``.
    """

    file: BucketFile
    due: float = 0.0
    future: Future | None = None
    finishing: bool = False
    started: float = 0.0
    attempts: int = 0
    warned: bool = False


@dataclass
class _Outcome:
    errors: list[str] = field(default_factory=list)


class HdfsSink(Sink):
    """Writes batches into bucketed, rolling files; see the module docstring for its guarantees.

    ``clock`` (monotonic seconds) times rolls, idle closes and retries; ``wall_clock`` (epoch
    seconds) stamps batches with ``use_local_timestamp`` and numbers files. ``storage`` replaces
    the storage the path names (tests); ``hosts`` overrides the host escapes.
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
        self.naming = self._naming("")
        self.storage = storage
        self._pool: ThreadPoolExecutor | None = None       # appends and recovery: the commit path
        self._finisher: ThreadPoolExecutor | None = None   # closes, renames, part assembly, Parquet
        self._open: OrderedDict[tuple[str, str], BucketFile] = OrderedDict()
        self._pending: list[_Pending] = []
        self._recovery_due: float | None = None
        self._stopped = False

    def _naming(self, owner: str) -> Naming:
        c = self.config
        return Naming(self.router.prefix_tokens, c.effective_suffix, c.in_use_prefix, c.in_use_suffix,
                      clock_ms=lambda: int(self.wall_clock() * 1000), owner=owner)

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, context: SinkContext) -> None:
        super().start(context)
        owner = instance_tag(getattr(context, "scope", ""))
        if owner:
            self.naming = self._naming(owner)
        threads = self.config.threads_pool_size
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=f"hdfs-{self.name}")
        self._finisher = ThreadPoolExecutor(threads, thread_name_prefix=f"hdfs-{self.name}-close")
        if self.storage is None:
            c = self.config
            # The path's needs (a Hadoop client for hdfs://, a writable local root) are checked
            # here, on the sink's node; validation does not look at the machine it runs on.
            problems = c.check()
            if problems:
                self._shutdown()
                raise DeliveryError(f"{self.who}: {'; '.join(problems)}")
            try:
                self.storage, _ = resolve(c.path, s3_endpoint_override=c.s3_endpoint_override,
                                          s3_region=c.s3_region, s3_access_key=c.s3_access_key,
                                          s3_secret_key=c.s3_secret_key, s3_scheme=c.s3_scheme,
                                          hdfs_user=c.hdfs_user)
            except Exception as exc:
                self._shutdown()
                raise DeliveryError(f"{self.who}: cannot open the file system of {c.path!r}: {exc}") from exc
        self._recover()

    def write(self, batch: EventBatch) -> None:
        if self._pool is None or self._stopped:
            raise DeliveryError(f"{self.who}: write() outside start() .. stop()")
        if len(batch) == 0:
            return
        now = self.clock()
        if self._pending:
            self._reap(now)
        routes = self.router.route(batch)
        lines = [self._plan((r.directory, r.prefix), r.take(batch), now) for r in routes]
        outcome = self._run(lines)
        self._evict()
        self._throttle()
        if outcome.errors:
            shown = "; ".join(outcome.errors[:3]) + (f" (and {len(outcome.errors) - 3} more)"
                                                    if len(outcome.errors) > 3 else "")
            raise DeliveryError(f"{self.who}: writing {len(batch)} events failed: {shown}; the take is rolled "
                                f"back and will be retried")

    def maintain(self) -> None:
        if self._pool is None or self._stopped:
            return
        now = self.clock()
        for key, f in list(self._open.items()):
            if self._roll_due(f, now) or self._idle(f, now):
                del self._open[key]
                self._finish_later(f)
        self._reap(now)
        if self._recovery_due is not None and now >= self._recovery_due:
            self._recover()

    def stop(self) -> None:
        """Close every file and wait (a bounded time) for them to be finished; a file that cannot be
        finished now is finished when the sink starts again."""
        if self._pool is None or self._stopped:
            return
        self._stopped = True
        for f in self._open.values():
            self._finish_later(f)
        self._open.clear()
        budget = self.config.call_timeout_s * (1 + len(self._pending) / self.config.threads_pool_size)
        self.wait_closed(budget)
        if self._pending:  # a finish that failed is tried once more right away
            self._reap(self.clock(), retry_now=True)
            self.wait_closed(budget)
        for p in self._pending:
            log.warning("%s: %s is left unfinished; it is finished when the sink starts again", self.who,
                        [self.storage.display(x) for x in p.file.in_use_paths()] or p.file.final_name)
        self._shutdown()

    def wait_closed(self, timeout_s: float | None = None) -> bool:
        """Wait until the finishes started so far (and calls that timed out) returned, or ``timeout_s``
        passed. True when no file is left unfinished; a failed finish is retried after
        ``retry_interval_s`` by ``maintain()``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self._reap(self.clock())
            running = [p.future for p in self._pending if p.future is not None]
            if not running:
                return not self._pending
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            wait(running, timeout=remaining, return_when=FIRST_COMPLETED)

    def _shutdown(self) -> None:
        for pool in (self._pool, self._finisher):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

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
            steps.append(_Step("close", file=f))
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
                steps.append(_Step("close", file=f))
                f = None
                continue
            nbytes = int(before[pos + room] - before[pos])
            steps.append(self._append_step(f, sub.slice(pos, room), nbytes, now))
            events += room
            size += nbytes
            pos += room
            if (rc and events >= rc) or (rs and size >= rs):
                steps.append(_Step("close", file=f))
                f = None
        if f is not None:
            self._open[key] = f
        return steps

    def _append_step(self, f: BucketFile, chunk: EventBatch, nbytes: int, now: float) -> _Step:
        def run():
            opened = f.opened
            written = f.append(chunk, nbytes, now)
            return written, not opened
        return _Step("append", run, file=f)

    def _evict(self) -> None:
        while len(self._open) > self.config.max_open_files:
            _key, f = self._open.popitem(last=False)
            self._finish_later(f)

    # -- execution ---------------------------------------------------------------------------------
    def _run(self, lines: list[list[_Step]]) -> _Outcome:
        """Run each line's steps in order, lines in parallel, each call bounded by call_timeout_s."""
        outcome = _Outcome()
        queues = [list(reversed(line)) for line in lines if line]
        running: dict[Future, tuple[int, _Step, float]] = {}
        timeout = self.config.call_timeout_s

        def submit(q: int) -> None:
            while queues[q]:
                step = queues[q].pop()
                if step.kind == "close":
                    self._finish_later(step.file)  # the file's appends are done: finish it in the background
                    continue
                running[self._pool.submit(step.fn)] = (q, step, time.monotonic() + timeout)
                return

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
                else:
                    self._failed(step, exc, outcome)
                    queues[q].clear()
            now = time.monotonic()
            for fut, (q, step, deadline) in list(running.items()):
                if deadline <= now and not fut.done():
                    del running[fut]
                    self._timed_out(step, fut, outcome)
                    queues[q].clear()
        return outcome

    def _count(self, key: str, n: int = 1) -> None:
        self.context.count(key, n)

    def _forget(self, f: BucketFile) -> None:
        for key, open_file in list(self._open.items()):
            if open_file is f:
                del self._open[key]

    def _succeeded(self, step: _Step, result) -> None:
        if step.kind == "append":
            written, opened = result
            self._count("BytesWrittenCount", written)
            if opened:
                self._count("ConnectionCreatedCount")
        elif result is False:
            log.info("%s: %s is locked by a live writer; not recovering it", self.who, step.group.paths[0])
        else:
            self._count("FilesRecoveredCount")
            log.info("%s: finished %s left unfinished by an earlier run%s", self.who,
                     self.storage.display(step.group.paths[0]),
                     f" as {self.storage.display(result)}" if result else " (it was empty: deleted)")

    def _failed(self, step: _Step, exc: BaseException, outcome: _Outcome) -> None:
        self._count("ConnectionFailedCount")
        if step.kind == "append":
            f = step.file
            self._forget(f)
            self._pending.append(_Pending(f, due=self.clock()))  # finished (cut back) by the next maintain()
            outcome.errors.append(f"{self.storage.display(f.in_use_path)}: {exc!r}")
        else:
            log.warning("%s: recovering %s failed (%r); retrying later", self.who, step.group.paths, exc)
            self._recovery_due = self.clock() + min(self.config.retry_interval_s, 30.0)

    def _timed_out(self, step: _Step, fut: Future, outcome: _Outcome) -> None:
        self._count("CallTimeoutCount")
        what = f"{step.kind} of " + (self.storage.display(step.file.in_use_path) if step.file
                                     else str(step.group.paths))
        log.warning("%s: %s did not return within call_timeout_s=%s", self.who, what, self.config.call_timeout_s)
        if step.kind == "append":
            self._forget(step.file)
            # Finished only after the stuck call returned: until then it may still write to the file.
            self._pending.append(_Pending(step.file, due=self.clock(), future=fut))
            outcome.errors.append(f"{what}: no answer within {self.config.call_timeout_s} s")
        else:
            self._recovery_due = self.clock() + min(self.config.retry_interval_s, 30.0)

    # -- background finishing -------------------------------------------------------------------------
    def _throttle(self) -> None:
        """Backpressure: with more than 2 x threads_pool_size finishes running, wait (up to
        call_timeout_s) until they are back under that, so finishing keeps up with writing."""
        limit = 2 * self.config.threads_pool_size
        deadline = time.monotonic() + self.config.call_timeout_s
        while True:
            running = [p.future for p in self._pending if p.finishing and p.future is not None]
            remaining = deadline - time.monotonic()
            if len(running) <= limit or remaining <= 0:
                return
            wait(running, timeout=remaining, return_when=FIRST_COMPLETED)
            self._reap(self.clock())

    def _finish_later(self, f: BucketFile) -> None:
        self._pending.append(_Pending(f, future=self._finisher.submit(f.finish), finishing=True,
                                      started=time.monotonic()))

    def _reap(self, now: float, retry_now: bool = False) -> None:
        """Account for finished finishes; start the finishes that are due."""
        for p in list(self._pending):
            fut = p.future
            if fut is not None:
                if not fut.done():
                    if p.finishing and not p.warned and time.monotonic() - p.started > self.config.call_timeout_s:
                        p.warned = True
                        self._count("CallTimeoutCount")
                        log.warning("%s: finishing %s takes longer than call_timeout_s=%s", self.who,
                                    p.file, self.config.call_timeout_s)
                    continue
                p.future = None
                if not p.finishing:
                    p.due = now  # the stuck call returned: the file may be finished now
                else:
                    p.finishing = False
                    exc = fut.exception()
                    if exc is None:
                        self._pending.remove(p)
                        if p.file.final_path is not None:
                            self._count("ConnectionClosedCount")
                        continue
                    p.attempts += 1
                    self._count("ConnectionFailedCount")
                    tries = self.config.close_tries
                    if tries and p.attempts >= tries:
                        self._pending.remove(p)
                        log.error("%s: gave up finishing %s after %d attempts (%r); it is finished when the sink "
                                  "starts again", self.who, p.file, p.attempts, exc)
                        continue
                    p.due = now + self.config.retry_interval_s
                    log.warning("%s: finishing %s failed (%r); retrying in %.0f s", self.who, p.file, exc,
                                self.config.retry_interval_s)
                    if not retry_now:
                        continue
            if p.future is None and (p.due <= now or retry_now):
                p.future = self._finisher.submit(p.file.finish)
                p.finishing, p.started, p.warned = True, time.monotonic(), False

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
        mine = [*self._open.values(), *self.pending_files]
        known = {p for f in mine for p in f.in_use_paths()} | {f.in_use_path for f in mine}
        groups = [g for g in find_in_use(entries, self.naming, self.storage) if not set(g.paths) & known]
        if groups:
            log.info("%s: finishing %d file(s) left in use by an earlier run under %s", self.who, len(groups),
                     self.storage.display(root))
            self._run([[_Step("recover", (lambda g=g: recover(self.storage, self.fmt, self.naming, g)), group=g)]
                       for g in groups])
