"""Flume's Avro RPC: the ``avro`` source, the ``avro`` sink and :class:`rayflume.client.AvroClient`,
over real sockets on loopback (sources run in this process, driven by the real SourceRunner).

Wire compatibility is checked against an independent client: the ``avro`` package's own
``Requestor`` over a Netty-framing transceiver written here from the format's description (not
rayflume's framing), with the protocol text written as Flume's IDL compiler emits it, so its hash
differs from rayflume's and the full handshake (NONE, then the protocol text) runs.
"""
from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import zlib

import avro.io
import avro.ipc
import avro.protocol
import avro.schema
import pytest

from rayflume.client import AvroClient, NotCommitted, send_file
from rayflume.errors import DeliveryError
from rayflume.event import Event, EventBatch
from rayflume.registry import lookup
from rayflume.sinks.base import SinkContext
from tests.channel_contract import closing_factory, wait_until
from tests.net_helpers import CollectingPipeline, cert  # noqa: F401  (cert: the fixture)

WAIT_S = 10

# AvroSourceProtocol as Flume's build emits it (flume.avdl compiled to JSON), written independently
# of rayflume.flume_avro.PROTOCOL: same names and types, different text, different MD5.
FLUME_PROTOCOL_TEXT = json.dumps({
    "protocol": "AvroSourceProtocol", "namespace": "org.apache.flume.source.avro",
    "doc": "* Licensed to the Apache Software Foundation (ASF)",
    "types": [{"type": "enum", "name": "Status", "symbols": ["OK", "FAILED", "UNKNOWN"]},
              {"type": "record", "name": "AvroFlumeEvent",
               "fields": [{"name": "headers", "type": {"type": "map", "values": "string"}},
                          {"name": "body", "type": "bytes"}]}],
    "messages": {"append": {"request": [{"name": "event", "type": "AvroFlumeEvent"}], "response": "Status"},
                 "appendBatch": {"request": [{"name": "events", "type": {"type": "array", "items": "AvroFlumeEvent"}}],
                                 "response": "Status"}}}, indent=2)


class NettyTransceiver:
    """Avro's Netty framing for the ``avro`` package's Requestor: serial, buffer count, then
    length-prefixed buffers, each way. Written from the format's description, for this test."""

    def __init__(self, port: int, deflate: bool = False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        self.serial = 0
        self.remote_name = f"127.0.0.1:{port}"
        self._out = zlib.compressobj() if deflate else None
        self._in = zlib.decompressobj() if deflate else None
        self._buf = b""

    def transceive(self, request: bytes) -> bytes:
        self.serial += 1
        # two buffers, to check that the source joins a pack's buffers
        half = len(request) // 2
        data = struct.pack(">II", self.serial, 2) + b"".join(
            struct.pack(">I", len(part)) + part for part in (request[:half], request[half:]))
        if self._out:
            data = self._out.compress(data) + self._out.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)
        serial, count = struct.unpack(">II", self._read(8))
        assert serial == self.serial
        return b"".join(self._read(struct.unpack(">I", self._read(4))[0]) for _ in range(count))

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            assert chunk, "the source closed the connection"
            self._buf += self._in.decompress(chunk) if self._in else chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def close(self):
        self.sock.close()


def reference_requestor(port: int, deflate: bool = False):
    transceiver = NettyTransceiver(port, deflate)
    return avro.ipc.Requestor(avro.protocol.parse(FLUME_PROTOCOL_TEXT), transceiver), transceiver


@pytest.fixture
def pipelines():
    def make(put_capacity: int = 1_000_000, **cfg):
        config = lookup("source", "avro").model_validate({"type": "avro", "port": 0, "channels": ["mem"], **cfg})
        return CollectingPipeline(config.build("avro-in"), capacity=put_capacity)

    with closing_factory(make, quiet=False) as factory:
        yield factory


def bodies(events) -> list[bytes]:
    return [e.body for e in events]


# -- the source against the reference client ---------------------------------------------------------

