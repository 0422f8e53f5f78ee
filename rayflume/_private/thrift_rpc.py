"""Flume's Thrift RPC on the wire: ``ThriftSourceProtocol`` (``append``, ``appendBatch``) over the
framed transport, in the compact protocol (Flume's default) or the binary one.

The structs below are written the way the Thrift compiler generates Python (a ``thrift_spec``
per struct), so the ``thrift`` package's C codec (``fastbinary``) encodes and decodes them; this
module adds only the framing and the message envelope. Used by the ``thrift`` source
(:class:`ServerCodec`) and by the ``thrift`` sink and :class:`rayflume.client.ThriftClient`
(:class:`ClientCodec`). Plain classes over bytes: no sockets here; not thread-safe.

The IDL (flume-ng-sdk's thrift/flume.thrift), for reference::

    struct ThriftFlumeEvent { 1: required map <string, string> headers, 2: required binary body }
    enum Status { OK, FAILED, ERROR, UNKNOWN }
    service ThriftSourceProtocol {
      Status append(1: ThriftFlumeEvent event),
      Status appendBatch(1: list<ThriftFlumeEvent> events),
    }
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import pyarrow as pa
from thrift.protocol import TBinaryProtocol, TCompactProtocol
from thrift.protocol.TProtocol import TProtocolException
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport import TTransport
from thrift.TRecursive import fix_spec

from rayflume.errors import RayflumeError
from rayflume.event import HEADERS_TYPE, EventBatch

FRAME = struct.Struct(">i")
STATUS = {0: "OK", 1: "FAILED", 2: "ERROR", 3: "UNKNOWN"}
STATUS_CODE = {name: code for code, name in STATUS.items()}
PROTOCOLS = {"compact": TCompactProtocol.TCompactProtocolAcceleratedFactory(),
             "binary": TBinaryProtocol.TBinaryProtocolAcceleratedFactory()}
PURE_PROTOCOLS = {"compact": TCompactProtocol.TCompactProtocol, "binary": TBinaryProtocol.TBinaryProtocol}


class ThriftRpcError(RayflumeError):
    """A peer broke the protocol (a frame too large, bytes that do not decode), or (client side)
    the server answered with an exception."""


# -- generated-style structs ------------------------------------------------------------------------

class _Struct:
    """What the Thrift compiler's Python structs have: ``read``/``write`` through the accelerated
    codec when the protocol has one (always here), slots named after the spec's fields."""

    thrift_spec: tuple = ()

    def __init__(self, **fields):
        for spec in self.thrift_spec:
            if spec is not None:
                setattr(self, spec[2], fields.get(spec[2]))

    def read(self, iprot) -> None:
        iprot._fast_decode(self, iprot, [self.__class__, self.thrift_spec])

    def write(self, oprot) -> None:
        oprot.trans.write(oprot._fast_encode(self, [self.__class__, self.thrift_spec]))

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__dict__})"


class ThriftFlumeEvent(_Struct):
    thrift_spec = (None,
                   (1, TType.MAP, "headers", (TType.STRING, "UTF8", TType.STRING, "UTF8", False), None),
                   (2, TType.STRING, "body", "BINARY", None))


class append_args(_Struct):  # noqa: N801 - the compiler's names
    thrift_spec = (None, (1, TType.STRUCT, "event", [ThriftFlumeEvent, None], None))


class appendBatch_args(_Struct):  # noqa: N801
    thrift_spec = (None, (1, TType.LIST, "events", (TType.STRUCT, [ThriftFlumeEvent, None], False), None))


class Status_result(_Struct):  # noqa: N801 - append_result and appendBatch_result are the same
    thrift_spec = ((0, TType.I32, "success", None, None),)


fix_spec([ThriftFlumeEvent, append_args, appendBatch_args, Status_result])  # nested specs, as generated code does
ARGS = {"append": append_args, "appendBatch": appendBatch_args}


def events_of(structs: list) -> EventBatch:
    bodies = pa.array([e.body or b"" for e in structs], pa.binary())
    if any(e.headers for e in structs):
        headers = pa.array([list((e.headers or {}).items()) for e in structs], HEADERS_TYPE)
        return EventBatch.from_bodies(bodies, headers)
    return EventBatch.from_bodies(bodies)


def structs_of(batch: EventBatch) -> list[ThriftFlumeEvent]:
    bodies = batch.body.to_pylist()
    headers = batch.headers.to_pylist()
    return [ThriftFlumeEvent(headers=dict(h) if h else {}, body=b) for h, b in zip(headers, bodies)]


# -- framing ------------------------------------------------------------------------------------------

