"""The channel contract: what every rayflume channel guarantees, as test cases to run against a
channel, built-in or one's own.

A channel's test module subclasses :class:`ChannelContract` and defines ``make_channel(tmp_path,
**options)`` (a new, open channel; ``options`` are the common channel keys a case sets:
``capacity``, ``transaction_capacity``, ``byte_capacity``, ``lease_timeout_s``). A durable channel
also sets ``durable = True`` and defines ``reopen(channel, tmp_path)`` (close it and open it again
on the same storage), which adds the restart cases::

    from rayflume.channel_contract import ChannelContract

    class TestMyChannel(ChannelContract):
        def make_channel(self, tmp_path, **options):
            return MyChannel("mine", **options)

pytest collects the subclass as it collects any test class (this module needs nothing from pytest:
cases skip by raising :class:`unittest.SkipTest`, which pytest reports as skipped). Without
pytest, :func:`run_contract` runs every case and returns the outcome of each.

What the cases check: FIFO put/take/commit, waits that wake on puts, rollback to the head, leases
that expire and are renewed per holder, idempotent puts per transaction id, idempotent commit and
rollback, capacity in events and bytes, transaction capacity, headers, concurrent producers and
consumers losing and duplicating nothing; and for durable channels, committed puts and remembered
transaction ids surviving a reopen.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import time
import traceback
import unittest
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path

from rayflume.errors import ChannelFull, LeaseUnknown, TransactionTooLarge
from rayflume.event import EventBatch

__all__ = ["ChannelContract", "run_contract", "numbered", "numbers", "drain", "wait_until", "close_quietly",
           "closing_factory"]


def numbered(start: int, n: int, size: int = 0) -> EventBatch:
    return EventBatch.from_bodies([str(i).zfill(size).encode() for i in range(start, start + n)])


def numbers(batch: EventBatch) -> list[int]:
    return [int(b) for b in batch.bodies()]


def wait_until(predicate, timeout_s: float = 10.0, interval_s: float = 0.01, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def drain(channel, batch: int = 1000) -> list[int]:
    out: list[int] = []
    while True:
        got = channel.take(min(batch, channel.transaction_capacity))
        if got is None:
            return out
        lease, b = got
        out += numbers(b)
        channel.commit(lease)


def close_quietly(channels) -> None:
    """Close every channel, ignoring errors: teardown after tests that may have closed or broken some."""
    for ch in channels:
        try:
            ch.close()
        except Exception:  # a case may have closed or broken it on purpose; teardown goes on
            pass


@contextmanager
def closing_factory(open_one, quiet: bool = True):
    """Yield ``factory(*args, **kwargs)`` returning ``open_one(*args, **kwargs)``; on exit everything
    it made is closed, ignoring errors when ``quiet``."""
    opened = []

    def factory(*args, **kwargs):
        made = open_one(*args, **kwargs)
        opened.append(made)
        return made

    try:
        yield factory
    finally:
        if quiet:
            close_quietly(opened)
        else:
            for made in opened:
                made.close()


class _Raised:
    value: BaseException | None = None


@contextmanager
def raises(kind: type[BaseException]):
    """Fail unless the block raises ``kind``; the exception is then ``.value`` of what is yielded."""
    raised = _Raised()
    try:
        yield raised
    except kind as exc:
        raised.value = exc
        return
    raise AssertionError(f"{kind.__name__} was not raised")


def skip(reason: str):
    """Skip the running case (pytest and unittest both report it as skipped)."""
    raise unittest.SkipTest(reason)


class ChannelContract(ABC):
    """The contract's cases as methods ``test_*``; see the module's docstring.

    Each case gets a fresh temporary directory (``self.tmp_path``) and ``self.make(**options)``,
    which opens a channel with ``make_channel`` and closes it, ignoring errors, after the case.
    """

    durable = False

    @abstractmethod
    def make_channel(self, tmp_path: Path, **options):
        """A new, open channel keeping its storage (if any) under ``tmp_path``."""

    def reopen(self, channel, tmp_path: Path):
        """``channel`` closed and opened again on the same storage (durable channels only)."""
        raise TypeError(f"{type(self).__name__} sets durable = True: it must define reopen(channel, tmp_path)")

    def setup_method(self, method=None) -> None:
        self.tmp_path = Path(tempfile.mkdtemp(prefix="rayflume-contract-"))
        self._made: list = []

    def teardown_method(self, method=None) -> None:
        close_quietly(self._made)
        shutil.rmtree(self.tmp_path, ignore_errors=True)

    def make(self, **options):
        channel = self.make_channel(self.tmp_path, **options)
        self._made.append(channel)
        return channel

    # -- put / take / commit ------------------------------------------------------------------
    def test_put_then_take_commit_is_fifo(self):
        ch = self.make(capacity=1000, transaction_capacity=100)
        ch.put(numbered(0, 10), "t1")
        ch.put(numbered(10, 10), "t2")
        assert ch.size() == 20
        lease, b = ch.take(15)
        assert numbers(b) == list(range(15))
        ch.commit(lease)
        assert ch.size() == 5
        assert drain(ch) == list(range(15, 20))
        assert ch.size() == 0
        assert ch.take(10) is None

    def test_take_empty_waits_up_to_timeout(self):
        ch = self.make()
        t = time.monotonic()
        assert ch.take(10, timeout_s=0.2) is None
        assert time.monotonic() - t >= 0.15

    def test_take_wakes_on_put(self):
        ch = self.make()
        threading.Timer(0.1, lambda: ch.put(numbered(0, 3), "late")).start()
        got = ch.take(10, timeout_s=5)
        assert got is not None and numbers(got[1]) == [0, 1, 2]

    # -- filling a batch before the take --------------------------------------------------------
    def _ready_counting(self):
        ch = self.make(capacity=1000, transaction_capacity=100)
        if ch.ready_events() is None:
            skip("this channel type cannot tell how many events are ready")
        return ch

    def test_ready_events_leaves_out_leased_ones(self):
        ch = self._ready_counting()
        ch.put(numbered(0, 20), "a")
        wait_until(lambda: ch.ready_events() == 20, what="the put to become ready")
        lease, _ = ch.take(15)
        assert ch.ready_events() == 5
        ch.rollback(lease)
        assert ch.ready_events() == 20

    def test_wait_for_batch_returns_once_enough_are_ready(self):
        ch = self._ready_counting()
        ch.put(numbered(0, 30), "a")

        def more():
            ch.put(numbered(30, 30), "b")
            ch.put(numbered(60, 40), "c")

        threading.Timer(0.1, more).start()
        started = time.monotonic()
        ch.wait_for_batch(100, timeout_s=30)
        assert time.monotonic() - started < 20, "it waited for its timeout although 100 events came"
        lease, b = ch.take(100)
        assert numbers(b) == list(range(100))

    def test_wait_for_batch_gives_up_after_its_timeout(self):
        ch = self._ready_counting()
        ch.put(numbered(0, 10), "a")
        started = time.monotonic()
        ch.wait_for_batch(100, timeout_s=0.3)
        assert time.monotonic() - started >= 0.25
        lease, b = ch.take(100)
        assert numbers(b) == list(range(10))

    def test_rollback_restores_at_head(self):
        ch = self.make()
        ch.put(numbered(0, 5), "a")
        ch.put(numbered(5, 5), "b")
        lease, b = ch.take(3)
        assert numbers(b) == [0, 1, 2]
        ch.rollback(lease)
        assert ch.size() == 10
        assert drain(ch) == list(range(10))

    def test_leased_events_count_toward_size(self):
        ch = self.make(capacity=10)
        ch.put(numbered(0, 10), "a")
        ch.take(5)
        assert ch.size() == 10
        with raises(ChannelFull):
            ch.put(numbered(10, 1), "b")

    def test_lease_timeout_returns_events_to_head(self):
        ch = self.make(lease_timeout_s=0.2)
        ch.put(numbered(0, 2), "a")
        ch.put(numbered(2, 2), "b")
        lease, b = ch.take(2)
        assert numbers(b) == [0, 1]
        lease2, _ = ch.take(2)
        ch.commit(lease2)
        # only the first lease's events can come back, and only by expiring
        wait_until(lambda: ch.expire_leases() > 0, timeout_s=5, what="the lease to expire")
        assert ch.size() == 2
        with raises(LeaseUnknown):
            ch.commit(lease)
        assert drain(ch) == [0, 1]

    # -- renewing leases ------------------------------------------------------------------------
    def test_renewed_lease_outlives_lease_timeout(self):
        ch = self.make(lease_timeout_s=0.5)
        ch.put(numbered(0, 4), "a")
        lease, b = ch.take(4, holder="slow")
        assert numbers(b) == [0, 1, 2, 3]
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # three lease timeouts: the renewals keep it
            assert ch.renew("slow") == 0.5
            time.sleep(0.1)  # time passing is what is tested, well inside the 0.5 s timeout
            assert ch.expire_leases() == 0
        ch.commit(lease)
        assert ch.metrics()["LeaseExpiredCount"] == 0
        assert ch.size() == 0
        assert ch.take(4) is None  # nothing was returned to be delivered again

    def test_renew_leaves_other_holders_leases_to_expire(self):
        ch = self.make(lease_timeout_s=0.3)
        ch.put(numbered(0, 2), "a")
        ch.put(numbered(2, 2), "b")
        mine, _ = ch.take(2, holder="alive")
        theirs, b = ch.take(2, holder="gone")
        assert numbers(b) == [2, 3]

        def renew_mine_and_expire():
            ch.renew("alive")
            return ch.expire_leases() > 0

        wait_until(renew_mine_and_expire, timeout_s=10, what="the other holder's lease to expire")
        ch.commit(mine)
        with raises(LeaseUnknown):
            ch.commit(theirs)
        assert ch.metrics()["LeaseExpiredCount"] == 1
        assert drain(ch) == [2, 3]

    def test_renew_of_a_holder_without_leases_is_harmless(self):
        ch = self.make(lease_timeout_s=5)
        assert ch.renew("nobody") == 5
        ch.put(numbered(0, 3), "a")
        assert ch.renew("nobody") == 5
        lease, _ = ch.take(2, holder="sink")
        assert ch.renew("nobody") == 5
        assert ch.size() == 3
        ch.commit(lease)
        assert ch.renew("sink") == 5  # its lease was settled: nothing left to renew
        assert drain(ch) == [2]

    def test_release_rolls_back_a_holders_leases(self):
        ch = self.make()
        ch.put(numbered(0, 6), "a")
        ch.take(2, holder="sink-1")
        ch.take(2, holder="sink-2")
        assert ch.release("sink-1") == 2
        lease, b = ch.take(10)
        assert numbers(b) == [0, 1, 4, 5]

    # -- idempotency ---------------------------------------------------------------------------
    def test_put_is_idempotent_per_txn_id(self):
        ch = self.make()
        ch.put(numbered(0, 5), "same")
        ch.put(numbered(0, 5), "same")
        assert ch.size() == 5
        assert drain(ch) == list(range(5))

    def test_commit_and_rollback_are_idempotent(self):
        ch = self.make()
        ch.put(numbered(0, 4), "a")
        lease, _ = ch.take(2)
        ch.commit(lease)
        ch.commit(lease)
        ch.rollback(lease)  # after a commit: no effect
        assert ch.size() == 2
        lease2, _ = ch.take(2)
        ch.rollback(lease2)
        ch.rollback(lease2)
        assert ch.size() == 2
        with raises(LeaseUnknown):
            ch.commit(lease2)
        assert drain(ch) == [2, 3]

    def test_commit_of_unknown_lease_fails(self):
        ch = self.make()
        with raises(LeaseUnknown):
            ch.commit("no-such-lease")

    # -- capacity ------------------------------------------------------------------------------
    def test_capacity_in_events(self):
        ch = self.make(capacity=10, transaction_capacity=10)
        ch.put(numbered(0, 8), "a")
        with raises(ChannelFull) as err:
            ch.put(numbered(8, 3), "b")
        assert "full" in str(err.value) and ch.name in str(err.value)
        assert ch.size() == 8
        ch.put(numbered(8, 2), "c")
        assert ch.size() == 10
        # the refused txn id was not recorded: the same put goes through once there is room
        drain(ch)
        ch.put(numbered(8, 3), "b")
        assert ch.size() == 3

    def test_capacity_in_bytes(self):
        one = numbered(0, 10, size=100)
        ch = self.make(byte_capacity=one.nbytes * 2 + 10)
        ch.put(one, "a")
        ch.put(numbered(10, 10, size=100), "b")
        with raises(ChannelFull):
            ch.put(numbered(20, 10, size=100), "c")
        assert ch.size() == 20

    def test_transaction_capacity(self):
        ch = self.make(transaction_capacity=5)
        with raises(TransactionTooLarge):
            ch.put(numbered(0, 6), "a")
        with raises(TransactionTooLarge):
            ch.take(6)
        assert ch.size() == 0

    def test_headers_survive(self):
        from rayflume.event import Event

        ch = self.make()
        events = [Event(b"x", {"host": "a", "k": "v"}), Event(b"y", {})]
        ch.put(EventBatch.from_events(events), "a")
        _, b = ch.take(10)
        assert b.to_events() == events

    # -- concurrency ---------------------------------------------------------------------------
    def test_concurrent_producers_and_consumers(self):
        ch = self.make(capacity=2000, transaction_capacity=100)
        producers, per_producer, per_put = 4, 2000, 50
        got: list[int] = []
        got_lock = threading.Lock()
        done = threading.Event()

        def produce(p):
            base = p * per_producer
            for i in range(0, per_producer, per_put):
                while True:
                    try:
                        ch.put(numbered(base + i, per_put), f"p{p}-{i}")
                        break
                    except ChannelFull:
                        time.sleep(0.001)

        def consume():
            while not done.is_set() or ch.size():
                t = ch.take(70, timeout_s=0.05)
                if t is None:
                    continue
                lease, b = t
                with got_lock:
                    got.extend(numbers(b))
                ch.commit(lease)

        ps = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        cs = [threading.Thread(target=consume) for _ in range(3)]
        for t in ps + cs:
            t.start()
        for t in ps:
            t.join(60)
        done.set()
        for t in cs:
            t.join(60)
        assert sorted(got) == list(range(producers * per_producer))
        assert ch.size() == 0

    # -- durability (durable channels only) -----------------------------------------------------
    def test_reopen_keeps_committed_puts_and_returns_leases(self):
        if not self.durable:
            skip("not a durable channel")
        ch = self.make()
        ch.put(numbered(0, 10), "a")
        lease, _ = ch.take(4)
        ch.commit(lease)
        ch.take(3)  # leased, never settled
        ch2 = self.reopen(ch, self.tmp_path)
        assert drain(ch2) == list(range(4, 10))

    def test_reopen_remembers_txn_ids(self):
        if not self.durable:
            skip("not a durable channel")
        ch = self.make()
        ch.put(numbered(0, 3), "a")
        ch2 = self.reopen(ch, self.tmp_path)
        ch2.put(numbered(0, 3), "a")
        assert ch2.size() == 3


def run_contract(contract: type[ChannelContract]) -> dict[str, str]:
    """Run every case of ``contract`` (a subclass of :class:`ChannelContract`) without pytest, one
    after the other: ``{case name: "passed" | "skipped: <reason>" | "failed: <traceback>"}``."""
    outcomes = {}
    # a subclass turns a case off by setting it to None, as pytest would not collect it either
    for case in sorted(name for name in dir(contract) if name.startswith("test_")
                       and callable(getattr(contract, name))):
        instance = contract()
        instance.setup_method()
        try:
            getattr(instance, case)()
            outcomes[case] = "passed"
        except unittest.SkipTest as exc:
            outcomes[case] = f"skipped: {exc}"
        except Exception:
            outcomes[case] = "failed: " + traceback.format_exc()
        finally:
            instance.teardown_method()
    return outcomes