@pytest.mark.parametrize("deflate", [False, True])
def test_reference_avro_requestor_appends_through_the_handshake(pipelines, deflate):
    p = pipelines(compression_type="deflate" if deflate else "none")
    requestor, transceiver = reference_requestor(p.port, deflate)
    try:
        assert requestor.request("append", {"event": {"headers": {"host": "web1"}, "body": b"first"}}) == "OK"
        events = [{"headers": {"n": str(i)}, "body": b"batch %d" % i} for i in range(50)]
        assert requestor.request("appendBatch", {"events": events}) == "OK"
        assert requestor.request("appendBatch", {"events": []}) == "OK"
    finally:
        transceiver.close()
    got = p.collect(51)
    assert got[0] == Event(b"first", {"host": "web1"})
    assert [(e.body, e.headers) for e in got[1:]] == [(b"batch %d" % i, {"n": str(i)}) for i in range(50)]
    assert p.counters["AppendReceivedCount"] == 1 and p.counters["AppendAcceptedCount"] == 1
    assert p.counters["ProtocolErrorCount"] == 0


def test_source_answers_failed_when_its_channel_is_full_and_the_retry_succeeds(pipelines):
    p = pipelines(put_capacity=100, commit_timeout_s=1.0)
    client = AvroClient("127.0.0.1", p.port)
    try:
        client.append_batch([b"fill %d" % i for i in range(100)])
        with pytest.raises(NotCommitted, match="answered FAILED"):
            client.append_batch([b"over"])
        assert p.counters["RequestFailedCount"] == 1
        assert bodies(p.collect(100)) == [b"fill %d" % i for i in range(100)]  # drains the channel
        client.append_batch([b"over"])  # the same connection, retried
    finally:
        client.close()
    assert bodies(p.collect(101))[-1] == b"over"
    assert client.connections_opened == 1


def test_unknown_message_is_an_error_reply_and_the_connection_stays_usable(pipelines):
    p = pipelines()
    protocol = json.loads(FLUME_PROTOCOL_TEXT)
    protocol["messages"]["ping"] = {"request": [], "response": "Status"}
    transceiver = NettyTransceiver(p.port)
    requestor = avro.ipc.Requestor(avro.protocol.parse(json.dumps(protocol)), transceiver)
    replies = []
    transceive = transceiver.transceive
    transceiver.transceive = lambda request: replies.append(transceive(request)) or replies[-1]
    try:
        # the reference client will not read an answer to a message the server's protocol lacks;
        # the answer itself is an error reply naming the message
        with pytest.raises(avro.errors.AvroException, match="ping"):
            requestor.request("ping", {})
        assert b"unknown message 'ping'" in replies[-1]
        assert requestor.request("append", {"event": {"headers": {}, "body": b"after"}}) == "OK"
    finally:
        transceiver.close()
    assert bodies(p.collect(1)) == [b"after"]


def test_garbage_and_oversized_requests_close_only_their_connection(pipelines):
    p = pipelines(max_request_bytes=1 << 16, memory_budget_bytes=1 << 20)
    with socket.create_connection(("127.0.0.1", p.port), timeout=WAIT_S) as s:
        s.sendall(struct.pack(">II", 1, 1) + struct.pack(">I", 1 << 20))  # a 1 MiB buffer declared
        assert s.recv(10) == b""
    with socket.create_connection(("127.0.0.1", p.port), timeout=WAIT_S) as s:
        s.sendall(struct.pack(">II", 1, 1) + struct.pack(">I", 5) + b"hello")  # not a handshake
        assert s.recv(10) == b""
    wait_until(lambda: p.counters["ProtocolErrorCount"] == 2, WAIT_S, what="two protocol errors")
    with AvroClient("127.0.0.1", p.port) as client:
        client.append_batch([b"good"])
    assert bodies(p.collect(1)) == [b"good"]


def test_a_compressed_request_that_expands_past_the_limit_is_refused(pipelines):
    p = pipelines(compression_type="deflate", max_request_bytes=1 << 16, memory_budget_bytes=1 << 20)
    with AvroClient("127.0.0.1", p.port, compression_type="deflate") as client:
        with pytest.raises(DeliveryError):
            client.append_batch([b"\0" * (1 << 17)])  # compresses to a few hundred bytes
        client.append_batch([b"small"])  # a new connection
    assert bodies(p.collect(1)) == [b"small"]
    assert p.counters["ProtocolErrorCount"] == 1


# -- client and sink ---------------------------------------------------------------------------------------------

def test_client_sends_headers_and_bodies_in_order_over_one_connection(pipelines):
    p = pipelines()
    with AvroClient("127.0.0.1", p.port) as client:
        for start in range(0, 1000, 100):
            client.append_batch([Event(b"e%d" % i, {"i": str(i)}) for i in range(start, start + 100)])
        client.append("single", {"k": "v"})
        assert client.connections_opened == 1
    got = p.collect(1001)
    assert [(e.body, e.headers) for e in got[:1000]] == [(b"e%d" % i, {"i": str(i)}) for i in range(1000)]
    assert got[1000] == Event(b"single", {"k": "v"})