class FrameReader:
    """Reassembles framed-transport messages (a 4-byte big-endian size, then the message);
    raises :class:`ThriftRpcError` as soon as a frame announces more than ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._data = bytearray()

    @property
    def mid_pack(self) -> bool:
        return bool(self._data)

    @property
    def buffered(self) -> int:
        return len(self._data)

    def feed(self, data: bytes) -> list[bytes]:
        self._data += data
        out, pos = [], 0
        while len(self._data) - pos >= FRAME.size:
            (size,) = FRAME.unpack_from(self._data, pos)
            if size < 0 or size > self.max_bytes:
                raise ThriftRpcError(f"a frame of {size} bytes (max_request_bytes is {self.max_bytes}); is the "
                                     f"client using the framed transport?")
            if len(self._data) - pos - FRAME.size < size:
                break
            with memoryview(self._data) as view:
                out.append(bytes(view[pos + FRAME.size:pos + FRAME.size + size]))
            pos += FRAME.size + size
        if pos:
            del self._data[:pos]
        return out


def framed(message: bytes) -> bytes:
    return FRAME.pack(len(message)) + message


# -- server and client ----------------------------------------------------------------------------------

@dataclass
class Call:
    name: str
    seqid: int
    events: EventBatch | None  # None: a method this service does not have
    singular: bool = False


class ServerCodec:
    def __init__(self, protocol: str):
        self.factory = PROTOCOLS[protocol]
        self.pure = PURE_PROTOCOLS[protocol]

    def read_call(self, frame: bytes, reserve=None) -> Call:
        """Decode one call. ``reserve(n)`` is asked before a batch of ``n`` events is decoded
        (the C codec makes Python objects of about 170 bytes per event, however small); False
        refuses the call."""
        iprot = self.factory.getProtocol(TTransport.TMemoryBuffer(frame))
        try:
            name, kind, seqid = iprot.readMessageBegin()
            if kind not in (TMessageType.CALL, TMessageType.ONEWAY):
                raise ThriftRpcError(f"a message of type {kind} where a call was expected")
            args_type = ARGS.get(name)
            if args_type is None:
                return Call(name, seqid, None)
            if name == "appendBatch" and reserve is not None:
                count = self._batch_size(frame)
                if not reserve(count):
                    raise ThriftRpcError(f"a batch of {count} events, more than the memory set aside for "
                                         f"decoding allows")
            args = args_type()
            args.read(iprot)
            iprot.readMessageEnd()
        except (TProtocolException, EOFError, TTransport.TTransportException, ValueError, TypeError,
                UnicodeDecodeError, MemoryError, OverflowError) as exc:
            raise ThriftRpcError(f"a request that is not ThriftSourceProtocol ({type(exc).__name__}: {exc}); does "
                                 f"the client use the same protocol (compact or binary)?") from None
        if name == "append":
            if args.event is None:
                raise ThriftRpcError("append without its event")
            return Call(name, seqid, events_of([args.event]), singular=True)
        return Call(name, seqid, events_of(args.events or []))

    def _batch_size(self, frame: bytes) -> int:
        """The event count an appendBatch call announces, read with the pure-Python protocol
        (the message head, then the list head of field 1), before anything is decoded."""
        iprot = self.pure(TTransport.TMemoryBuffer(frame))
        iprot.readMessageBegin()
        iprot.readStructBegin()
        _, ftype, fid = iprot.readFieldBegin()
        if fid != 1 or ftype != TType.LIST:
            return 0  # no events field: the codec decodes an empty call
        _, count = iprot.readListBegin()
        return count

    def reply(self, call: Call, status: str) -> bytes:
        buffer = TTransport.TMemoryBuffer()
        oprot = self.factory.getProtocol(buffer)
        if call.events is None:
            oprot.writeMessageBegin(call.name, TMessageType.EXCEPTION, call.seqid)
            TApplicationException(TApplicationException.UNKNOWN_METHOD,
                                  f"unknown method {call.name!r}: ThriftSourceProtocol has append and "
                                  f"appendBatch").write(oprot)
        else:
            oprot.writeMessageBegin(call.name, TMessageType.REPLY, call.seqid)
            Status_result(success=STATUS_CODE[status]).write(oprot)
        oprot.writeMessageEnd()
        return framed(buffer.getvalue())


class ClientCodec:
    def __init__(self, protocol: str):
        self.factory = PROTOCOLS[protocol]
        self._seqid = 0

    def request(self, batch: EventBatch) -> tuple[int, bytes]:
        self._seqid = (self._seqid + 1) & 0x7FFFFFFF
        buffer = TTransport.TMemoryBuffer()
        oprot = self.factory.getProtocol(buffer)
        oprot.writeMessageBegin("appendBatch", TMessageType.CALL, self._seqid)
        appendBatch_args(events=structs_of(batch)).write(oprot)
        oprot.writeMessageEnd()
        return self._seqid, framed(buffer.getvalue())

    def read_reply(self, seqid: int, frame: bytes) -> str:
        iprot = self.factory.getProtocol(TTransport.TMemoryBuffer(frame))
        try:
            _, kind, got = iprot.readMessageBegin()
            if kind == TMessageType.EXCEPTION:
                error = TApplicationException()
                error.read(iprot)
                raise ThriftRpcError(f"the server answered an exception: {error.message}")
            if got != seqid:
                raise ThriftRpcError(f"a reply to call {got} while waiting for {seqid}")
            result = Status_result()
            result.read(iprot)
        except ThriftRpcError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the peer's protocol error
            raise ThriftRpcError(f"a reply that is not ThriftSourceProtocol ({type(exc).__name__}: {exc})") from None
        if result.success is None:
            raise ThriftRpcError("a reply without a status")
        return STATUS.get(result.success, "UNKNOWN")
