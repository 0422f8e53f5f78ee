"""The controller's metrics endpoint against hostile or careless clients, without Ray.

``MetricsServer`` is driven with plain callables that count their calls, over real sockets on
127.0.0.1: a bounded number of handlers, a deadline for the whole request (slowloris), collect()
and health() called at most once per refresh interval, /health, Prometheus' text format, the
bearer token; and the topology's ``metrics:`` keys.
"""
from __future__ import annotations

import http.client
import json
import logging
import math
import re
import socket
import textwrap
import threading
import time

import pytest

from rayflume._private.metrics import MetricsServer, TokenUnavailable, flume_shape, prometheus_text, resolve_token
from rayflume.errors import ConfigError
from rayflume.topology import loads_topology
from tests.channel_contract import wait_until

HOST = "127.0.0.1"


class Counting:
    """A collect() or health() that counts its calls; ``delay_s`` makes each call slow, ``gate`` (an
    Event) holds calls until set."""

    def __init__(self, value=None, delay_s: float = 0.0, gate: threading.Event | None = None):
        self.value = value if value is not None else {}
        self.delay_s = delay_s
        self.gate = gate
        self.calls = 0
        self.lock = threading.Lock()
        self.error: Exception | None = None

    def __call__(self):
        with self.lock:
            self.calls += 1
            n = self.calls
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.delay_s:
            time.sleep(self.delay_s)  # the work a real collect does
        if self.error is not None:
            raise self.error
        return self.value(n) if callable(self.value) else self.value


def sample_metrics(n: int = 1) -> dict:
    return flume_shape({("SOURCE", "r1"): {"EventReceivedCount": 10, "EventAcceptedCount": 10, "Calls": n},
                        ("CHANNEL", "c1"): {"ChannelSize": 3, "ChannelFillPercentage": 0.3},
                        ("SINK", "k1"): {"EventDrainSuccessCount": 7, "OpenConnectionCount": 2,
                                         "LastError": "boom", "Note": ""}})


