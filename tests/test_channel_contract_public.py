"""The public channel contract (``rayflume.channel_contract``) run against a user's channel: the
example's SQLite channel (examples/custom_components/sqlite_channel.py), under pytest as a user's
test module would, and through ``run_contract`` without pytest; a channel that breaks the contract
fails it."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from rayflume.channel_contract import ChannelContract, numbered, run_contract
from rayflume.topology import validate

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_components"


@pytest.fixture(scope="module", autouse=True)
def example_on_path():
    sys.path.insert(0, str(EXAMPLE))
    yield
    sys.path.remove(str(EXAMPLE))


def sqlite_channel():
    return importlib.import_module("sqlite_channel")


class TestSqliteChannelContract(ChannelContract):
    durable = True

    def make_channel(self, tmp_path, **options):
        return sqlite_channel().SqliteChannel("sql", str(tmp_path / "events.db"), **options)

    def reopen(self, channel, tmp_path):
        channel.close()
        return self.make(**{"capacity": channel.capacity, "transaction_capacity": channel.transaction_capacity,
                            "byte_capacity": channel.byte_capacity, "lease_timeout_s": channel.lease_timeout_s})


def test_run_contract_without_pytest_passes_every_case_of_the_example():
    outcomes = run_contract(TestSqliteChannelContract)
    assert len(outcomes) == len([n for n in dir(ChannelContract) if n.startswith("test_")])
    assert {name: o for name, o in outcomes.items() if o != "passed"} == {}


def test_a_channel_that_stores_a_retried_put_twice_fails_the_contract():
    class ForgetsTxnIds(TestSqliteChannelContract):
        def make_channel(self, tmp_path, **options):
            channel = super().make_channel(tmp_path, **options)
            channel._db.execute("CREATE TRIGGER IF NOT EXISTS forget AFTER INSERT ON txns BEGIN DELETE FROM txns; END")
            return channel

    outcomes = run_contract(ForgetsTxnIds)
    failed = {name for name, o in outcomes.items() if o.startswith("failed")}
    assert failed == {"test_put_is_idempotent_per_txn_id", "test_reopen_remembers_txn_ids"}, outcomes
    assert "AssertionError" in outcomes["test_put_is_idempotent_per_txn_id"]


def test_a_durable_contract_without_reopen_says_what_is_missing():
    class NoReopen(ChannelContract):
        durable = True

        def make_channel(self, tmp_path, **options):
            return sqlite_channel().SqliteChannel("sql", str(tmp_path / "db"), **options)

    outcome = run_contract(NoReopen)["test_reopen_remembers_txn_ids"]
    assert outcome.startswith("failed") and "must define reopen(channel, tmp_path)" in outcome


def test_the_example_channel_is_usable_by_import_path(tmp_path):
    topology = validate({
        "name": "sql",
        "sources": {"gen": {"type": "sequence", "total_events": 10, "channels": ["db"]}},
        "channels": {"db": {"type": "sqlite_channel:SqliteChannelConfig", "path": str(tmp_path / "q.db")}},
        "sinks": {"out": {"type": "null", "channel": "db"}},
    })
    config = topology.channels["db"]
    assert config.node_local is True
    channel = config.build("db")
    try:
        channel.put(numbered(0, 3), "t")
        assert channel.size() == 3
    finally:
        channel.close()
