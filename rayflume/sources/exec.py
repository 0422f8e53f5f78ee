"""The ``exec`` source: runs a command and turns each line of its stdout into an event.

How it works: ``start()`` spawns the child (in its own process group) and a reader thread. The
reader reads stdout in large chunks, frames lines with numpy
(:class:`~rayflume.sources._framing.LineFramer`: the file sources' line framing over a stream; one
pass over the chunk, no per-line Python) into Arrow binary arrays, and queues them in a bounded
buffer. When the buffer is full the reader stops reading, so the pipe fills and the child blocks
on its next write: backpressure reaches the child. stderr is always drained by a second thread
(logged at WARNING when ``log_std_err``), so the child never blocks on a full stderr pipe.

``poll()`` returns up to ``batch_size`` lines; fewer only once ``batch_timeout_s`` passed since the
oldest buffered line arrived, once the buffer is full, or once the child's output ended; otherwise
None. Bodies are the
lines without their ``\\n`` (and without a ``\\r`` before it); a last line without a newline is
delivered when the child closes stdout. A line longer than ``max_event_size_bytes`` is cut into
pieces of that size (counted in ``LinesSplitCount``), so no input is dropped and memory stays
bounded.

When the child exits: with ``restart`` it is started again after ``restart_throttle_s`` (counted
in ``RestartCount``); otherwise the source is ``finished`` once every line read was returned and
acknowledged.

Delivery guarantee (Flume's caveat, which holds here too): **none for lines the child wrote
before the source crashed.** Lines read from the pipe live only in this process until their
batch is committed to the channels; if the source's actor dies they are lost, and a restarted
source starts the command again rather than resuming it. Use ``spooldir`` or ``taildir`` when
loss is not acceptable. Within a running source, lines are delivered in order and a batch is
dropped from the buffer only after ``ack()``.

A child that outlives a crash of the source's process is not killed (it is in its own process
group so that ``stop()`` can kill its whole tree); it gets SIGPIPE on its next write to the closed
pipe, which ends most commands.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import deque

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from rayflume.config_base import SourceConfig
from rayflume.errors import RayflumeError
from rayflume.event import EventBatch
from rayflume.registry import register
from rayflume.sources._framing import LineFramer
from rayflume.sources.base import Source, SourceContext

READ_CHUNK_BYTES = 1 << 20
DEFAULT_BUFFER_BYTES = 8 << 20
DEFAULT_STOP_GRACE_S = 5.0


class CommandNotFound(RayflumeError):
    """The exec source's command (or shell) cannot be run on this node. ``errors`` holds the message
    (one line), for callers that log it."""

    def __init__(self, message: str):
        self.errors = [message]
        super().__init__(message)


def _value_bytes(arr: pa.BinaryArray) -> int:
    if len(arr) == 0:
        return 0
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=arr.offset + len(arr) + 1)
    return int(offsets[-1] - offsets[arr.offset])


def _split_words(text: str, key: str) -> list[str]:
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"exec source: `{key}` {text!r} cannot be split into words ({exc}); fix its quoting") \
            from None
    if not words:
        raise ValueError(f"exec source: `{key}` is empty; give a program to run")
    return words


def command_argv(command: str, shell: str | None) -> list[str]:
    """The argv the exec source runs: ``shell`` words plus ``command`` as one argument, or
    ``command`` split with shlex when there is no shell."""
    if shell:
        return _split_words(shell, "shell") + [command]
    return _split_words(command, "command")


def _executable_problem(program: str) -> str | None:
    if os.sep in program:
        if not os.path.isfile(program):
            return f"{program!r} does not exist on this node"
        if not os.access(program, os.X_OK):
            return f"{program!r} is not executable on this node"
        return None
    if shutil.which(program) is None:
        return f"{program!r} is not installed on this node (not found on PATH={os.environ.get('PATH', '')})"
    return None


def command_problem(command: str, shell: str | None, who: str = "exec source") -> str | None:
    """What prevents this machine from running the program of ``command`` (or ``shell``), as a
    message starting with ``who``; None when it can be run.

    Without ``shell`` this checks the command's first word; with a shell it checks the shell
    only (the shell resolves the command itself, and it may be a pipeline or a builtin). It reads
    only the local file system and PATH: the answer holds for the node that runs it.
    """
    try:
        program = command_argv(command, shell)[0]
    except ValueError as exc:
        return str(exc)
    problem = _executable_problem(program)
    if problem is None:
        return None
    if shell:
        return f"{who}: `shell`: {problem}; install it or give the full path of an installed shell, e.g. '/bin/sh -c'"
    return (f"{who}: `command`: {problem}; install it on every node that runs this source, or fix `command` "
            f"(give its full path, or set `shell`, e.g. '/bin/sh -c', to run it through a shell)")


def check_command(config: "ExecSourceConfig", name: str | None = None) -> str | None:
    """:func:`command_problem` for a config: an error message when the program the source would
    start cannot be found on this machine, else None."""
    return command_problem(config.command, config.shell, f"exec source '{name}'" if name else "exec source")


class _Child:
    """One run of the command: the process and its stderr drainer."""

    def __init__(self, proc: subprocess.Popen, stderr_thread: threading.Thread):
        self.proc = proc
        self.stderr_thread = stderr_thread


class ExecSource(Source):
    """Runs ``command`` and yields its stdout lines in batches.

    ``poll``/``ack``/``stop`` are called from the runner's thread; the reader and stderr threads
    only touch the buffer under its lock. See the module docstring for timing and delivery.
    """

    def __init__(self, name: str, config: ExecSourceConfig, buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                 stop_grace_s: float = DEFAULT_STOP_GRACE_S):
        self.name = name
        self.config = config
        self.argv = command_argv(config.command, config.shell)
        self.buffer_bytes = buffer_bytes
        self.stop_grace_s = stop_grace_s

        self._cond = threading.Condition()
        self._chunks: deque[tuple[float, pa.BinaryArray, int]] = deque()  # (arrival, lines, bytes)
        self._lines = 0
        self._bytes = 0
        self._output_ended = False   # the current child closed stdout: flush without waiting
        self._input_done = False     # no line will ever be added again
        self._error: BaseException | None = None
        self._pending: EventBatch | None = None
        self._stopping = threading.Event()
        self._child: _Child | None = None
        self._reader: threading.Thread | None = None
        self.backpressure_waits = 0

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, context: SourceContext) -> None:
        """Start the command. Raises :class:`CommandNotFound` (naming this source and the key to fix)
        when the command or shell is not installed on this node; nothing is started then, and a
        later ``start()`` checks again."""
        super().start(context)
        problem = command_problem(self.config.command, self.config.shell, f"exec source '{self.name}'")
        if problem is not None:
            raise CommandNotFound(problem)
        for key in ("RestartCount", "LinesSplitCount", "ChildExitCount"):
            context.count(key, 0)  # created here, so the reader thread never grows the dict
        self._child = self._spawn()
        self._reader = threading.Thread(target=self._run, name=f"exec-{self.name}-stdout", daemon=True)
        self._reader.start()

    def _spawn(self) -> _Child:
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, bufsize=0, start_new_session=True)
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            key = "shell" if self.config.shell else "command"
            what = ("install it on this node, give its full path, or set `shell` (e.g. '/bin/sh -c')"
                    if key == "command" else "give the full path of an installed shell, e.g. '/bin/sh -c'")
            raise CommandNotFound(f"exec source '{self.name}': `{key}`: cannot run {self.argv[0]!r} on this node "
                                  f"({exc.strerror}); {what}") from None
        stderr_thread = threading.Thread(target=self._drain_stderr, args=(proc,),
                                         name=f"exec-{self.name}-stderr", daemon=True)
        stderr_thread.start()
        self.context.logger.info("exec source '%s': started %s (pid %d)", self.name, self.argv, proc.pid)
        return _Child(proc, stderr_thread)

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        child = self._child
        if child is not None:
            self._terminate(child.proc)
        if self._reader is not None:
            self._reader.join(self.stop_grace_s + 5)
        if child is not None:
            child.stderr_thread.join(5)

    def _terminate(self, proc: subprocess.Popen) -> None:
        """SIGTERM the child's process group, SIGKILL it after ``stop_grace_s``.

        The group is killed even once the child itself exited, so that grandchildren (the command
        under a shell) do not outlive the source or keep the pipe open. The group is signalled only
        while the child is unreaped (a zombie at worst), so its id cannot belong to anyone else.
        """
        if proc.returncode is not None:
            return
        pgid = proc.pid  # start_new_session made the child its group leader
        self._signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        while not self._exited_unreaped(proc):
            if time.monotonic() >= deadline:
                self.context.logger.warning("exec source '%s': pid %d ignored SIGTERM for %.1fs; killing it",
                                            self.name, proc.pid, self.stop_grace_s)
                break
            time.sleep(0.01)
        self._signal_group(pgid, signal.SIGKILL)
        proc.wait()

    @staticmethod
    def _exited_unreaped(proc: subprocess.Popen) -> bool:
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None
        except ChildProcessError:  # already reaped by the reader thread
            return True

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    # -- reader side (own threads) -----------------------------------------------------------------
    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        fd = proc.stderr.fileno()
        framer = LineFramer(self.config.max_event_size_bytes) if self.config.log_std_err else None
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                if framer is not None:
                    self._log_stderr(framer.feed(chunk))
            if framer is not None:
                self._log_stderr(framer.flush())
        except OSError:
            pass
        finally:
            proc.stderr.close()

    def _log_stderr(self, lines: pa.BinaryArray | None) -> None:
        if lines is None:
            return
        for line in lines.to_pylist():
            self.context.logger.warning("exec source '%s' stderr: %s", self.name,
                                        line.decode("utf-8", errors="replace"))

    def _run(self) -> None:
        try:
            child = self._child
            while True:
                self._pump(child.proc)
                code = child.proc.wait()
                # Bounded: a grandchild may keep stderr open after the child exited.
                child.stderr_thread.join(2.0)
                self.context.count("ChildExitCount")
                with self._cond:
                    self._output_ended = True
                    self._cond.notify_all()
                if self._stopping.is_set():
                    break
                self._log_exit(child.proc, code)
                if not self.config.restart:
                    break
                child = None
                while child is None:
                    if self._stopping.wait(self.config.restart_throttle_s):
                        return
                    try:
                        child = self._spawn()
                    except CommandNotFound as exc:
                        self.context.logger.error("%s; retrying in %.1fs", exc.errors[0],
                                                  self.config.restart_throttle_s)
                with self._cond:
                    self._child = child
                    self._output_ended = False
                self.context.count("RestartCount")
                if self._stopping.is_set():  # stop() may have missed the new child
                    self._terminate(child.proc)
                    return
        except BaseException as exc:  # surfaced by poll(), so the runner can restart the source
            self._error = exc
            self.context.logger.exception("exec source '%s': reader failed", self.name)
        finally:
            with self._cond:
                self._input_done = True
                self._output_ended = True
                self._cond.notify_all()

    def _log_exit(self, proc: subprocess.Popen, code: int) -> None:
        log = self.context.logger
        if code == 127 and self.config.shell:
            log.error("exec source '%s': the shell could not find the command (exit 127); fix `command` "
                      "(with log_std_err: true its message is logged)", self.name)
        elif code == 0:
            log.info("exec source '%s': pid %d exited", self.name, proc.pid)
        else:
            log.warning("exec source '%s': pid %d exited with code %d", self.name, proc.pid, code)

    def _pump(self, proc: subprocess.Popen) -> None:
        fd = proc.stdout.fileno()
        framer = LineFramer(self.config.max_event_size_bytes)
        try:
            while True:
                with self._cond:
                    while self._bytes >= self.buffer_bytes and not self._stopping.is_set():
                        self.backpressure_waits += 1
                        self._cond.wait()
                if self._stopping.is_set():
                    return
                chunk = os.read(fd, READ_CHUNK_BYTES)
                if not chunk:
                    break
                self._enqueue(framer.feed(chunk), framer)
            self._enqueue(framer.flush(), framer)
        finally:
            proc.stdout.close()

    def _enqueue(self, lines: pa.BinaryArray | None, framer: LineFramer) -> None:
        if framer.split_count:
            self.context.logger.warning("exec source '%s': %d line piece(s) longer than max_event_size_bytes=%d "
                                        "were cut", self.name, framer.split_count, self.config.max_event_size_bytes)
            self.context.count("LinesSplitCount", framer.split_count)
            framer.split_count = 0
        if lines is None or len(lines) == 0:
            return
        nbytes = _value_bytes(lines)
        with self._cond:
            self._chunks.append((time.monotonic(), lines, nbytes))
            self._lines += len(lines)
            self._bytes += nbytes

    # -- runner side ----------------------------------------------------------------------------
    @property
    def buffered_lines(self) -> int:
        """Lines read from the child and not yet returned by ``poll``."""
        return self._lines

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    @property
    def pid(self) -> int | None:
        """The pid of the current child, or None before ``start``."""
        child = self._child
        return child.proc.pid if child is not None else None

    def poll(self) -> EventBatch | None:
        if self._pending is not None:
            return self._pending
        if self._error is not None:
            raise RayflumeError(f"exec source '{self.name}': reading the command's output failed: "
                                f"{self._error!r}") from self._error
        with self._cond:
            if self._lines == 0 or self._stopping.is_set():
                return None
            # A full buffer is ready too: the reader cannot add lines until some are taken.
            ready = (self._lines >= self.config.batch_size or self._output_ended
                     or self._bytes >= self.buffer_bytes
                     or time.monotonic() - self._chunks[0][0] >= self.config.batch_timeout_s)
            if not ready:
                return None
            pieces = self._take_locked(self.config.batch_size)
            self._cond.notify_all()
        body = pieces[0] if len(pieces) == 1 else pa.concat_arrays(pieces)
        self._pending = EventBatch.from_bodies(body)
        return self._pending

    def _take_locked(self, want: int) -> list[pa.BinaryArray]:
        pieces = []
        while want > 0 and self._chunks:
            arrived, lines, nbytes = self._chunks.popleft()
            if len(lines) > want:
                rest = lines.slice(want)
                rest_bytes = _value_bytes(rest)
                self._chunks.appendleft((arrived, rest, rest_bytes))
                lines, nbytes = lines.slice(0, want), nbytes - rest_bytes
            pieces.append(lines)
            want -= len(lines)
            self._lines -= len(lines)
            self._bytes -= nbytes
        return pieces

    def ack(self) -> None:
        self._pending = None

    @property
    def finished(self) -> bool:
        return self._input_done and self._error is None and self._lines == 0 and self._pending is None


@register("source", "exec")
class ExecSourceConfig(SourceConfig):
    """``exec``: runs ``command`` and makes each stdout line an event.

    No delivery guarantee for lines the child wrote before a crash of the source (as in Flume).
    """

    command: str = Field(min_length=1, description="The command to run.")
    shell: str | None = Field(
        None, description="Shell invocation that runs `command`, e.g. '/bin/sh -c'. None: `command` is "
                          "split with shlex and run without a shell.")
    restart: bool = Field(False, description="Start the command again when it exits.")
    restart_throttle_s: float = Field(10.0, ge=0, description="Wait before a restart.")
    log_std_err: bool = Field(False, description="Log the command's stderr lines at WARNING "
                                                 "(stderr is always drained).")
    batch_size: int = Field(20, gt=0, description="Most lines in one batch.")
    batch_timeout_s: float = Field(3.0, gt=0, description="A partial batch is returned once its oldest "
                                                          "line waited this long.")
    max_event_size_bytes: int = Field(1 << 20, gt=0, description="Longer lines are cut into pieces of "
                                                                  "this size (not in Flume).")

    @model_validator(mode="after")
    def _check_words(self):
        command_argv(self.command, self.shell)  # raises ValueError on bad quoting or empty words
        return self

    def check(self) -> list[str]:
        """Whether this machine can run the command (see :func:`command_problem`); the source
        itself checks again on its node at start."""
        problem = check_command(self)
        return [problem] if problem else []

    def build(self, name: str) -> ExecSource:
        return ExecSource(name, self)