def test_send_file_batches_lines_like_flume_ng_avro_client(pipelines, tmp_path):
    p = pipelines()
    path = tmp_path / "in.log"
    path.write_bytes(b"".join(b"line %d\r\n" % i for i in range(250)))
    with AvroClient("127.0.0.1", p.port) as client, open(path, "rb") as f:
        assert send_file(client, f, batch_size=100, headers={"file": "in.log"}) == 250
    got = p.collect(250)
    assert bodies(got) == [b"line %d" % i for i in range(250)]
    assert {e.headers["file"] for e in got} == {"in.log"}
    assert p.counters["AppendBatchReceivedCount"] >= 1


def test_client_to_a_dead_port_fails_with_the_address():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(DeliveryError, match=f"127.0.0.1:{port}"):
        AvroClient("127.0.0.1", port, connect_timeout_s=2).append_batch([b"x"])


def avro_sink(port: int, **cfg):
    config = lookup("sink", "avro").model_validate({"type": "avro", "channel": "c", "hostname": "127.0.0.1",
                                                    "port": port, **cfg})
    sink = config.build("out")
    sink.start(SinkContext("out"))
    return sink


def test_sink_resets_its_connection_on_the_interval_and_reconnects_after_a_restart(pipelines):
    p = pipelines()
    sink = avro_sink(p.port, reset_connection_interval_s=0.2)
    try:
        sink.write(EventBatch.from_bodies([b"a"]))
        sink.write(EventBatch.from_bodies([b"b"]))
        wait_until(lambda: time.monotonic() - sink.client.connected_at > 0.2, 5, what="the interval")
        sink.write(EventBatch.from_bodies([b"c"]))
        counters = sink.context.counters
        assert counters["ConnectionCreatedCount"] == 2 and counters["ConnectionClosedCount"] == 1
    finally:
        sink.stop()
    assert bodies(p.collect(3)) == [b"a", b"b", b"c"]


def test_sink_rolls_back_when_the_source_is_gone(pipelines):
    p = pipelines()
    sink = avro_sink(p.port)
    try:
        sink.write(EventBatch.from_bodies([b"before"]))
        p.collect(1)
        p.source.stop()
        with pytest.raises(DeliveryError, match="rolled back"):
            sink.write(EventBatch.from_bodies([b"lost?"]))
        assert sink.context.counters["ConnectionFailedCount"] == 1
    finally:
        sink.stop()


def test_tls_with_client_certificates(pipelines, cert):
    certfile, keyfile = cert
    p = pipelines(ssl=True, ssl_certfile=certfile, ssl_keyfile=keyfile, ssl_client_ca_file=certfile)
    sink = avro_sink(p.port, ssl=True, ssl_ca_file=certfile, ssl_certfile=certfile, ssl_keyfile=keyfile)
    try:
        sink.write(EventBatch.from_bodies([b"over mtls"]))
    finally:
        sink.stop()
    assert bodies(p.collect(1)) == [b"over mtls"]
    anonymous = AvroClient("127.0.0.1", p.port, ssl=True, ssl_ca_file=certfile)
    with pytest.raises(DeliveryError):
        anonymous.append_batch([b"refused"])
    wait_until(lambda: p.counters["TlsHandshakeFailCount"] == 1, WAIT_S, what="the refused handshake")


def test_config_errors():
    source = lookup("source", "avro")
    with pytest.raises(ValueError, match="memory_budget_bytes"):
        source.model_validate({"type": "avro", "port": 0, "channels": ["c"], "max_request_bytes": 1 << 30})
    sink = lookup("sink", "avro")
    with pytest.raises(ValueError, match="`ssl_ca_file` is set but `ssl` is false"):
        sink.model_validate({"type": "avro", "channel": "c", "hostname": "h", "port": 1, "ssl_ca_file": "/x.pem"})
    with pytest.raises(ValueError, match="compression_type"):
        sink.model_validate({"type": "avro", "channel": "c", "hostname": "h", "port": 1, "compression_type": "lz4"})


