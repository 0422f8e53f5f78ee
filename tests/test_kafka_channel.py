"""The ``kafka`` channel against a real broker (tansu): the shared channel contract plus Kafka-only cases."""
from __future__ import annotations

import pytest

from rayflume.channels.kafka import KafkaChannel, KafkaChannelConfig
from rayflume.errors import ChannelError
from rayflume.event import Event, EventBatch
from tests.channel_contract import ChannelContract, drain, numbered, numbers, wait_until
from tests.kafka_broker import create_topic, kafka_broker, unique  # noqa: F401 - fixture

BYTE_CAPACITY_SKIP = ("the kafka channel has no byte capacity: Kafka's retention bounds it, and its "
                      "config refuses byte_capacity")


_metadata_support: dict[str, bool] = {}


def kafka_channel(bootstrap_servers: str, **options) -> KafkaChannel:
    """A kafka channel named kch, built from its config as a topology builds it."""
    return KafkaChannelConfig(type="kafka", bootstrap_servers=bootstrap_servers, **options).build("kch")


def keeps_offset_metadata(bootstrap: str) -> bool:
    """Whether the broker returns the metadata of a committed offset (Kafka does; tansu 0.6 does not)."""
    if bootstrap not in _metadata_support:
        from confluent_kafka import Consumer, TopicPartition

        topic = unique("md")
        create_topic(bootstrap, topic)
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("md")})
        try:
            c.commit(offsets=[TopicPartition(topic, 0, 0, "probe")], asynchronous=False)
            got = c.committed([TopicPartition(topic, 0)], timeout=10)
            _metadata_support[bootstrap] = got[0].metadata == "probe"
        finally:
            c.close()
    return _metadata_support[bootstrap]


class _KafkaContract(ChannelContract):
    durable = True
    fmt = "arrow"

    @pytest.fixture(autouse=True)
    def _broker(self, kafka_broker):  # noqa: F811
        self.bootstrap = kafka_broker

    def make_channel(self, tmp_path, **options):
        self._topic = unique("chan")
        self._group = unique("grp")
        if options.get("byte_capacity") is not None:
            pytest.skip(BYTE_CAPACITY_SKIP)
        options.pop("byte_capacity", None)
        return kafka_channel(self.bootstrap, topic=self._topic, group_id=self._group, format=self.fmt,
                            call_timeout_s=10, **options)

    def reopen(self, ch, tmp_path):
        ch.close()
        return kafka_channel(self.bootstrap, topic=self._topic, group_id=self._group, format=self.fmt,
                            call_timeout_s=10)

    def test_capacity_in_bytes(self):
        pytest.skip(BYTE_CAPACITY_SKIP)

    def test_reopen_keeps_committed_puts_and_returns_leases(self):
        # The contract's case, with one difference on brokers that drop offset-commit metadata: a
        # record committed only in part (4 of the 10 events of one arrow record) comes back whole.
        ch = self.make()
        ch.put(numbered(0, 10), "a")
        lease, _ = ch.take(4)
        ch.commit(lease)
        ch.take(3)  # leased, never settled
        ch2 = self.reopen(ch, self.tmp_path)
        exact = self.fmt == "events" or keeps_offset_metadata(self.bootstrap)
        assert drain(ch2) == (list(range(4, 10)) if exact else list(range(10)))


class TestKafkaChannelArrow(_KafkaContract):
    fmt = "arrow"

    def test_reopen_remembers_txn_ids(self):
        # Overridden: after a restart the put-side window is gone, so the retried put reaches Kafka;
        # the duplicate is recognised at take time by its transaction id and never delivered.
        ch = self.make()
        ch.put(numbered(0, 3), "a")
        ch2 = self.reopen(ch, self.tmp_path)
        ch2.put(numbered(0, 3), "a")
        assert drain(ch2) == [0, 1, 2]
        assert ch2.metrics()["DuplicatePutCount"] == 1
        assert ch2.size() == 0

    def test_partly_committed_record_resumes_inside_it(self):
        ch = self.make()
        ch.put(numbered(0, 100), "one-record")
        lease, b = ch.take(30)
        ch.commit(lease)
        lease, b = ch.take(30)
        ch.commit(lease)
        ch.take(30)  # leased, never settled
        ch2 = self.reopen(ch, self.tmp_path)
        exact = keeps_offset_metadata(self.bootstrap)
        assert drain(ch2) == (list(range(60, 100)) if exact else list(range(100)))

    def test_out_of_order_commits_move_offsets_only_over_a_prefix(self):
        ch = self.make()
        for i in range(3):
            ch.put(numbered(i * 10, 10), f"t{i}")
        first, _ = ch.take(10)
        second, _ = ch.take(10)
        ch.commit(second)  # the first is still leased: Kafka's offset cannot pass it
        ch2 = self.reopen(ch, self.tmp_path)
        assert drain(ch2) == list(range(30))  # at-least-once: the committed 10..19 come again


