"""A sink slower than its channel's lease timeout (issue 12).

Every write of the sink takes longer than ``lease_timeout_s``; its sink group renews its leases
(the batch being written and the prefetched take) from a heartbeat, so no lease expires and every
event is delivered exactly once.
"""
from __future__ import annotations

import pytest

from rayflume import testing
from tests.channel_contract import wait_until

pytestmark = pytest.mark.slow  # sinks slower than their lease timeout, 15 s each (-m slow)

EVENTS = 1500  # six writes, each outliving the lease timeout
SINK_BATCH = 250
LEASE_TIMEOUT_S = 1.0
WRITE_DELAY_S = 1.3  # longer than the lease timeout: the injected fault


def channel_config(kind: str, tmp_path) -> dict:
    common = {"capacity": 10_000, "transaction_capacity": 1000, "lease_timeout_s": LEASE_TIMEOUT_S}
    if kind == "memory":
        return {"type": "memory", **common}
    return {"type": "file", **common, "checkpoint_dir": str(tmp_path / "cp"),
            "data_dirs": [str(tmp_path / "data")], "minimum_required_space_bytes": 1 << 20}


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_sink_slower_than_the_lease_timeout_delivers_each_event_once(deployed, tmp_path, kind):
    name = f"slow-sink-{kind}"
    out = testing.collector(name)
    handle = deployed({
        "name": name,
        "metrics": {"port": None},
        "sources": {"gen": {"type": "sequence", "total_events": EVENTS, "batch_size": 100,
                            "channels": ["ch"]}},
        "channels": {"ch": channel_config(kind, tmp_path)},
        "sinks": {"out": {"type": "flaky_sink", "channel": "ch", "collector": name,
                          "batch_size": SINK_BATCH, "write_delay_s": WRITE_DELAY_S}},
    })

    def finished():
        expired = int(handle.metrics()["CHANNEL.ch"].get("LeaseExpiredCount", 0))
        assert expired == 0, f"{expired} leases of the live sink expired: their events come again"
        return handle.finished()

    wait_until(finished, timeout_s=180, interval_s=0.5, what="every event to be delivered")
    final = handle.stop(drain_timeout_s=30)["final_metrics"]
    delivered = [int(b) for b in out.bodies()]
    assert sorted(set(delivered)) == list(range(EVENTS))
    assert len(delivered) == EVENTS, f"{len(delivered) - EVENTS} events delivered twice"
    assert int(final["CHANNEL.ch"]["LeaseExpiredCount"]) == 0
    assert int(final["SINK.out"]["DuplicateDeliveryCount"]) == 0
    out.kill()
