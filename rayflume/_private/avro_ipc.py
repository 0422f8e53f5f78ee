"""Flume's Avro RPC on the wire: Netty framing, the Avro IPC handshake and call format for
``AvroSourceProtocol``, and the optional zlib stream (``compression_type: deflate``).

Used by the ``avro`` source (:class:`ServerConnection`), and by the ``avro`` sink and
:mod:`rayflume.client` (:class:`ClientConnection`). Plain classes over bytes: no sockets here.

Framing (Avro's Netty transport): a *pack* is a 4-byte big-endian serial, a 4-byte count of
buffers, then each buffer as a 4-byte length and its bytes; the buffers of one pack together are
one IPC request or response, and a response carries its request's serial. :class:`PackReader`
bounds a pack's size and buffer count before buffering anything.

Handshake (the Avro specification's protocol wire format, on a stateful connection as Java's
``NettyServer`` does it): the first request of a connection starts with a handshake request; once
a handshake succeeded (``BOTH`` or ``CLIENT``) later requests carry none. Clients built on the
Python ``avro`` package's ``Requestor`` send a handshake with every request; a connected
:class:`ServerConnection` recognises one by its leading client hash and answers it. The
handshake records are read and written with the ``avro`` package's own handshake schemas.

Thread-safety: none; one connection is used by one thread at a time.
"""
from __future__ import annotations

import hashlib
import io
import struct
import zlib
from dataclasses import dataclass

import avro.io
import avro.ipc
import avro.protocol
import fastavro

from rayflume import flume_avro
from rayflume.errors import RayflumeError
from rayflume.event import EventBatch

HEADER = struct.Struct(">II")
LENGTH = struct.Struct(">I")
MAX_BUFFERS = 1 << 20  # Java's encoder writes buffers of 8 KiB at most: 8 GiB of them is plenty
OK, FAILED = "OK", "FAILED"

_META = fastavro.parse_schema({"type": "map", "values": "bytes"})
_EMPTY_META = b"\x00"
_NO_ERROR, _ERROR = b"\x00", b"\x01"


class AvroRpcError(RayflumeError):
    """A peer broke the protocol (a pack too large, bytes that do not decode, an unknown message),
    or (client side) the server answered with an error."""


def protocol_hash(text: str) -> bytes:
    return hashlib.md5(text.encode("utf-8")).digest()


LOCAL_HASH = protocol_hash(flume_avro.PROTOCOL_JSON)


# -- framing -----------------------------------------------------------------------------------------

def pack(serial: int, payload: bytes) -> bytes:
    """One pack holding ``payload`` in a single buffer."""
    return HEADER.pack(serial, 1) + LENGTH.pack(len(payload)) + payload


