"""Flume's Thrift RPC: the ``thrift`` source, the ``thrift`` sink and :class:`rayflume.client.ThriftClient`,
over real sockets on loopback (sources run in this process, driven by the real SourceRunner).

Wire compatibility is checked against a client written the way the Thrift compiler generates
Python for flume.thrift (structs with ``thrift_spec``, a ``Client`` with ``send_``/``recv_``
methods), over the ``thrift`` package's own socket, framed transport and pure-Python protocols:
nothing of rayflume's codec.
"""
from __future__ import annotations

import socket
import struct

import pytest
from thrift.protocol import TBinaryProtocol, TCompactProtocol
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport import TSocket, TTransport

from rayflume.client import NotCommitted, ThriftClient
from rayflume.errors import DeliveryError
from rayflume.event import Event, EventBatch
from rayflume.registry import lookup
from rayflume.sinks.base import SinkContext
from tests.channel_contract import closing_factory, wait_until
from tests.net_helpers import CollectingPipeline, cert  # noqa: F401  (cert: the fixture)

WAIT_S = 10
PROTOCOLS = {"compact": TCompactProtocol.TCompactProtocol, "binary": TBinaryProtocol.TBinaryProtocol}


# -- a client as the Thrift compiler would generate it (pure-Python protocol) ---------------------------

class Generated:
    thrift_spec: tuple = ()

    def __init__(self, **kw):
        for spec in self.thrift_spec:
            if spec:
                setattr(self, spec[2], kw.get(spec[2]))

    def write(self, oprot):
        oprot.writeStructBegin(type(self).__name__)
        for spec in self.thrift_spec:
            if spec is None or getattr(self, spec[2]) is None:
                continue
            fid, ftype, name = spec[:3]
            oprot.writeFieldBegin(name, ftype, fid)
            write_value(oprot, ftype, spec[3], getattr(self, name))
            oprot.writeFieldEnd()
        oprot.writeFieldStop()
        oprot.writeStructEnd()

    def read(self, iprot):
        iprot.readStructBegin()
        by_id = {s[0]: s for s in self.thrift_spec if s}
        while True:
            _, ftype, fid = iprot.readFieldBegin()
            if ftype == TType.STOP:
                break
            spec = by_id.get(fid)
            if spec is None or spec[1] != ftype:
                iprot.skip(ftype)
            else:
                setattr(self, spec[2], read_value(iprot, ftype, spec[3]))
            iprot.readFieldEnd()
        iprot.readStructEnd()


def write_value(oprot, ftype, spec, value):
    if ftype == TType.STRING:
        oprot.writeBinary(value) if spec == "BINARY" else oprot.writeString(value)
    elif ftype == TType.I32:
        oprot.writeI32(value)
    elif ftype == TType.STRUCT:
        value.write(oprot)
    elif ftype == TType.MAP:
        oprot.writeMapBegin(TType.STRING, TType.STRING, len(value))
        for k, v in value.items():
            oprot.writeString(k)
            oprot.writeString(v)
        oprot.writeMapEnd()
    elif ftype == TType.LIST:
        oprot.writeListBegin(TType.STRUCT, len(value))
        for item in value:
            item.write(oprot)
        oprot.writeListEnd()


def read_value(iprot, ftype, spec):
    if ftype == TType.I32:
        return iprot.readI32()
    raise AssertionError(f"the test client reads only i32 results, got type {ftype}")


class ThriftFlumeEvent(Generated):
    thrift_spec = (None, (1, TType.MAP, "headers", None, None), (2, TType.STRING, "body", "BINARY", None))


class AppendArgs(Generated):
    thrift_spec = (None, (1, TType.STRUCT, "event", None, None))


class AppendBatchArgs(Generated):
    thrift_spec = (None, (1, TType.LIST, "events", None, None))


class StatusResult(Generated):
    thrift_spec = ((0, TType.I32, "success", None, None),)


STATUS = {0: "OK", 1: "FAILED", 2: "ERROR", 3: "UNKNOWN"}


class ReferenceClient:
    """ThriftSourceProtocol.Client as generated: send_<method> then recv_<method>."""

    def __init__(self, port: int, protocol: str = "compact"):
        self.transport = TTransport.TFramedTransport(TSocket.TSocket("127.0.0.1", port))
        self.transport.open()
        self.prot = PROTOCOLS[protocol](self.transport)
        self.seqid = 0

    def call(self, name: str, args: Generated) -> str:
        self.seqid += 1
        self.prot.writeMessageBegin(name, TMessageType.CALL, self.seqid)
        args.write(self.prot)
        self.prot.writeMessageEnd()
        self.prot.trans.flush()
        _, kind, seqid = self.prot.readMessageBegin()
        if kind == TMessageType.EXCEPTION:
            error = TApplicationException()
            error.read(self.prot)
            self.prot.readMessageEnd()
            raise error
        assert seqid == self.seqid
        result = StatusResult()
        result.read(self.prot)
        self.prot.readMessageEnd()
        return STATUS[result.success]

    def append(self, body: bytes, headers: dict) -> str:
        return self.call("append", AppendArgs(event=ThriftFlumeEvent(headers=headers, body=body)))

    def append_batch(self, events: list[tuple[bytes, dict]]) -> str:
        return self.call("appendBatch", AppendBatchArgs(events=[ThriftFlumeEvent(headers=h, body=b)
                                                                for b, h in events]))

    def close(self):
        self.transport.close()


