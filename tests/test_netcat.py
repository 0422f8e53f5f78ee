"""The ``netcat`` source over real TCP and UDP sockets, driven by the real SourceRunner into an
in-process memory channel (no Ray)."""
from __future__ import annotations

import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rayflume.registry import lookup
from rayflume.sources.base import SourceContext
from rayflume.sources.netcat import LineSplitter, NetcatSourceConfig, datagram_lines, failed_message
from tests.channel_contract import closing_factory, wait_until
from tests.net_helpers import SourcePipeline


class Pipeline(SourcePipeline):
    def drain(self):
        self.events.extend(self.take_committed())
        return self.events


@pytest.fixture
def netcat():
    def make(pipeline_kw=None, **kw):
        source = NetcatSourceConfig(type="netcat", channels=["c"], bind="127.0.0.1", port=0, **kw).build("nc")
        return Pipeline(source, **(pipeline_kw or {}))

    with closing_factory(make, quiet=False) as factory:
        yield factory


def read_replies(sock: socket.socket, n: int, timeout_s: float = 10.0) -> list[bytes]:
    sock.settimeout(timeout_s)
    data = b""
    while data.count(b"\n") < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.splitlines(keepends=True)


def test_ok_per_event_after_commit(netcat):
    p = netcat()
    with socket.create_connection(("127.0.0.1", p.source.bound_port), timeout=5) as s:
        s.sendall(b"first\nsecond\r\n\nthird\n")
        assert read_replies(s, 4) == [b"OK\n"] * 4
        # every OK'd line is in the channel already
        assert [e.body for e in p.drain()] == [b"first", b"second", b"", b"third"]
    assert p.counters["EventAcceptedCount"] == 4


def test_too_long_lines_are_failed_in_order_and_dropped_whole(netcat):
    p = netcat(max_line_length_bytes=8)
    failed = failed_message(8)
    assert failed == b"FAILED: Event exceeds the maximum length (8 chars, including newline)\n"
    with socket.create_connection(("127.0.0.1", p.source.bound_port), timeout=5) as s:
        s.sendall(b"1234567\n12345678\nok\n")  # 7 + newline fits; 8 + newline does not
        assert read_replies(s, 3) == [b"OK\n", failed, b"OK\n"]
        for piece in (b"very long line ", b"arriving in ", b"pieces\nafter\n"):
            s.sendall(piece)
            time.sleep(0.05)
        assert read_replies(s, 2) == [failed, b"OK\n"]
    assert [e.body for e in p.drain()] == [b"1234567", b"ok", b"after"]
    assert p.counters["EventRejectedCount"] == 2


def test_no_ok_without_ack_every_event_but_failed_still_sent(netcat):
    p = netcat(ack_every_event=False, max_line_length_bytes=5)
    with socket.create_connection(("127.0.0.1", p.source.bound_port), timeout=5) as s:
        s.sendall(b"a\ntoolong\nb\n")
        assert read_replies(s, 1) == [failed_message(5)]
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""
    wait_until(lambda: len(p.drain()) == 2, 5, what="two events")
    assert [e.body for e in p.events] == [b"a", b"b"]


def test_last_line_without_newline_is_delivered_at_close(netcat):
    p = netcat(remote_address_header="addr")
    with socket.create_connection(("127.0.0.1", p.source.bound_port), timeout=5) as s:
        s.sendall(b"x\nunterminated")
        s.shutdown(socket.SHUT_WR)
        assert read_replies(s, 2) == [b"OK\n", b"OK\n"]
    events = p.drain()
    assert [e.body for e in events] == [b"x", b"unterminated"]
    assert all(e.headers == {"addr": "127.0.0.1"} for e in events)


def available(sock: socket.socket, wait_s: float = 0.3) -> bytes:
    """Whatever the server sent within ``wait_s``."""
    sock.settimeout(wait_s)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except TimeoutError:
        return data


def test_a_full_channel_holds_the_client_back_and_loses_nothing(netcat):
    p = netcat(batch_size=100, pipeline_kw={"capacity": 300, "transaction_capacity": 100})
    n = 2000
    with socket.create_connection(("127.0.0.1", p.source.bound_port), timeout=10) as s:
        s.sendall(b"".join(b"line %d\n" % i for i in range(n)))
        wait_until(lambda: p.counters["ChannelWriteFail"] > 0, 5, what="the channel to fill")
        early = available(s)
        assert early == b"OK\n" * p.channel.size()  # an OK only for what is in the channel
        assert p.channel.size() <= 300
        acks = len(early) // 3
        deadline = time.monotonic() + 20
        while acks < n and time.monotonic() < deadline:
            p.drain()  # a sink catching up: commits resume, and so do the OKs
            acks += len(available(s, 0.05)) // 3
        assert acks == n
    wait_until(lambda: len(p.drain()) == n, 10, what="all events")
    assert [e.body for e in p.events] == [b"line %d" % i for i in range(n)]


