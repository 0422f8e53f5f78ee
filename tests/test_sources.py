"""The ``sequence`` and ``exec`` sources, driven the way the runner drives them (no Ray)."""
from __future__ import annotations

import logging
import random
import subprocess
import time

import pytest
from pydantic import ValidationError

from rayflume.registry import lookup
from rayflume.sources.base import SourceContext
from rayflume.sources.exec import CommandNotFound, ExecSource, ExecSourceConfig, LineFramer, check_command
from rayflume.sources.sequence import SequenceSourceConfig, counter_bodies
from tests.channel_contract import wait_until


def sequence(**options):
    config = lookup("source", "sequence").model_validate({"type": "sequence", "channels": ["c"], **options})
    src = config.build("gen")
    src.start(SourceContext("gen"))
    return src


def run_to_end(src, timeout_s: float = 10.0) -> list[list[bytes]]:
    """Poll and ack like the runner until the source is finished; the bodies of each batch."""
    batches = []
    deadline = time.monotonic() + timeout_s
    while not src.finished:
        assert time.monotonic() < deadline, f"not finished after {timeout_s}s ({sum(map(len, batches))} events)"
        batch = src.poll()
        if batch is None:
            time.sleep(0.005)
            continue
        batches.append(batch.bodies())
        src.ack()
    return batches


# -- sequence ----------------------------------------------------------------------------------------

def test_sequence_numbers_batches_and_finishes():
    src = sequence(total_events=25, batch_size=10, start=5)
    batches = run_to_end(src)
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [int(x) for b in batches for x in b] == list(range(5, 30))
    assert batches[0][:3] == [b"5", b"6", b"7"]
    assert src.poll() is None


def test_sequence_pads_bodies_to_body_size():
    src = sequence(total_events=3, batch_size=10, body_size=6, start=98)
    assert src.poll().bodies() == [b"000098", b"000099", b"000100"]


def test_sequence_headers_are_empty():
    batch = sequence(total_events=4, batch_size=4).poll()
    assert [e.headers for e in batch.to_events()] == [{}, {}, {}, {}]


def test_sequence_counter_moves_only_on_ack():
    src = sequence(total_events=20, batch_size=10)
    first = src.poll()
    # The runner re-polls only after an ack; a poll before it must not skip the held batch.
    assert src.poll().bodies() == first.bodies()
    assert not src.finished
    src.ack()
    assert src.poll().bodies() == [str(i).encode() for i in range(10, 20)]
    assert not src.finished  # the last batch is not acknowledged yet
    src.ack()
    assert src.finished and src.poll() is None


def test_sequence_zero_events_is_finished_at_once():
    src = sequence(total_events=0)
    assert src.finished and src.poll() is None


@pytest.mark.parametrize("first,n", [(0, 1), (0, 1000), (95, 20), (999_990, 25), (7, 3), (10**15 - 3, 7)])
@pytest.mark.parametrize("body_size", [None, 16, 200])
def test_counter_bodies_match_a_python_loop(first, n, body_size):
    expected = [str(i).encode() if body_size is None else str(i).zfill(body_size).encode()
                for i in range(first, first + n)]
    assert counter_bodies(first, n, body_size).to_pylist() == expected


def test_counter_bodies_at_int64_limit():
    top = 2**63 - 1
    assert counter_bodies(top - 1, 2).to_pylist() == [str(top - 1).encode(), str(top).encode()]


def test_sequence_rejects_counters_wider_than_body_size():
    with pytest.raises(ValidationError, match="body_size"):
        SequenceSourceConfig(type="sequence", channels=["c"], total_events=1001, body_size=3)
    with pytest.raises(ValidationError, match="body_size"):
        SequenceSourceConfig(type="sequence", channels=["c"], start=1000, body_size=3)
    SequenceSourceConfig(type="sequence", channels=["c"], total_events=1000, body_size=3)


def test_unlimited_sequence_stops_where_body_size_ends(caplog):
    src = SequenceSourceConfig(type="sequence", channels=["c"], body_size=2, start=95).build("gen")
    with caplog.at_level(logging.WARNING):
        src.start(SourceContext("gen"))
    assert "body_size=2" in caplog.text
    assert [x for b in run_to_end(src) for x in b] == [b"95", b"96", b"97", b"98", b"99"]