@pytest.fixture
def serve():
    servers = []

    def start(collect=None, health=None, **kwargs):
        server = MetricsServer(HOST, 0, collect if collect is not None else Counting(sample_metrics), health,
                               **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def get(server, path: str = "/metrics", headers: dict | None = None, timeout: float = 10.0, method: str = "GET"):
    """``(status, headers, body)`` of one request."""
    conn = http.client.HTTPConnection(HOST, server.port, timeout=timeout)
    try:
        conn.request(method, path, body=b"x" if method == "POST" else None, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def handler_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("rayflume-metrics-handler"))


# -- basics ---------------------------------------------------------------------------------------------
def test_flume_json_404_and_405(serve):
    server = serve()
    status, headers, body = get(server)
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["SOURCE.r1"]["EventReceivedCount"] == "10"
    assert get(server, "/")[0] == 200
    assert get(server, "/metrics?format=json")[0] == 200
    status, _, body = get(server, "/nope")
    assert status == 404 and b"/health" in body
    assert get(server, "/metrics", method="POST")[0] == 405
    assert get(server, "/metrics?format=xml")[0] == 400


# -- load: 200 concurrent requests, one collect per second ------------------------------------------------
def test_200_concurrent_requests_are_served_and_share_collect_calls(serve):
    collect = Counting(sample_metrics, delay_s=0.05)
    server = serve(collect, request_timeout_s=5.0)
    n = 200
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def client(i):
        barrier.wait()
        t0 = time.monotonic()
        try:
            status, _, body = get(server, timeout=5.0)
            results[i] = (status, time.monotonic() - t0, json.loads(body) if status == 200 else body)
        except Exception as exc:  # noqa: BLE001 - reported below
            results[i] = (type(exc).__name__, time.monotonic() - t0, None)

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    elapsed = time.monotonic() - start
    bad = [r[:2] for r in results if r is None or r[0] != 200]
    assert not bad, bad[:5]
    slowest = max(r[1] for r in results)
    assert slowest < 5.0, slowest
    assert collect.calls <= math.ceil(elapsed) + 1, (collect.calls, elapsed)
    assert handler_threads() <= 16
    print(f"\n200 concurrent requests: {elapsed:.2f}s in all, slowest {slowest:.2f}s, "
          f"{collect.calls} collect() call(s)")

    # steady load for a while: at most one collect per second, and the data does get refreshed
    stop = time.monotonic() + 2.5
    seen = []

    def hammer():
        while time.monotonic() < stop:
            status, _, body = get(server, timeout=5.0)
            assert status == 200
            seen.append(json.loads(body)["SOURCE.r1"]["Calls"])

    before, start = collect.calls, time.monotonic()
    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    elapsed = time.monotonic() - start
    made = collect.calls - before
    assert 1 <= made <= math.ceil(elapsed) + 1, (made, elapsed, len(seen))
    assert len({*seen}) >= 2  # refreshed, not stuck on one result
    print(f"steady load: {len(seen)} requests in {elapsed:.2f}s, {made} collect() call(s)")


# -- slow and silent clients --------------------------------------------------------------------------
def test_slowloris_is_closed_at_the_request_deadline_while_a_good_client_is_served(serve):
    timeout_s, byte_every_s = 1.5, 0.3  # bytes come well within any per-read timeout
    server = serve(request_timeout_s=timeout_s)
    closed_after: list = []
    sent = []

    def slowloris():
        sock = socket.create_connection((HOST, server.port), timeout=5)
        t0 = time.monotonic()
        sock.settimeout(byte_every_s)
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 100
        try:
            for byte in request:
                sock.sendall(bytes([byte]))
                sent.append(byte)
                try:
                    if sock.recv(1024) == b"":  # the server closed the connection
                        break
                except socket.timeout:
                    continue  # still open: next byte
        except OSError:
            pass  # reset by the server: closed as well
        closed_after.append(time.monotonic() - t0)
        sock.close()

    slow = threading.Thread(target=slowloris)
    slow.start()
    wait_until(lambda: len(sent) >= 2, timeout_s=5, what="the slow client to start sending")
    t0 = time.monotonic()
    status, _, _ = get(server, timeout=timeout_s)
    good = time.monotonic() - t0
    assert status == 200 and good < 1.0, good
    slow.join(10)
    assert closed_after, "the slow client was never closed"
    assert closed_after[0] < timeout_s + 1.0, closed_after
    assert len(sent) >= 3  # it kept sending, a byte each 0.3s, and was closed anyway: a deadline in all
    print(f"\nslowloris closed after {closed_after[0]:.2f}s ({len(sent)} bytes sent); good client served in "
          f"{good * 1000:.0f} ms")


def test_handlers_are_bounded_and_further_clients_wait_for_a_free_one(serve):
    timeout_s = 1.0
    server = serve(max_handlers=2, request_timeout_s=timeout_s)
    silent = [socket.create_connection((HOST, server.port), timeout=5) for _ in range(2)]
    try:
        wait_until(lambda: handler_threads() >= 2, timeout_s=5, what="both handlers to take a silent client")
        t0 = time.monotonic()
        status, _, _ = get(server, timeout=5)
        waited = time.monotonic() - t0
        assert status == 200
        assert 0.3 < waited < 2 * timeout_s + 1, waited  # in the backlog until a silent client was cut off
        assert handler_threads() <= 2
        for sock in silent:  # both were closed, with nothing sent
            sock.settimeout(5)
            assert sock.recv(10) == b""
    finally:
        for sock in silent:
            sock.close()


def test_close_returns_promptly_with_every_handler_busy(serve):
    server = MetricsServer(HOST, 0, Counting(sample_metrics), max_handlers=1, request_timeout_s=3.0)
    held = socket.create_connection((HOST, server.port), timeout=5)
    queued = socket.create_connection((HOST, server.port), timeout=5)
    try:
        wait_until(lambda: handler_threads() >= 1, timeout_s=5, what="the handler to take the held client")
        t0 = time.monotonic()
        server.close()
        assert time.monotonic() - t0 < 2.0
        with pytest.raises(OSError):
            socket.create_connection((HOST, server.port), timeout=2).close()
    finally:
        held.close()
        queued.close()


# -- the cache ------------------------------------------------------------------------------------------
def test_a_slow_collect_gives_503_then_fresh_then_stale_data(serve):
    gate = threading.Event()
    collect = Counting(sample_metrics, gate=gate)
    server = serve(collect, request_timeout_s=0.5, refresh_interval_s=0.2)
    status, headers, _ = get(server)
    assert status == 503 and headers["retry-after"] == "1"  # nothing collected yet
    assert collect.calls == 1
    assert get(server)[0] == 503 and collect.calls == 1  # still the one call in flight
    gate.set()
    wait_until(lambda: get(server)[0] == 200, timeout_s=5, what="the first collect to be served")
    gate.clear()
    last = int(json.loads(get(server)[2])["SOURCE.r1"]["Calls"])
    wait_until(lambda: "x-rayflume-metrics-age" in get(server)[1], timeout_s=5,
               what="the previous result, marked stale, while a refresh hangs")
    status, headers, body = get(server)
    stale = int(json.loads(body)["SOURCE.r1"]["Calls"])
    assert status == 200 and last <= stale < collect.calls  # the last result, not the hung call's
    hung = collect.calls
    assert get(server)[0] == 200 and collect.calls == hung  # no second call while one hangs
    gate.set()
    wait_until(lambda: int(json.loads(get(server)[2])["SOURCE.r1"]["Calls"]) >= hung, timeout_s=5,
               what="fresh data once the hung refresh finished")


def test_a_failing_collect_is_500_and_not_retried_by_every_request(serve):
    collect = Counting(sample_metrics)
    collect.error = RuntimeError("actor gone")
    server = serve(collect)
    for _ in range(20):
        status, _, body = get(server)
        assert status == 500 and b"actor gone" in body
    assert collect.calls <= 2


# -- /health ----------------------------------------------------------------------------------------
def test_health_up_down_with_names_and_cached(serve):
    problems: list = []
    health = Counting(lambda n: list(problems))
    server = serve(health=health, refresh_interval_s=0.2)
    status, _, body = get(server, "/health")
    assert status == 200 and json.loads(body) == {"status": "UP"}
    problems[:] = ["SOURCE.r1", "SINK.k1"]
    wait_until(lambda: get(server, "/health")[0] == 503, timeout_s=5, what="health to report the problems")
    status, _, body = get(server, "/health")
    doc = json.loads(body)
    assert status == 503 and doc["status"] == "DOWN" and doc["unhealthy"] == ["SINK.k1", "SOURCE.r1"]
    problems.clear()
    wait_until(lambda: get(server, "/health")[0] == 200, timeout_s=5, what="health to recover")

    calls, t0 = health.calls, time.monotonic()
    threads = [threading.Thread(target=get, args=(server, "/health")) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert health.calls - calls <= math.ceil((time.monotonic() - t0) / 0.2) + 1


def test_health_reasons_errors_and_absence(serve):
    server = serve(health=Counting({"CHANNEL.c1": "LOST: node gone", "SOURCE.r1": "RESTARTING"}))
    status, _, body = get(server, "/health")
    doc = json.loads(body)
    assert status == 503 and doc["unhealthy"] == ["CHANNEL.c1", "SOURCE.r1"]
    assert doc["reasons"]["SOURCE.r1"] == "RESTARTING"

    failing = Counting([])
    failing.error = RuntimeError("no listing")
    status, _, body = get(serve(health=failing), "/health")
    assert status == 503 and json.loads(body)["status"] == "UNKNOWN"

    assert get(serve(), "/health")[0] == 404  # no health callable given


# -- Prometheus -------------------------------------------------------------------------------------
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\} (\S+)$')


def parse_prometheus(text: str) -> dict:
    """``{(name, frozenset(labels)): value}``; asserts the text format's rules on the way."""
    samples, types, current = {}, {}, None
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"two TYPE lines for {name}"
            assert kind in ("counter", "gauge")
            types[name], current = kind, name
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.groups()
        assert name == current, f"{name} is not under its TYPE line"
        float(value)
        pairs = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels))
        samples[(name, pairs)] = float(value)
    return samples