class PackReader:
    """Reassembles packs from a byte stream. ``feed(data)`` returns the complete ``(serial,
    payload)`` pairs; raises :class:`AvroRpcError` as soon as a pack would exceed ``max_bytes`` or
    ``MAX_BUFFERS`` buffers, before buffering it."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._data = bytearray()
        self._pos = 0
        # the pack being read: serial, buffers left, bytes so far, its buffers
        self._serial: int | None = None
        self._left = 0
        self._size = 0
        self._parts: list[bytes] = []

    @property
    def mid_pack(self) -> bool:
        """Whether a pack has started and is not complete."""
        return self._serial is not None or self._pos < len(self._data)

    @property
    def buffered(self) -> int:
        return len(self._data) - self._pos + self._size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._data += data
        out = []
        while True:
            got = self._step()
            if got is None:
                break
            out.append(got)
        if self._pos:
            del self._data[:self._pos]
            self._pos = 0
        return out

    def _available(self) -> int:
        return len(self._data) - self._pos

    def _step(self) -> tuple[int, bytes] | None:
        if self._serial is None:
            if self._available() < HEADER.size:
                return None
            serial, count = HEADER.unpack_from(self._data, self._pos)
            if count > MAX_BUFFERS:
                raise AvroRpcError(f"a pack of {count} buffers, more than {MAX_BUFFERS}")
            self._pos += HEADER.size
            self._serial, self._left, self._size, self._parts = serial, count, 0, []
        while self._left:
            if self._available() < LENGTH.size:
                return None
            (length,) = LENGTH.unpack_from(self._data, self._pos)
            if self._size + length > self.max_bytes:
                raise AvroRpcError(f"a request of more than {self.max_bytes} bytes (max_request_bytes)")
            if self._available() < LENGTH.size + length:
                return None
            start = self._pos + LENGTH.size
            with memoryview(self._data) as view:  # released before the buffer is trimmed
                self._parts.append(bytes(view[start:start + length]))
            self._pos = start + length
            self._size += length
            self._left -= 1
        serial, parts = self._serial, self._parts
        self._serial, self._parts, self._size = None, [], 0
        return serial, parts[0] if len(parts) == 1 else b"".join(parts)


# -- compression ---------------------------------------------------------------------------------------

class Deflater:
    """The sending half of a ``deflate`` connection: one zlib stream, flushed after every pack
    (as Netty's ZlibEncoder does), so each pack can be decoded as soon as it arrives."""

    def __init__(self, level: int):
        self._z = zlib.compressobj(level)

    def __call__(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)


class Inflater:
    """The receiving half: inflates the stream, at most ``max_bytes`` at a time held, so a small
    compressed pack cannot expand into unbounded memory (it exceeds ``max_bytes`` and the framing
    refuses it)."""

    def __init__(self, max_bytes: int):
        self._z = zlib.decompressobj()
        self.max_bytes = max_bytes

    def __call__(self, data: bytes) -> list[bytes]:
        out = []
        try:
            chunk = self._z.decompress(data, self.max_bytes)
            out.append(chunk)
            while self._z.unconsumed_tail:
                out.append(self._z.decompress(self._z.unconsumed_tail, self.max_bytes))
        except zlib.error as exc:
            raise AvroRpcError(f"the compressed stream is corrupt ({exc}); do both ends use compression_type "
                               f"deflate?") from None
        return out


# -- server side -----------------------------------------------------------------------------------------

@dataclass
class Call:
    """One decoded request: ``message`` is ``append``, ``appendBatch``, or ``""`` (a handshake
    only, or a handshake the client must repeat with its protocol); ``events`` for the appends."""

    serial: int
    handshake: bytes  # the encoded handshake response to send first ("" when none)
    message: str
    events: EventBatch | None = None
    error: str = ""   # a protocol error to answer (the connection stays usable)


class ServerConnection:
    """The server half of one connection: :meth:`read_call` decodes a request pack,
    :meth:`reply` encodes the answer to it."""

    # Client protocols seen, by hash, shared by every connection of a process: a client that
    # connects again need not send its protocol text. Bounded: clients could send endless variants.
    known_clients: dict[bytes, str] = {}
    MAX_KNOWN_CLIENTS = 1024

    def __init__(self):
        self.connected = False
        self._client_hash: bytes | None = None

    def read_call(self, serial: int, payload: bytes, reserve=None) -> Call:
        """Decode one request; ``reserve`` as for :func:`rayflume.flume_avro.read_event_array`."""
        stream = io.BytesIO(payload)
        handshake = b""
        if not self.connected or (self._client_hash is not None and payload.startswith(self._client_hash)):
            handshake, accepted = self._handshake(stream)
            if not accepted:
                return Call(serial, handshake, "")
        try:
            fastavro.schemaless_reader(stream, _META)
            message = avro.io.BinaryDecoder(stream).read_utf8()
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the peer's protocol error
            raise AvroRpcError(f"a request that is not Avro IPC ({type(exc).__name__}: {exc})") from None
        if message == "":
            return Call(serial, handshake, "")
        try:
            if message == "appendBatch":
                events = flume_avro.read_event_array(stream, reserve)
            elif message == "append":
                events = flume_avro.read_event(stream)
            else:
                return Call(serial, handshake, message, error=f"unknown message {message!r}: AvroSourceProtocol "
                                                              f"has append and appendBatch")
        except flume_avro.FlumeEventError as exc:
            raise AvroRpcError(f"{message}: {exc}") from None
        return Call(serial, handshake, message, events)

    def _handshake(self, stream: io.BytesIO) -> tuple[bytes, bool]:
        try:
            request = avro.ipc.HANDSHAKE_RESPONDER_READER.read(avro.io.BinaryDecoder(stream))
        except Exception as exc:  # noqa: BLE001
            raise AvroRpcError(f"the connection's first request has no valid Avro handshake "
                               f"({type(exc).__name__}: {exc}); is the client speaking Avro RPC?") from None
        client_hash = request["clientHash"]
        protocol_text = request.get("clientProtocol")
        if protocol_text is not None:
            try:
                avro.protocol.parse(protocol_text)
            except Exception as exc:  # noqa: BLE001
                raise AvroRpcError(f"the client's protocol does not parse: {exc}") from None
            if len(self.known_clients) >= self.MAX_KNOWN_CLIENTS:
                self.known_clients.clear()
            self.known_clients[client_hash] = protocol_text
        known = client_hash in self.known_clients
        if not known:
            match = "NONE"
        elif request["serverHash"] == LOCAL_HASH:
            match = "BOTH"
        else:
            match = "CLIENT"
        response = {"match": match, "serverProtocol": None, "serverHash": None, "meta": None}
        if match != "BOTH":
            response["serverProtocol"] = flume_avro.PROTOCOL_JSON
            response["serverHash"] = LOCAL_HASH
        out = io.BytesIO()
        avro.ipc.HANDSHAKE_RESPONDER_WRITER.write(response, avro.io.BinaryEncoder(out))
        if known:
            self.connected = True
            self._client_hash = client_hash
        return out.getvalue(), known

    @staticmethod
    def reply(call: Call, status: str | None) -> bytes:
        """The response pack to ``call``: the handshake answer alone for a handshake-only call,
        else the status (``OK``/``FAILED``), or the call's protocol error."""
        if call.message == "":
            return pack(call.serial, call.handshake)
        out = io.BytesIO()
        out.write(call.handshake)
        out.write(_EMPTY_META)
        if call.error:
            out.write(_ERROR)
            out.write(b"\x00")  # union index of the system error's ["string"]
            avro.io.BinaryEncoder(out).write_utf8(call.error)
        else:
            out.write(_NO_ERROR)
            flume_avro.write_status(out, status)
        return pack(call.serial, out.getvalue())


# -- client side ---------------------------------------------------------------------------------------------

class ClientConnection:
    """The client half of one connection: :meth:`request` encodes a call (with the handshake on
    the first one), :meth:`read_reply` decodes the server's answer into a status."""

    def __init__(self):
        self.connected = False
        self._serial = 0
        self._sent_handshake = False

    def request(self, events: EventBatch) -> tuple[int, list[bytes]]:
        """``(serial, pack)`` of an ``appendBatch`` of ``events``; the pack is a list of pieces to
        send in order (the events' bytes are not copied into one buffer)."""
        self._serial = (self._serial + 1) & 0x7FFFFFFF
        out = io.BytesIO()
        self._sent_handshake = not self.connected
        if self._sent_handshake:
            # The protocol text is sent at once (a few hundred bytes, once per connection), so a
            # server that does not know this client answers CLIENT rather than NONE.
            request = {"clientHash": LOCAL_HASH, "clientProtocol": flume_avro.PROTOCOL_JSON,
                       "serverHash": LOCAL_HASH, "meta": None}
            avro.ipc.HANDSHAKE_REQUESTOR_WRITER.write(request, avro.io.BinaryEncoder(out))
        out.write(_EMPTY_META)
        avro.io.BinaryEncoder(out).write_utf8("appendBatch")
        head = out.getvalue()
        pieces = flume_avro.event_array_pieces(events)
        size = len(head) + sum(len(p) for p in pieces)
        return self._serial, [HEADER.pack(self._serial, 1) + LENGTH.pack(size) + head, *pieces]

    def read_reply(self, serial: int, expected: int, payload: bytes) -> str:
        """The status of the reply ``payload`` to request ``expected``. Raises
        :class:`AvroRpcError` for an error reply or a broken one."""
        if serial != expected:
            raise AvroRpcError(f"a reply to request {serial} while waiting for {expected}")
        stream = io.BytesIO(payload)
        try:
            if self._sent_handshake:
                response = avro.ipc.HANDSHAKE_REQUESTOR_READER.read(avro.io.BinaryDecoder(stream))
                if response["match"] == "NONE":
                    raise AvroRpcError("the server did not accept the client's protocol (handshake NONE)")
                self.connected = True
            fastavro.schemaless_reader(stream, _META)
            failed = avro.io.BinaryDecoder(stream).read_boolean()
            if failed:
                index = avro.io.BinaryDecoder(stream).read_long()
                message = avro.io.BinaryDecoder(stream).read_utf8() if index == 0 else "a declared error"
                raise AvroRpcError(f"the server answered an error: {message}")
            return flume_avro.read_status(stream)
        except AvroRpcError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the peer's protocol error
            raise AvroRpcError(f"a reply that is not Avro IPC ({type(exc).__name__}: {exc})") from None