def test_sequence_generation_is_vectorised_fast():
    src = sequence(batch_size=10_000, body_size=200)
    src.poll()
    src.ack()
    start = time.perf_counter()
    for _ in range(20):
        assert len(src.poll()) == 10_000
        src.ack()
    per_batch = (time.perf_counter() - start) / 20
    # About 0.4 ms here; a per-event Python loop takes well over 10 ms.
    assert per_batch < 0.01, f"{per_batch * 1e3:.1f} ms per 10,000-event batch"


# -- line framing --------------------------------------------------------------------------------

def test_line_framer_matches_split_for_any_chunking():
    rng = random.Random(7)
    lines = [bytes(rng.choice(b"ab\rc") for _ in range(rng.randrange(0, 12))) for _ in range(500)]
    stream = b"\n".join(lines) + b"\n"
    expected = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    for _ in range(20):
        framer, got, pos = LineFramer(), [], 0
        while pos < len(stream):
            step = rng.randrange(1, 60)
            out = framer.feed(stream[pos:pos + step])
            pos += step
            if out is not None:
                got += out.to_pylist()
        assert framer.flush() is None
        assert got == expected


def test_line_framer_cuts_long_lines_without_loss():
    framer = LineFramer(max_line_bytes=4)
    got = framer.feed(b"abcdefghij\nxy\n").to_pylist() + framer.feed(b"0123456789").to_pylist()
    got += framer.flush().to_pylist()
    assert got == [b"abcd", b"efgh", b"ij", b"xy", b"0123", b"4567", b"89"]
    assert framer.split_count == 4


# -- exec ----------------------------------------------------------------------------------------

@pytest.fixture
def execs(caplog):
    started = []

    def make(logger_name: str = "test.exec", **options):
        config = lookup("source", "exec").model_validate({"type": "exec", "channels": ["c"], **options})
        src = config.build("ex")
        ctx = SourceContext("ex", topology="t", logger=logging.getLogger(logger_name))
        src.start(ctx)
        started.append(src)
        return src

    yield make
    for src in started:
        src.stop()


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_exec_seq_lines_in_order(execs):
    src = execs(command="seq 1 1000", batch_size=100)
    batches = run_to_end(src)
    assert [int(x) for b in batches for x in b] == list(range(1, 1001))
    assert max(len(b) for b in batches) == 100


def test_exec_batches_are_batch_size_until_the_end(execs):
    src = execs(command="seq 1 45", batch_size=20, batch_timeout_s=60)
    assert [len(b) for b in run_to_end(src)] == [20, 20, 5]


def test_exec_partial_batch_waits_for_batch_timeout(execs):
    src = execs(command="sh -c 'echo a; echo b; sleep 30'", batch_size=20, batch_timeout_s=60)
    wait_until(lambda: src.buffered_lines == 2, what="two lines buffered")
    assert src.poll() is None  # fewer than batch_size, timeout not reached, child still running

    started = time.monotonic()
    quick = execs(command="sh -c 'echo a; echo b; sleep 30'", batch_size=20, batch_timeout_s=0.3)
    got = []

    def polled():
        batch = quick.poll()
        if batch is not None:
            got.extend(batch.bodies())
            quick.ack()
        return len(got) == 2

    wait_until(polled, what="the partial batch after batch_timeout_s")
    assert got == [b"a", b"b"]
    assert time.monotonic() - started >= 0.3
    assert not quick.finished


def test_exec_delivers_last_line_without_newline_at_eof(execs):
    src = execs(command=r"printf 'x\r\ny\n\nlast'", batch_size=20, batch_timeout_s=60)
    assert [x for b in run_to_end(src) for x in b] == [b"x", b"y", b"", b"last"]


def test_exec_runs_through_a_shell(execs):
    src = execs(command="seq 1 5 | tail -n 2", shell="/bin/sh -c")
    assert [x for b in run_to_end(src) for x in b] == [b"4", b"5"]


