"""Model-based test of the file channel: random put/take/commit/rollback/crash programs vs a list."""
from __future__ import annotations

import os
import shutil
import tempfile

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, multiple, precondition, rule

from rayflume.channels.file import FileChannel
from rayflume.errors import LeaseUnknown
from tests.channel_contract import numbered, numbers


class FileChannelMachine(RuleBasedStateMachine):
    """The model: ``queue`` (ids in delivery order) and ``leases`` (lease id -> ids, oldest first).

    Event ids grow with every put, so log order is numeric order: after a crash the channel must
    hold exactly the uncommitted ids (queued or leased), sorted.
    """

    leases = Bundle("leases")

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="fc-model-")
        self.ch = self._open()
        self.queue: list[int] = []
        self.held: dict[str, list[int]] = {}
        self.holders: dict[str, str] = {}
        self.next_id = 0
        self.txns: list[tuple[str, int, int]] = []

    def _open(self) -> FileChannel:
        return FileChannel("model", os.path.join(self.dir, "checkpoint"), [os.path.join(self.dir, "data")],
                           capacity=10_000, transaction_capacity=50, minimum_required_space_bytes=0,
                           max_file_size_bytes=1500, checkpoint_interval_s=3600)

    def teardown(self):
        try:
            self.ch.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- rules ---------------------------------------------------------------------------------
    @rule(n=st.integers(1, 8))
    def put(self, n):
        txn = f"t{len(self.txns)}"
        self.ch.put(numbered(self.next_id, n), txn)
        self.txns.append((txn, self.next_id, n))
        self.queue.extend(range(self.next_id, self.next_id + n))
        self.next_id += n

    @precondition(lambda self: self.txns)
    @rule(data=st.data())
    def retry_put(self, data):
        txn, start, n = data.draw(st.sampled_from(self.txns))
        self.ch.put(numbered(start, n), txn)  # already committed: a no-op

    @rule(target=leases, n=st.integers(1, 12), holder=st.sampled_from(["a", "b"]))
    def take(self, n, holder):
        got = self.ch.take(n, holder=holder)
        if not self.queue:
            assert got is None
            return multiple()
        lease, batch = got
        expected, self.queue = self.queue[:n], self.queue[n:]
        assert numbers(batch) == expected
        self.held[lease] = expected
        self.holders[lease] = holder
        return lease

    @rule(lease=consumes(leases))
    def commit(self, lease):
        if lease in self.held:
            self.ch.commit(lease)
            del self.held[lease]
        else:  # taken before a crash: the channel forgot it and its events came back
            with pytest.raises(LeaseUnknown):
                self.ch.commit(lease)

    @rule(lease=consumes(leases))
    def rollback(self, lease):
        self.ch.rollback(lease)
        if lease in self.held:
            self.queue = self.held.pop(lease) + self.queue

    @rule(holder=st.sampled_from(["a", "b"]))
    def release(self, holder):
        mine = [lease for lease in self.held if self.holders[lease] == holder]
        back = []
        for lease in mine:
            back += self.held.pop(lease)
        assert self.ch.release(holder) == len(back)
        self.queue = back + self.queue

    @rule()
    def checkpoint(self):
        assert self.ch.checkpoint()

    @rule(with_checkpoint=st.booleans(), torn_bytes=st.sampled_from([0, 0, 1, 20, 333]))
    def crash_and_reopen(self, with_checkpoint, torn_bytes):
        self.ch.close(checkpoint=with_checkpoint)
        if torn_bytes:
            # a record whose write was cut by the crash: never acknowledged, must vanish
            segments = sorted(os.listdir(os.path.join(self.dir, "data")))
            newest = [s for s in segments if s.endswith(".seg")][-1]
            with open(os.path.join(self.dir, "data", newest), "ab") as f:
                f.write(bytes([0xB1, 0x79, 0x37, 0x9E, 7, 7, 7, 7]) + b"\x00" * torn_bytes)
        self.ch = self._open()
        for ids in self.held.values():
            self.queue += ids
        self.queue.sort()
        self.held.clear()
        assert self.ch.metrics()["CorruptRecordCount"] == 0

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def sizes_agree(self):
        assert self.ch.size() == len(self.queue) + sum(len(v) for v in self.held.values())


FileChannelMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestFileChannelModel = FileChannelMachine.TestCase