def test_prometheus_text_by_query_and_by_accept(serve):
    server = serve(labels={"topology": 'we"ird'})
    status, headers, body = get(server, "/metrics?format=prometheus")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    samples = parse_prometheus(text)
    key = ("rayflume_event_received_count",
           frozenset({("component", "SOURCE.r1"), ("kind", "SOURCE"), ("topology", 'we\\"ird')}))
    assert samples[key] == 10
    assert "# TYPE rayflume_event_received_count counter" in text
    assert "# TYPE rayflume_channel_size gauge" in text
    assert "# TYPE rayflume_open_connection_count gauge" in text
    names = {name for name, _ in samples}
    assert "rayflume_channel_fill_percentage" in names
    assert not {"rayflume_type", "rayflume_last_error", "rayflume_note"} & names  # non-numeric values left out
    # Prometheus' scraper asks with Accept: ...text/plain...; a browser or curl gets JSON
    scraper = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
    assert get(server, headers={"Accept": scraper})[2] == body
    assert get(server, headers={"Accept": "*/*"})[1]["content-type"] == "application/json"
    assert get(server, headers={"Accept": "application/json, text/plain"})[1]["content-type"] == "application/json"


def test_prometheus_text_of_odd_values():
    text = prometheus_text({"SOURCE.a": {"Type": "SOURCE", "X": "1.5e3", "Y": "nan", "Z": True, "W": "-2",
                                         "Count": 3}, "bad": "not a mapping"})
    samples = parse_prometheus(text)
    assert {name: v for (name, _), v in samples.items()} == {"rayflume_x": 1500.0, "rayflume_w": -2.0,
                                                             "rayflume_count": 3.0}
    assert prometheus_text({}) == ""