def test_many_threads_share_the_source(pipelines):
    p = pipelines()
    errors = []

    def send(k: int):
        try:
            with AvroClient("127.0.0.1", p.port) as client:
                for start in range(0, 500, 50):
                    client.append_batch([b"%d-%d" % (k, i) for i in range(start, start + 50)])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    got = bodies(p.collect(4000))
    assert sorted(got) == sorted(b"%d-%d" % (k, i) for k in range(8) for i in range(500))
    for k in range(8):  # each connection's events in its order
        mine = [b for b in got if b.startswith(b"%d-" % k)]
        assert mine == [b"%d-%d" % (k, i) for i in range(500)]


def test_flume_event_array_round_trips_with_the_reference_datum_reader():
    from rayflume import flume_avro
    batch = EventBatch.from_events([Event(b"one", {"a": "1", "b": "2"}), Event(b"", {}), Event(b"\xff\x00", {"c": ""})])
    data = flume_avro.encode_event_array(batch)
    schema = avro.schema.parse(json.dumps({"type": "array", "items": flume_avro.EVENT_SCHEMA}))
    decoded = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(data)))
    assert decoded == [{"headers": {"a": "1", "b": "2"}, "body": b"one"}, {"headers": {}, "body": b""},
                       {"headers": {"c": ""}, "body": b"\xff\x00"}]


def test_connections_share_one_memory_budget(pipelines):
    p = pipelines(max_request_bytes=64 << 10, memory_budget_bytes=256 << 10)
    partial = struct.pack(">II", 1, 1) + struct.pack(">I", 63 << 10) + b"\0" * (60 << 10)
    holders = []
    try:
        for _ in range(4):  # 4 x 60 KiB held: within the budget
            s = socket.create_connection(("127.0.0.1", p.port), timeout=WAIT_S)
            s.sendall(partial)
            holders.append(s)
        wait_until(lambda: p.source.memory.used >= 4 * (60 << 10), WAIT_S, what="four requests held")
        with socket.create_connection(("127.0.0.1", p.port), timeout=WAIT_S) as fifth:
            fifth.sendall(partial)
            assert fifth.recv(10) == b""  # over the budget: closed
        assert p.counters["ProtocolErrorCount"] == 1
        with AvroClient("127.0.0.1", p.port) as client:  # a small request still fits
            client.append_batch([b"small"])
        assert bodies(p.collect(1)) == [b"small"]
    finally:
        for s in holders:
            s.close()
    wait_until(lambda: p.source.memory.used == 0, WAIT_S, what="the budget given back")


def test_a_request_of_many_empty_events_is_refused_before_decoding(pipelines):
    # 500,000 empty events are 1 MB on the wire but would take ~50 MB to decode: the count is read
    # first and checked against the budget
    p = pipelines(max_request_bytes=1 << 20, memory_budget_bytes=8 << 20)
    with AvroClient("127.0.0.1", p.port) as client:
        with pytest.raises(DeliveryError):
            client.append_batch(EventBatch.from_bodies([b""] * 500_000))
        client.append_batch(EventBatch.from_bodies([b""] * 1000))  # a new connection; this one fits
    assert len(p.collect(1000)) == 1000
    assert p.counters["ProtocolErrorCount"] == 1
    wait_until(lambda: p.source.memory.used == 0, WAIT_S, what="the budget given back")


@pytest.mark.parametrize("kind", ["avro", "thrift"])
def test_rayflume_send_sends_a_files_lines_from_the_command_line(kind, tmp_path):
    import subprocess
    import sys

    config = lookup("source", kind).model_validate({"type": kind, "port": 0, "channels": ["mem"]})
    with closing_factory(lambda: CollectingPipeline(config.build("in")), quiet=False) as make:
        p = make()
        path = tmp_path / "app.log"
        path.write_bytes(b"".join(b"line %d\n" % i for i in range(250)))
        run = subprocess.run([sys.executable, "-m", "rayflume.cli", "send", f"--{kind}", f"127.0.0.1:{p.port}",
                              str(path), "--header", "host=web1", "--batch-size", "100"],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert f"sent 250 events to 127.0.0.1:{p.port}" in run.stderr
        got = p.collect(250)
        assert [e.body for e in got] == [b"line %d" % i for i in range(250)]
        assert {e.headers["host"] for e in got} == {"web1"}
        p.source.stop()
        refused = subprocess.run([sys.executable, "-m", "rayflume.cli", "send", f"--{kind}", f"127.0.0.1:{p.port}",
                                  str(path), "--connect-timeout-s", "2"], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and f"127.0.0.1:{p.port}" in refused.stderr, refused.stderr