def test_exec_logs_stderr_when_asked(execs, caplog):
    with caplog.at_level(logging.WARNING, logger="test.exec.err"):
        src = execs("test.exec.err", command="sh -c 'echo oops >&2; echo out'", log_std_err=True)
        assert [x for b in run_to_end(src) for x in b] == [b"out"]
        wait_until(lambda: "oops" in caplog.text, what="the stderr line logged")
    record = next(r for r in caplog.records if "oops" in r.getMessage())
    assert record.levelno == logging.WARNING


def test_exec_drains_stderr_silently_by_default(execs, caplog):
    # 200 KB on stderr would block a child whose stderr pipe is never read.
    with caplog.at_level(logging.WARNING, logger="test.exec.quiet"):
        src = execs("test.exec.quiet", command="sh -c 'seq 1 40000 >&2; echo done'")
        assert [x for b in run_to_end(src) for x in b] == [b"done"]
    assert not [r for r in caplog.records if "stderr" in r.getMessage()]


def test_exec_restarts_after_throttle(execs):
    src = execs(command="echo hi", restart=True, restart_throttle_s=0.05, batch_timeout_s=0.05)
    got = []

    def three():
        batch = src.poll()
        if batch is not None:
            got.extend(batch.bodies())
            src.ack()
        return len(got) >= 3

    wait_until(three, what="three runs of the command")
    assert set(got) == {b"hi"}
    assert src.context.counters["RestartCount"] >= 2
    assert not src.finished


def test_exec_without_restart_finishes_after_ack(execs):
    src = execs(command="echo once", batch_timeout_s=60)
    wait_until(lambda: src.poll() is not None, what="the line")
    assert not src.finished  # returned but not acknowledged
    src.ack()
    wait_until(lambda: src.finished, what="finished")
    assert src.context.counters["RestartCount"] == 0


def test_exec_missing_command_fails_clearly(execs):
    config = ExecSourceConfig(type="exec", channels=["c"], command="no-such-program-xyz --flag")
    message = check_command(config, "ex")
    assert "no-such-program-xyz" in message and "`command`" in message and "full path" in message
    with pytest.raises(CommandNotFound) as info:
        execs(command="no-such-program-xyz --flag")
    text = str(info.value)
    assert "source 'ex'" in text and "`command`" in text and "install" in text and "PATH=" in text

    assert check_command(ExecSourceConfig(type="exec", channels=["c"], command="seq 1 3")) is None
    bad_shell = ExecSourceConfig(type="exec", channels=["c"], command="true", shell="/no/such/sh -c")
    assert "`shell`" in check_command(bad_shell)


def test_exec_config_rejects_bad_quoting():
    with pytest.raises(ValidationError, match="quoting"):
        ExecSourceConfig(type="exec", channels=["c"], command="echo 'unterminated")


def test_exec_stop_kills_the_child_and_its_children(execs):
    src = execs(command="sh -c 'sleep 60 & wait'")
    pid = src.pid
    wait_until(lambda: subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).stdout.count(b"\n") >= 2,
               what="the shell and its sleep running")
    group = [int(p) for p in subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).stdout.split()]
    started = time.monotonic()
    src.stop()
    assert time.monotonic() - started < 4
    assert all(process_gone(p) for p in group)


def test_exec_stop_kills_a_child_that_ignores_sigterm(execs):
    config = ExecSourceConfig(type="exec", channels=["c"],
                              command="sh -c 'trap \"\" TERM; echo ready; while :; do sleep 0.1; done'")
    src = ExecSource("ex", config, stop_grace_s=0.3)
    src.start(SourceContext("ex"))
    wait_until(lambda: src.buffered_lines == 1, what="the child's trap to be set")
    src.stop()
    assert process_gone(src.pid)


def test_exec_backpressure_stops_reading_and_loses_nothing():
    src = ExecSource("ex", ExecSourceConfig(type="exec", channels=["c"], command="seq 1 200000", batch_size=5000),
                     buffer_bytes=4096)
    src.start(SourceContext("ex"))
    try:
        wait_until(lambda: src.backpressure_waits > 0, what="the reader to wait for room")
        # One chunk over the bound at most: the child is held back by the pipe, not buffered here.
        assert src.buffered_bytes < 4096 + (1 << 20)
        assert [int(x) for b in run_to_end(src) for x in b] == list(range(1, 200001))
    finally:
        src.stop()
