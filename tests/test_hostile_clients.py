"""Hostile and careless clients against the TCP sources, over real sockets on loopback.

Hostile clients connect from 127.0.0.2 (Linux routes all of 127.0.0.0/8 to loopback), the good
client from 127.0.0.1, so per-client limits and the allow-list can tell them apart. Each source
runs in this process, driven by the real SourceRunner into a memory channel (no Ray).
"""
from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import psutil
import pytest

from rayflume.client import AvroClient, ThriftClient
from rayflume.registry import lookup
from rayflume.sources._limits import ConnectionLimits, ConnectionTracker, parse_networks
from tests.channel_contract import closing_factory, wait_until
from tests.net_helpers import SourcePipeline, cert  # noqa: F401  (cert: the fixture)

HOSTILE = "127.0.0.2"
GOOD_EVENTS = 10_000


class Pipeline(SourcePipeline):
    def committed(self) -> int:
        self.events.extend(self.take_committed())
        return len(self.events)


@pytest.fixture
def pipelines():
    def make(kind: str, **cfg):
        source = lookup("source", kind).model_validate({"type": kind, "port": 0, "channels": ["mem"], **cfg})
        return Pipeline(source.build(kind))

    with closing_factory(make, quiet=False) as factory:
        yield factory


def connect(port: int, source_ip: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source_ip, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_server(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the server closes ``sock`` within ``timeout_s`` (EOF or reset)."""
    sock.settimeout(timeout_s)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


# -- what the good client sends, per source ---------------------------------------------------------

def good_lines(n: int) -> bytes:
    return b"".join(b"good %d\n" % i for i in range(n))


def send_good_stream(port: int, n: int) -> None:
    """syslog_tcp / netcat: ``n`` newline-terminated events on one connection."""
    with connect(port) as sock:
        sock.sendall(good_lines(n))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(30)
        while sock.recv(65536):  # netcat's OKs; syslog sends nothing and closes at EOF
            pass


def send_good_http(port: int, n: int, per_request: int = 1000) -> None:
    with connect(port) as sock:
        for start in range(0, n, per_request):
            body = json.dumps([{"body": f"good {i}"} for i in range(start, min(n, start + per_request))]).encode()
            status, _ = http_request(sock, body)
            assert status == 200


def http_request(sock: socket.socket, body: bytes) -> tuple[int, bytes]:
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                 % len(body) + body)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk, "the http source closed the connection"
        head += chunk
    head, rest = head.split(b"\r\n\r\n", 1)
    length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")][0].split(b":")[1])
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), rest


def send_good_rpc(client_type):
    def send(port: int, n: int, per_call: int = 1000) -> None:
        with client_type("127.0.0.1", port) as client:
            for start in range(0, n, per_call):
                client.append_batch([b"good %d" % i for i in range(start, min(n, start + per_call))])
    return send


SOURCES = {
    # kind: (config keys for the request/frame deadline, the good client, a partial request)
    "syslog_tcp": ({"frame_timeout_s": 1.0}, send_good_stream, b"<13>partial"),
    "netcat": ({"line_timeout_s": 1.0}, send_good_stream, b"partial"),
    "http": ({"request_timeout_s": 1.0}, send_good_http, b"POST / HTTP/1.1\r\nHost: x\r\n"),
    # a pack (avro) or frame (thrift) announcing 4 KiB that never arrive
    "avro": ({"request_timeout_s": 1.0}, send_good_rpc(AvroClient), b"\0\0\0\1\0\0\0\1\0\0\x10\0partial"),
    "thrift": ({"request_timeout_s": 1.0}, send_good_rpc(ThriftClient), b"\0\0\x10\0partial"),
}


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_idle_and_slow_clients_do_not_lock_out_a_good_client(pipelines, kind):
    deadline_cfg, send_good, partial = SOURCES[kind]
    p = pipelines(kind, max_connections=8, max_connections_per_client=4, idle_timeout_s=1.5, **deadline_cfg)
    port = p.source.bound_port
    rss_before = psutil.Process().memory_info().rss
    idle = [connect(port, HOSTILE) for _ in range(2)]
    slow = [connect(port, HOSTILE) for _ in range(2)]
    wait_until(lambda: p.counters["OpenConnectionCount"] == 4, 5, what="four hostile connections open")
    # over the per-client limit: refused at once, while the good client's address still has room
    extra = [connect(port, HOSTILE) for _ in range(2)]
    wait_until(lambda: p.counters["ClientLimitRejectedCount"] == 2, 5, what="two refusals for the client limit")
    assert all(closed_by_server(s, 5) for s in extra)

    stop_dripping = threading.Event()

    def drip():  # slowloris: a byte every 0.2 s, never finishing the request or line
        i = 0
        while not stop_dripping.is_set():
            for s in slow:
                try:
                    s.sendall(partial[i % len(partial):i % len(partial) + 1])
                except OSError:
                    pass  # the source closed it for its deadline: what the test waits for
            i += 1
            stop_dripping.wait(0.2)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    t0 = time.monotonic()
    try:
        good = threading.Thread(target=send_good, args=(port, GOOD_EVENTS), daemon=True)
        good.start()
        # the slow clients are closed for their deadline, the idle ones for idleness
        assert all(closed_by_server(s, 5) for s in slow)
        slow_closed_s = time.monotonic() - t0
        assert all(closed_by_server(s, 5) for s in idle)
        good.join(60)
        assert not good.is_alive()
    finally:
        stop_dripping.set()
        for s in idle + slow + extra:
            s.close()
    wait_until(lambda: p.committed() >= GOOD_EVENTS, 30, what="the good client's events")
    bodies = sorted(e.body for e in p.events)
    assert bodies == sorted(b"good %d" % i for i in range(GOOD_EVENTS)), "only the good client's events, all of them"
    assert p.counters["RequestTimeoutCount"] == 2
    assert p.counters["IdleTimeoutCount"] == 2
    assert slow_closed_s < 1.0 + 1.5 + 1.0  # the deadline, one reaper pass and slack for a loaded machine
    rss_growth_mb = (psutil.Process().memory_info().rss - rss_before) / 1e6
    print(f"{kind}: slow clients closed after {slow_closed_s:.1f}s; RSS +{rss_growth_mb:.0f} MB")
    assert rss_growth_mb < 200


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_allow_list_refuses_other_addresses_and_counts(pipelines, kind):
    _, send_good, _ = SOURCES[kind]
    p = pipelines(kind, allowed_clients=["127.0.0.1/32", "10.0.0.0/8"])
    outsider = connect(p.source.bound_port, HOSTILE)
    try:
        assert closed_by_server(outsider, 5)
    finally:
        outsider.close()
    wait_until(lambda: p.counters["ClientNotAllowedCount"] == 1, 5, what="the refusal counted")
    send_good(p.source.bound_port, 100)
    wait_until(lambda: p.committed() == 100, 10, what="the allowed client's events")
    assert p.counters["ConnectionAcceptedCount"] == 1


def test_allow_list_entries_are_checked_with_a_clear_error():
    with pytest.raises(Exception, match=r"allowed_clients.*'10\.0\.0\.0/33'.*CIDR"):
        lookup("source", "netcat").model_validate({"type": "netcat", "port": 0, "channels": ["m"],
                                                  "allowed_clients": ["10.0.0.0/33"]})
    limits = ConnectionLimits(allowed=parse_networks(["10.0.0.0/8", "::1"]))
    assert limits.refusal("10.1.2.3") is None and limits.refusal("::1") is None
    assert limits.refusal("::ffff:10.0.0.7") is None  # an IPv4 client on a dual-stack socket
    assert "not in allowed_clients" in limits.refusal("192.168.0.1")


def test_the_reaper_closes_only_what_is_over_its_limit():
    tracker = ConnectionTracker(ConnectionLimits(max_connections=3, idle_timeout_s=10, request_timeout_s=5))
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        busy, idle, slow = (tracker.opened(a, "127.0.0.1") for a, _ in pairs)
        now = time.monotonic()
        slow.pending(True)
        assert tracker.reap(now + 4) == 0
        assert tracker.reap(now + 6) == 1 and slow.closed_for == "RequestTimeoutCount"
        busy.received()
        busy.last_active = now + 9
        assert tracker.reap(now + 11) == 1 and idle.closed_for == "IdleTimeoutCount"
        assert busy.closed_for is None
        for a, _ in pairs:
            a.settimeout(2)
        # reading shut: the connection's own blocked read returns (EOF), so its thread can end
        assert pairs[2][0].recv(10) == b"" and pairs[1][0].recv(10) == b""
        with pytest.raises(socket.timeout):
            pairs[0][0].recv(10)  # the busy one is left alone
        # a thread still stuck (writing to a client that does not read) gets the socket shut whole
        assert tracker.reap(now + 11 + 3) == 0
        assert pairs[2][1].recv(10) == b"" and pairs[1][1].recv(10) == b""
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# -- http: memory accounted before reading and parsing ------------------------------------------------

def test_http_body_of_many_empty_events_is_refused_before_parsing(pipelines):
    p = pipelines("http", max_request_bytes=16 << 20)
    body = b"[" + b",".join([b"{}"] * ((8 << 20) // 3)) + b"]"  # about 8 MiB of empty events
    rss_before = psutil.Process().memory_info().rss
    with connect(p.source.bound_port) as sock:
        status, message = http_request(sock, body)
        assert status == 413 and b"max_parse_bytes" in message
        status, _ = http_request(sock, json.dumps([{"body": "after"}]).encode())
        assert status == 200  # the connection and the source go on
    growth_mb = (psutil.Process().memory_info().rss - rss_before) / 1e6
    print(f"8 MiB of empty events: 413, RSS +{growth_mb:.0f} MB")
    assert growth_mb < 100
    assert [e.body for e in p.events + p.take_committed()] == [b"after"]


def test_http_bodies_share_one_memory_budget(pipelines):
    p = pipelines("http", memory_budget_bytes=1 << 20, request_timeout_s=10)
    port = p.source.bound_port
    big = json.dumps([{"body": "x" * 1000} for _ in range(800)]).encode()  # ~800 KB
    holder = connect(port, HOSTILE)
    try:
        # a body announced and half sent holds its reservation while it arrives
        holder.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(big) + big[:1000])
        wait_until(lambda: p.source.memory.used >= len(big), 5, what="the first body's reservation")
        with connect(port) as sock:
            status, message = http_request(sock, big)
            assert status == 503 and b"memory_budget_bytes" in message
        with connect(port) as sock:
            assert http_request(sock, json.dumps([{"body": "small"}]).encode())[0] == 200
    finally:
        holder.close()
    wait_until(lambda: p.source.memory.used == 0, 5, what="the reservation given back")
    assert p.counters["Http503Count"] == 1


@pytest.mark.parametrize("kind, extra", [("syslog_udp", {}), ("netcat", {"protocol": "udp"})])
def test_udp_allow_list_drops_datagrams_from_elsewhere_and_counts(pipelines, kind, extra):
    p = pipelines(kind, allowed_clients=["127.0.0.1"], **extra)
    for source_ip, body in ((HOSTILE, b"<13>from outside\n"), ("127.0.0.1", b"<13>from inside\n")):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source_ip, 0))
            sock.sendto(body, ("127.0.0.1", p.source.bound_port))
    wait_until(lambda: p.committed() == 1 and p.counters.get("ClientNotAllowedCount") == 1, 5,
               what="one datagram kept, one dropped and counted")
    assert b"inside" in p.events[0].body


def test_a_flood_of_malformed_syslog_does_not_starve_a_good_client(pipelines):
    p = pipelines("syslog_tcp", max_event_size_bytes=200)
    garbage = b"".join(b"\x00\xffnot syslog %d " % i + b"x" * (i % 500) + b"\n" for i in range(20_000))
    flood = threading.Thread(target=lambda: [send_garbage(p.source.bound_port, garbage) for _ in range(3)],
                             daemon=True)
    flood.start()
    send_good_stream(p.source.bound_port, GOOD_EVENTS)
    flood.join(60)
    assert not flood.is_alive()
    wait_until(lambda: p.committed() >= GOOD_EVENTS + 3 * 20_000, 60, what="every message, good and bad")
    good = sorted(e.body for e in p.events if e.body.startswith(b"good "))
    assert good == sorted(b"good %d" % i for i in range(GOOD_EVENTS))
    # kept and flagged (Invalid, or Incomplete when longer than max_event_size_bytes), as Flume does
    assert p.counters["InvalidEventCount"] + p.counters["IncompleteEventCount"] >= 3 * 20_000
    print(f"malformed flood: {p.counters['InvalidEventCount']} invalid, "
          f"{p.counters['IncompleteEventCount']} incomplete, {len(good)} good")


def send_garbage(port: int, data: bytes) -> None:
    with connect(port, HOSTILE) as sock:
        sock.sendall(data)


def test_half_open_tls_handshakes_are_closed_and_do_not_lock_out(pipelines, cert):
    certfile, keyfile = cert
    p = pipelines("syslog_tcp", ssl=True, ssl_certfile=certfile, ssl_keyfile=keyfile, max_connections=4,
                  max_connections_per_client=2, frame_timeout_s=1.0)
    port = p.source.bound_port
    half_open = [connect(port, HOSTILE) for _ in range(3)]  # never send a ClientHello
    try:
        context = ssl.create_default_context(cafile=certfile)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(good_lines(1000))
        assert all(closed_by_server(s, 5) for s in half_open[:2])
    finally:
        for s in half_open:
            s.close()
    wait_until(lambda: p.committed() == 1000, 10, what="the TLS client's events")
    assert p.counters["ClientLimitRejectedCount"] == 1
    wait_until(lambda: p.counters["TlsHandshakeFailCount"] == 2, 5, what="two handshakes timed out")


@pytest.mark.parametrize("kind", ["netcat", "syslog_tcp"])
def test_a_thousand_idle_connections_cost_no_threads(pipelines, kind):
    p = pipelines(kind, max_connections=2000)
    server = p.source._server.server
    server.park_after_s = 0.2  # park sooner than the default 2 s, to keep the test short
    port = p.source.bound_port
    threads_before = threading.active_count()
    conns = [connect(port) for _ in range(1000)]
    try:
        wait_until(lambda: p.counters["OpenConnectionCount"] == 1000, 30, what="a thousand connections open")
        wait_until(lambda: server.parking.parked == 1000, 30, what="every idle connection parked")
        wait_until(lambda: threading.active_count() <= threads_before + 5, 10, what="their threads gone")
        # a parked connection that speaks again is served, its partial line kept across parkings
        conns[7].sendall(b"<13>hel")
        wait_until(lambda: server.parking.parked == 1000, 10, what="parked again after the first half")
        conns[7].sendall(b"lo\n")
        send_good_stream(port, 1000)
        wait_until(lambda: p.committed() == 1001, 10, what="the good client's events and the resumed line")
        assert b"hello" in [e.body.split(b">")[-1] for e in p.events]
        print(f"{kind}: 1000 idle connections, {threading.active_count() - threads_before} extra threads")
    finally:
        for s in conns:
            s.close()
    wait_until(lambda: p.counters["OpenConnectionCount"] == 0 and server.parking.parked == 0, 30,
               what="every connection closed and unparked")


def test_a_thousand_idle_keep_alive_http_connections_cost_no_threads(pipelines):
    p = pipelines("http", max_connections=2000)
    server = p.source._server.server
    server.park_after_s = 0.2
    port = p.source.bound_port
    threads_before = threading.active_count()
    conns = [connect(port) for _ in range(1000)]
    try:
        wait_until(lambda: p.counters["OpenConnectionCount"] == 1000, 30, what="a thousand connections open")
        wait_until(lambda: server.parking.parked == 1000, 30, what="every idle connection parked")
        wait_until(lambda: threading.active_count() <= threads_before + 5, 10, what="their threads gone")
        # a parked keep-alive connection is served request after request, parked in between
        for i in range(3):
            status, _ = http_request(conns[7], json.dumps([{"body": f"resumed {i}"}]).encode())
            assert status == 200
            wait_until(lambda: server.parking.parked == 1000, 10, what="parked again after the request")
        # two requests in one write: the second is read from the handler's buffer, not the socket,
        # so the connection must not be parked in between
        one = json.dumps([{"body": "pipelined"}]).encode()
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(one)
        conns[8].sendall((head + one) * 2)
        replies = b""
        conns[8].settimeout(10)
        while replies.count(b"HTTP/1.1 200") < 2:
            chunk = conns[8].recv(65536)
            assert chunk, f"closed after {replies!r}"
            replies += chunk
        send_good_http(port, 1000)
        wait_until(lambda: p.committed() == 1005, 10, what="every request's events")
        print(f"http: 1000 idle connections, {threading.active_count() - threads_before} extra threads")
    finally:
        for s in conns:
            s.close()
    wait_until(lambda: p.counters["OpenConnectionCount"] == 0 and server.parking.parked == 0, 30,
               what="every connection closed and unparked")
