"""The channel's per-sink delivery ledger, without Ray (its use by the actors is in test_cli's
sink SIGKILL test and the chaos runner)."""
from __future__ import annotations

import json

from rayflume._private.ledger import ACCEPTED, DRAINED, DUPLICATES, DeliveryLedger


def test_commits_count_once_per_lease_and_rollbacks_not_at_all():
    ledger = DeliveryLedger()
    ledger.taken("a", "sink", 10)
    ledger.taken("b", "sink", 5)
    ledger.taken("c", "other", 7)
    ledger.committed("a")
    ledger.committed("a")  # a retried commit
    ledger.rolled_back("b")
    ledger.committed("b")  # its events came back; this commit is not the sink's delivery
    assert ledger.totals("sink") == {DRAINED: 10}
    assert ledger.totals("other") == {}


def test_a_commit_after_expiry_is_a_delivery_and_a_coming_duplicate():
    ledger = DeliveryLedger()
    ledger.taken("a", "sink", 10)
    ledger.commit_refused("a")
    assert ledger.totals("sink") == {DRAINED: 10, DUPLICATES: 10}


def test_released_leases_of_a_restarted_holder_count_as_possible_duplicates():
    ledger = DeliveryLedger()
    ledger.taken("written", "sink", 100)
    ledger.taken("prefetched", "sink", 100)
    ledger.taken("theirs", "other", 50)
    assert ledger.released("sink") == 200
    assert ledger.released("sink") == 0, "counted once"
    ledger.committed("written")  # a late commit of the dead incarnation's lease: already returned
    assert ledger.totals("sink") == {DUPLICATES: 200}
    ledger.committed("theirs")
    assert ledger.totals("other") == {DRAINED: 50}


def test_totals_survive_a_round_trip_through_json_and_version_tells_changes():
    ledger = DeliveryLedger()
    v0 = ledger.version
    ledger.taken("a", "sink", 3)
    assert ledger.version == v0, "taking changes no total"
    ledger.committed("a")
    assert ledger.version > v0
    again = DeliveryLedger()
    ledger.accepted("source", "t1", 7)
    again.restore(json.loads(json.dumps(ledger.totals_doc())))
    assert again.totals("sink") == {DRAINED: 3}
    assert again.totals("source") == {ACCEPTED: 7}
    again.restore(None)
    assert again.totals("sink") == {DRAINED: 3}


def test_open_leases_are_bounded():
    ledger = DeliveryLedger(max_open=2)
    for lease in "abc":
        ledger.taken(lease, "gone", 1)
    assert ledger.released("gone") == 2, "the oldest was forgotten"


def test_a_sources_transaction_counts_once_however_often_it_is_put():
    ledger = DeliveryLedger()
    ledger.accepted("source", "t1", 10)
    ledger.accepted("source", "t1", 10)  # a retry whose first attempt was committed
    ledger.accepted("source", "t2", 5)
    assert ledger.totals("source") == {ACCEPTED: 15}