def test_several_clients_in_parallel(netcat):
    p = netcat(batch_size=64)

    def client(k):
        with socket.create_connection(("127.0.0.1", p.source.bound_port), timeout=10) as s:
            for i in range(20):
                s.sendall(b"".join(b"c%d-%d-%d\n" % (k, i, j) for j in range(10)))
                assert read_replies(s, 10) == [b"OK\n"] * 10

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    bodies = sorted(e.body for e in p.drain())
    assert bodies == sorted(b"c%d-%d-%d" % (k, i, j) for k in range(8) for i in range(20) for j in range(10))


def test_max_connections(netcat):
    p = netcat(max_connections=2)
    a = socket.create_connection(("127.0.0.1", p.source.bound_port), timeout=5)
    b = socket.create_connection(("127.0.0.1", p.source.bound_port), timeout=5)
    try:
        wait_until(lambda: p.counters["OpenConnectionCount"] == 2, 5, what="two connections")
        with socket.create_connection(("127.0.0.1", p.source.bound_port), timeout=5) as c:
            c.settimeout(5)
            try:
                assert c.recv(10) == b""
            except ConnectionResetError:
                pass
        assert p.counters["ConnectionRejectedCount"] == 1
        a.sendall(b"still served\n")
        assert read_replies(a, 1) == [b"OK\n"]
    finally:
        a.close()
        b.close()


def test_udp_lines_and_drops(netcat):
    p = netcat(protocol="udp", max_line_length_bytes=10, remote_address_header="addr")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.sendto(b"one\ntwo\nlast-no-nl", ("127.0.0.1", p.source.bound_port))
        c.sendto(b"short\nthis is far too long\n", ("127.0.0.1", p.source.bound_port))
    wait_until(lambda: len(p.drain()) == 3, 5, what="three events")
    assert sorted(e.body for e in p.events) == [b"one", b"short", b"two"]
    assert all(e.headers == {"addr": "127.0.0.1"} for e in p.events)
    assert p.counters["EventRejectedCount"] == 2


def test_udp_queue_full_drops_datagrams():
    source = NetcatSourceConfig(type="netcat", channels=["c"], bind="127.0.0.1", port=0, protocol="udp",
                                buffer_bytes=1).build("ncu")
    source.start(SourceContext("ncu"))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            for i in range(200):
                c.sendto(b"m%d\n" % i, ("127.0.0.1", source.bound_port))
                if i % 40 == 0:
                    time.sleep(0.02)
        counters = source.context.counters
        wait_until(lambda: sum(item.events for item in list(source.handoff._items)) + counters["EventRejectedCount"]
                   == 200, 10, what="every line queued or counted")
        assert counters["DatagramDroppedCount"] > 0
    finally:
        source.stop()


def test_config():
    config = lookup("source", "netcat")
    c = config.model_validate({"type": "netcat", "channels": ["c"], "port": 44444})
    assert (c.bind, c.max_line_length_bytes, c.ack_every_event, c.protocol) == ("127.0.0.1", 512, True, "tcp")
    with pytest.raises(ValidationError):
        config.model_validate({"type": "netcat", "channels": ["c"], "port": 1, "protocol": "sctp"})
    with pytest.raises(ValidationError):
        config.model_validate({"type": "netcat", "channels": ["c"], "port": 1, "max_line_length_bytes": 1})


# -- framing ---------------------------------------------------------------------------------------

def split_all(splitter: LineSplitter, chunks):
    lines, rejected = [], 0
    for chunk in list(chunks) + [None]:
        got, rej = splitter.flush() if chunk is None else splitter.feed(chunk)
        lines += got.to_pylist()
        rejected += len(rej)
    return lines, rejected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"bb", b"\n", b"\r", b"\r\n", b"0123456789"]), max_size=40).map(b"".join),
       st.lists(st.integers(1, 15), max_size=20), st.integers(2, 12))
def test_fuzz_line_splitter_matches_a_simple_model(stream, cuts, max_len):
    chunks, pos = [], 0
    for cut in cuts:
        chunks.append(stream[pos:pos + cut])
        pos += cut
    chunks.append(stream[pos:])
    pieces = stream.split(b"\n")
    complete, last = pieces[:-1], pieces[-1]
    expected = [line[:-1] if line.endswith(b"\r") else line for line in complete if len(line) + 1 <= max_len]
    rejected = sum(1 for line in complete if len(line) + 1 > max_len)
    if last:
        if len(last) >= max_len:
            rejected += 1
        elif last != b"\r":
            expected.append(last[:-1] if last.endswith(b"\r") else last)
    lines, got_rejected = split_all(LineSplitter(max_len), chunks)
    assert lines == expected
    assert got_rejected == rejected


def test_datagram_lines():
    lines, rejected = datagram_lines(b"a\r\nbb\n\nccccc", 5)
    assert lines.to_pylist() == [b"a", b"bb", b""] and rejected == 1