# -- the bearer token -------------------------------------------------------------------------------
def test_token_401_without_or_with_a_wrong_one_and_200_with_it(serve, caplog):
    caplog.set_level(logging.DEBUG, logger="rayflume.metrics")
    server = serve(health=Counting([]), token="s3cret-t0ken")
    status, headers, _ = get(server)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert get(server, "/health")[0] == 401
    assert get(server, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert get(server, headers={"Authorization": "Basic s3cret-t0ken"})[0] == 401
    assert get(server, headers={"Authorization": "Bearer s3cret-t0ken-and-more"})[0] == 401
    ok = {"Authorization": "Bearer s3cret-t0ken"}
    assert get(server, headers=ok)[0] == 200
    assert get(server, "/health", headers=ok)[0] == 200
    assert get(server, "/metrics?format=prometheus", headers={"authorization": "bearer  s3cret-t0ken "})[0] == 200
    assert "s3cret-t0ken" not in caplog.text


def test_resolve_token(tmp_path, monkeypatch):
    assert resolve_token(None, None) is None
    assert resolve_token(" literal ", None) == "literal"
    monkeypatch.setenv("RAYFLUME_TEST_METRICS_TOKEN", "from-env")
    assert resolve_token("${env:RAYFLUME_TEST_METRICS_TOKEN}", None) == "from-env"
    monkeypatch.delenv("RAYFLUME_TEST_METRICS_TOKEN")
    with pytest.raises(TokenUnavailable, match=r"^metrics\.token: the environment variable "
                                               r"RAYFLUME_TEST_METRICS_TOKEN is not set"):
        resolve_token("${env:RAYFLUME_TEST_METRICS_TOKEN}", None)
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert resolve_token(None, str(path)) == "from-file"
    path.write_text("  \n")
    with pytest.raises(TokenUnavailable, match=r"^metrics\.token_file: .* is empty; write the token into it"):
        resolve_token(None, str(path))
    with pytest.raises(TokenUnavailable, match=r"^metrics\.token_file: cannot read .*; put the token file there"):
        resolve_token(None, str(tmp_path / "missing"))


# -- the topology's metrics: keys ---------------------------------------------------------------------------
BASE = """\
name: m
sources: {r1: {type: sequence, channels: [c1]}}
channels: {c1: {type: memory}}
sinks: {k1: {type: null, channel: c1}}
"""


def topo(metrics: str):
    return loads_topology(BASE + textwrap.dedent(metrics))


def errors(metrics: str, base: str = BASE) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        loads_topology(base + textwrap.dedent(metrics))
    return exc.value.errors


def the_error(errs: list[str], path: str) -> str:
    found = [e for e in errs if e.split(": ", 1)[0] == path]
    assert len(found) == 1, (path, errs)
    return found[0]


def test_topology_metrics_bind_token_and_token_file():
    t = topo("metrics: {bind: 0.0.0.0, port: 0, token: '${env:METRICS_TOKEN}'}")
    assert (t.metrics_host, t.metrics_port, t.metrics_token, t.metrics_token_file) == \
        ("0.0.0.0", 0, "${env:METRICS_TOKEN}", None)
    t = topo("metrics: {host: 127.0.0.1, token: s3cret}")
    assert t.metrics_token == "s3cret" and "metrics_token=" not in repr(t)
    t = topo("metrics: {token_file: /etc/rayflume/metrics.token}")
    assert t.metrics_token_file == "/etc/rayflume/metrics.token" and t.metrics_token is None
    t = topo("metrics: {port: null}")
    assert t.metrics_port is None and t.metrics_token is None


def test_topology_metrics_errors_name_the_key_and_what_to_do():
    errs = errors("""\
        metrics:
          host: 127.0.0.1
          bind: 0.0.0.0
          token: s3cret
          token_file: /x
        """)
    assert "give one of them, not both" in the_error(errs, "metrics.bind")
    assert "give `token` or `token_file`, not both" in the_error(errs, "metrics.token")

    msg = the_error(errors("metrics: {token: 12345678}"), "metrics.token")
    assert "expected the bearer token as a string" in msg and "quote it" in msg
    assert "12345678" not in msg  # never echo a secret
    assert "(line 5)" in msg
    assert "${env:NAME}" in the_error(errors("metrics: {token: '${env:1BAD}'}"), "metrics.token")
    assert "${env:NAME}" in the_error(errors("metrics: {token: '${ENV_NAME}'}"), "metrics.token")
    assert "empty string" in the_error(errors("metrics: {token: ''}"), "metrics.token")
    assert "give an absolute path" in the_error(errors("metrics: {token_file: tok.txt}"), "metrics.token_file")
    assert "path of a file" in the_error(errors("metrics: {token_file: 3}"), "metrics.token_file")
    assert "address to listen on" in the_error(errors("metrics: {bind: ''}"), "metrics.bind")
    assert "not a port number" in the_error(errors("metrics: {port: true}"), "metrics.port")
    assert "did you mean `token`?" in the_error(errors("metrics: {tokn: x}"), "metrics.tokn")
    assert "did you mean `token_file`?" in the_error(errors("metrics: {tokenFile: /x}"), "metrics.tokenFile")

    # collected with the topology's other errors
    errs = errors("metrics: {token: '${env:}'}\n", base=BASE.replace("channel: c1", "channel: c2"))
    assert the_error(errs, "metrics.token") and any(e.startswith("sinks.k1.channel") for e in errs)


# -- what the controller passes as health() ------------------------------------------------------------
def test_controller_health_problems_from_what_it_knows():
    """``TopologyController.health_problems`` on a hand-built controller (no Ray cluster): it reads
    the last listing of Ray's actors, LOST records and waiting tiers, and calls no component."""
    from rayflume._private import planner
    from rayflume._private.controller import TopologyController, _Instance, _Managed

    class Handle:
        def __init__(self, actor_id):
            self._actor_id = bytes.fromhex(actor_id)

        def __getattr__(self, name):  # any call to a component would end up here
            raise AssertionError(f"health_problems called {name}")

    t = loads_topology(textwrap.dedent("""\
        name: h
        sources: {r1: {type: sequence, channels: [c1]}}
        channels: {c1: {type: memory}}
        sinks: {k1: {type: null, channel: c1}, k2: {type: null, channel: c1}}
        sink_groups: {g: {sinks: [k1, k2]}}
        """))
    ctl = object.__new__(TopologyController)
    ctl.name, ctl.topology, ctl.state = "h", t, "RUNNING"
    inst = _Instance("", "0", None)
    inst.components = {key: _Managed(key[0], key[1], raw) for key, raw in
                       planner.component_configs(t.tiers[""]).items()}
    ids = {}
    for i, managed in enumerate(inst.components.values()):
        ids[(managed.kind, managed.name)] = f"{i:02x}" * 4
        managed.handle = Handle(ids[(managed.kind, managed.name)])
    ctl.instances = {("", "0"): inst}
    ctl.lost_channels, ctl.waiting = {}, {}
    ctl._actors = {aid: ("ALIVE", 0) for aid in ids.values()}
    assert ctl.health_problems() == {}

    ctl._actors[ids[("SINK", "g")]] = ("RESTARTING", 1)
    del ctl._actors[ids[("SOURCE", "r1")]]
    inst.components[("CHANNEL", "c1")].lost = "node gone"
    ctl.waiting["agent"] = "tier 'agent' waits for a node with tier=agent"
    ctl.state = "STOPPING"
    assert ctl.health_problems() == {
        "SINK.k1": "RESTARTING", "SINK.k2": "RESTARTING",  # a group's sinks, by name, as in metrics
        "SOURCE.r1": "UNKNOWN (not in the last listing of Ray's actors)",
        "CHANNEL.c1": "LOST: node gone",
        "TIER.agent": "tier 'agent' waits for a node with tier=agent",
        "TOPOLOGY.h": "STOPPING"}