class TestKafkaChannelEvents(_KafkaContract):
    """The contract cases whose path depends on the record format; the others (lease expiry,
    release, capacity, idempotent settle) run the same code for both formats and run above."""

    fmt = "events"
    test_take_empty_waits_up_to_timeout = None
    test_take_wakes_on_put = None
    test_leased_events_count_toward_size = None
    test_lease_timeout_returns_events_to_head = None
    test_release_rolls_back_a_holders_leases = None
    test_renewed_lease_outlives_lease_timeout = None
    test_renew_leaves_other_holders_leases_to_expire = None
    test_renew_of_a_holder_without_leases_is_harmless = None
    test_commit_and_rollback_are_idempotent = None
    test_commit_of_unknown_lease_fails = None
    test_capacity_in_bytes = None
    test_transaction_capacity = None

    def test_reopen_remembers_txn_ids(self):
        pytest.skip("format 'events' writes one record per event without a per-event transaction id, so a "
                    "put retried after a channel restart is delivered twice (documented at-least-once)")

    def test_records_are_plain_kafka_events(self):
        from confluent_kafka import Consumer, TopicPartition

        ch = self.make()
        ch.put(EventBatch.from_events([Event(b"hello", {"h": "1"}), Event(b"world", {})]), "t")
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": unique("reader"),
                      "auto.offset.reset": "earliest"})
        c.assign([TopicPartition(self._topic, 0, 0)])
        got = []
        wait_until(lambda: got.extend(m for m in c.consume(10, 0.2) if not m.error()) or len(got) >= 2,
                   timeout_s=10, what="two records")
        c.close()
        assert [m.value() for m in got] == [b"hello", b"world"]
        assert [(k, v) for k, v in got[0].headers()] == [("h", b"1")]


def test_foreign_records_drain_as_events(kafka_broker):  # noqa: F811
    """A topology without a source: other programs produce plain records, the channel drains them."""
    from confluent_kafka import Producer

    topic = unique("foreign")
    create_topic(kafka_broker, topic)
    p = Producer({"bootstrap.servers": kafka_broker})
    for i in range(50):
        p.produce(topic, str(i).encode(), key=b"k", headers=[("src", b"app")])
    assert p.flush(10) == 0
    ch = kafka_channel(kafka_broker, topic=topic, group_id=unique("g"), call_timeout_s=10)
    try:
        wait_until(lambda: ch.size() == 50, timeout_s=10, what="the channel to see 50 unread records")
        lease, b = ch.take(100, timeout_s=2)
        if len(b) < 50:  # records may arrive over two fetches
            ch.commit(lease)
            got = numbers(b) + drain(ch)
        else:
            got = numbers(b)
            ch.commit(lease)
        assert got == list(range(50))
        assert b.to_events()[0].headers == {"src": "app"}
        assert ch.size() == 0
    finally:
        ch.close()


def test_put_fails_cleanly_when_the_broker_is_unreachable():
    ch = None
    from tests.kafka_broker import free_port

    with pytest.raises(ChannelError, match="cannot set up topic"):
        # Nothing listens there: creating the channel (metadata) fails within call_timeout_s.
        ch = kafka_channel(f"127.0.0.1:{free_port()}", topic="t", call_timeout_s=1)
    assert ch is None


def test_config_validation():
    ok = KafkaChannelConfig(type="kafka", bootstrap_servers="h:1")
    assert ok.needs_sink is False and ok.capacity is None and ok.format == "arrow"
    with pytest.raises(ValueError, match="byte_capacity"):
        KafkaChannelConfig(type="kafka", bootstrap_servers="h:1", byte_capacity=10)
    with pytest.raises(ValueError, match="group_id"):
        KafkaChannelConfig(type="kafka", bootstrap_servers="h:1", consumer={"group.id": "x"})
    with pytest.raises(ValueError, match="enable.idempotence"):
        KafkaChannelConfig(type="kafka", bootstrap_servers="h:1", producer={"acks": 1})
    with pytest.raises(ValueError):
        KafkaChannelConfig(type="kafka", bootstrap_servers="h:1", format="avro")


def test_put_error_is_a_channel_error(kafka_broker):  # noqa: F811
    topic = unique("tiny")
    ch = kafka_channel(kafka_broker, topic=topic, group_id=unique("g"), call_timeout_s=5,
                      producer={"message.max.bytes": 2000})
    try:
        with pytest.raises(ChannelError):
            ch.put(numbered(0, 100, size=100), "too-big")  # one 10 KB record > message.max.bytes
        assert ch.size() == 0
        ch.put(numbered(0, 3), "small")
        assert drain(ch) == [0, 1, 2]
    finally:
        ch.close()