@pytest.fixture
def pipelines():
    def make(put_capacity: int = 1_000_000, **cfg):
        config = lookup("source", "thrift").model_validate({"type": "thrift", "port": 0, "channels": ["mem"], **cfg})
        return CollectingPipeline(config.build("thrift-in"), capacity=put_capacity)

    with closing_factory(make, quiet=False) as factory:
        yield factory


@pytest.mark.parametrize("protocol", ["compact", "binary"])
def test_generated_style_client_appends(pipelines, protocol):
    p = pipelines(protocol=protocol)
    client = ReferenceClient(p.port, protocol)
    try:
        assert client.append(b"first", {"host": "web1"}) == "OK"
        assert client.append_batch([(b"b%d" % i, {"n": str(i)}) for i in range(100)]) == "OK"
        with pytest.raises(TApplicationException, match="unknown method 'ping'"):
            client.call("ping", Generated())
        assert client.append_batch([(b"after", {})]) == "OK"  # the connection stays usable
    finally:
        client.close()
    got = p.collect(102)
    assert got[0] == Event(b"first", {"host": "web1"})
    assert [(e.body, e.headers) for e in got[1:101]] == [(b"b%d" % i, {"n": str(i)}) for i in range(100)]
    assert got[101].body == b"after"
    assert p.counters["AppendReceivedCount"] == 1 and p.counters["AppendAcceptedCount"] == 1


def test_a_client_with_the_other_protocol_is_refused_and_counted(pipelines):
    p = pipelines(protocol="compact")
    client = ReferenceClient(p.port, "binary")
    try:
        with pytest.raises((TTransport.TTransportException, EOFError, OSError)):
            client.append(b"x", {})
    finally:
        client.close()
    wait_until(lambda: p.counters["ProtocolErrorCount"] == 1, WAIT_S, what="the protocol error")
    assert p.take_committed() == []


def test_full_channel_answers_failed_and_the_retry_succeeds(pipelines):
    p = pipelines(put_capacity=50, commit_timeout_s=1.0)
    with ThriftClient("127.0.0.1", p.port) as client:
        client.append_batch([b"fill %d" % i for i in range(50)])
        with pytest.raises(NotCommitted, match="answered FAILED"):
            client.append_batch([b"over"])
        p.collect(50)
        client.append_batch([b"over"])
        assert client.connections_opened == 1
    assert p.collect(51)[-1].body == b"over"
    assert p.counters["RequestFailedCount"] == 1


def test_oversized_frame_closes_only_its_connection(pipelines):
    p = pipelines(max_request_bytes=1 << 16, memory_budget_bytes=1 << 20)
    with socket.create_connection(("127.0.0.1", p.port), timeout=WAIT_S) as s:
        s.sendall(struct.pack(">i", 1 << 20))
        assert s.recv(10) == b""
    with ThriftClient("127.0.0.1", p.port) as client:
        client.append_batch([b"good"])
    assert [e.body for e in p.collect(1)] == [b"good"]
    assert p.counters["ProtocolErrorCount"] == 1


@pytest.mark.parametrize("protocol", ["compact", "binary"])
def test_sink_to_source_with_tls(pipelines, cert, protocol):
    certfile, keyfile = cert
    p = pipelines(protocol=protocol, ssl=True, ssl_certfile=certfile, ssl_keyfile=keyfile)
    config = lookup("sink", "thrift").model_validate({
        "type": "thrift", "channel": "c", "hostname": "127.0.0.1", "port": p.port, "protocol": protocol,
        "ssl": True, "ssl_ca_file": certfile})
    sink = config.build("out")
    sink.start(SinkContext("out"))
    try:
        sink.write(EventBatch.from_events([Event(b"e%d" % i, {"i": str(i)}) for i in range(500)]))
        sink.write(EventBatch.from_bodies([b"last"]))
    finally:
        sink.stop()
    got = p.collect(501)
    assert [(e.body, e.headers) for e in got[:500]] == [(b"e%d" % i, {"i": str(i)}) for i in range(500)]
    assert sink.context.counters["ConnectionCreatedCount"] == 1


def test_sink_rolls_back_when_the_source_is_gone(pipelines):
    p = pipelines()
    sink = lookup("sink", "thrift").model_validate({"type": "thrift", "channel": "c", "hostname": "127.0.0.1",
                                                    "port": p.port, "connect_timeout_s": 2}).build("out")
    sink.start(SinkContext("out"))
    try:
        sink.write(EventBatch.from_bodies([b"before"]))
        p.collect(1)
        p.source.stop()
        with pytest.raises(DeliveryError, match="rolled back"):
            sink.write(EventBatch.from_bodies([b"again"]))
    finally:
        sink.stop()
    assert sink.context.counters["ConnectionFailedCount"] == 1


def test_a_batch_of_many_empty_events_is_refused_before_decoding(pipelines):
    p = pipelines(max_request_bytes=4 << 20, memory_budget_bytes=16 << 20)
    with ThriftClient("127.0.0.1", p.port) as client:
        with pytest.raises(DeliveryError):
            client.append_batch(EventBatch.from_bodies([b""] * 500_000))  # ~2.5 MB framed, ~90 MB decoded
        client.append_batch(EventBatch.from_bodies([b""] * 1000))
    assert len(p.collect(1000)) == 1000
    assert p.counters["ProtocolErrorCount"] == 1
    wait_until(lambda: p.source.memory.used == 0, WAIT_S, what="the budget given back")
