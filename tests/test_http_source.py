"""The ``http`` source: real requests (urllib / http.client / raw sockets) against a source driven by
the real SourceRunner into an in-process memory channel; a fuzz of the JSON handler; one pipeline
on a local Ray."""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rayflume import testing
from rayflume.registry import lookup
from rayflume.sources.base import SourceContext
from rayflume.sources.http import (
    HttpError,
    HttpSource,
    HttpSourceConfig,
    TokenUnavailable,
    blob_event,
    parse_json_events,
)
from tests.channel_contract import closing_factory, wait_until
from tests.net_helpers import SourcePipeline, cert  # noqa: F401  (cert: the fixture)


class Pipeline(SourcePipeline):
    """A started http source; ``run()`` drives it with the real SourceRunner into a memory channel
    (``put_delay_s`` makes every put slow)."""

    def __init__(self, source: HttpSource, capacity: int = 100_000, transaction_capacity: int = 10_000,
                 put_delay_s: float = 0.0):
        super().__init__(source, capacity, transaction_capacity, put_delay_s=put_delay_s, start=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.source.bound_port}/events"

    def drain(self):
        return self.take_committed()


@pytest.fixture
def pipelines():
    def make(run: bool = True, pipeline_kw=None, **source_kw):
        source = HttpSourceConfig(type="http", channels=["c"], bind="127.0.0.1", port=0, **source_kw).build("web")
        p = Pipeline(source, **(pipeline_kw or {}))
        return p.run() if run else p

    with closing_factory(make, quiet=False) as factory:
        yield factory


def post(url, data, headers=None, method="POST", timeout=10):
    """(status, body text) of one request."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def events_json(*bodies, headers=None):
    return json.dumps([{"headers": headers or {}, "body": b} for b in bodies]).encode()


# -- statuses --------------------------------------------------------------------------------------

def test_200_only_after_commit_with_headers_and_bodies(pipelines):
    p = pipelines()
    status, _ = post(p.url, json.dumps([{"headers": {"a": "1", "n": 5, "ok": True}, "body": "héllo"},
                                        {"body": "two"}, {}]).encode())
    assert status == 200
    events = p.drain()  # committed before the 200 was sent: no waiting needed
    assert [e.body for e in events] == ["héllo".encode(), b"two", b""]
    assert events[0].headers == {"a": "1", "n": "5", "ok": "true"}
    assert p.counters["Http200Count"] == 1 and p.counters["EventAcceptedCount"] == 3
    assert post(p.url, b"[]")[0] == 200  # nothing to commit


@pytest.mark.parametrize("body,fragment", [
    (b"[1, 2", "not valid JSON"),
    (b'{"headers": {}, "body": "x"}', "expected a JSON array"),
    (b'["x"]', "event 0: expected an object"),
    (b'[{"headers": ["a"], "body": "x"}]', "'headers' must be an object"),
    (b'[{"body": 5}]', "'body' must be a string"),
    (b'[{"body": "ok"}, {"headers": {"h": {"nested": 1}}}]', "event 1: header 'h' must be a string"),
    (b"\xff\xfe", "not valid utf-8"),
    (b'[{"body": "\\ud800"}]', "cannot be encoded"),
    (b"[" * 100_000, "not valid JSON"),
], ids=["truncated", "object", "string-event", "list-headers", "int-body", "nested-header", "latin1", "surrogate",
        "deep-nesting"])
def test_400_on_a_bad_body(pipelines, body, fragment):
    p = pipelines()
    status, message = post(p.url, body)
    assert status == 400
    assert fragment in message
    assert p.drain() == []


def test_named_tokens_from_env_and_files_each_counted_and_revocable(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYFLUME_TEST_TOKEN_B", "token-of-b")
    (tmp_path / "c").write_text("token-of-c\n")
    config = lookup("source", "http")
    doc = {"type": "http", "channels": ["mem"], "port": 0,
           "auth_tokens": {"team-a": "token-of-a", "team-b": "${env:RAYFLUME_TEST_TOKEN_B}",
                           "team-c": "${file:%s}" % (tmp_path / "c")}}
    assert "token-of" not in repr(config.model_validate(doc))  # secrets are not printed
    p = Pipeline(config.model_validate(doc).build("web")).run()
    try:
        for token in ("token-of-a", "token-of-b", "token-of-b", "token-of-c"):
            assert post(p.url, events_json(token), {"Authorization": f"Bearer {token}"})[0] == 200
        assert post(p.url, events_json("x"), {"Authorization": "Bearer ${env:RAYFLUME_TEST_TOKEN_B}"})[0] == 401
        counts = {k: v for k, v in p.counters.items() if k.startswith("AuthTokenUseCount.")}
        assert counts == {"AuthTokenUseCount.team-a": 1, "AuthTokenUseCount.team-b": 2,
                          "AuthTokenUseCount.team-c": 1}
    finally:
        p.close()
    # revoked by a config change: team-b's token no longer opens the source that replaced it
    del doc["auth_tokens"]["team-b"]
    p = Pipeline(config.model_validate(doc).build("web")).run()
    try:
        assert post(p.url, events_json("x"), {"Authorization": "Bearer token-of-b"})[0] == 401
        assert post(p.url, events_json("y"), {"Authorization": "Bearer token-of-a"})[0] == 200
    finally:
        p.close()


def test_a_token_that_cannot_be_read_names_the_key_and_never_the_secret(monkeypatch):
    monkeypatch.delenv("RAYFLUME_TEST_NO_SUCH", raising=False)
    config = lookup("source", "http").model_validate(
        {"type": "http", "channels": ["mem"], "port": 0,
         "auth_tokens": {"ok": "visible-secret", "missing": "${env:RAYFLUME_TEST_NO_SUCH}"}})
    source = config.build("web")
    with pytest.raises(TokenUnavailable, match=r"'web': `auth_tokens.missing`: the environment variable "
                                               r"RAYFLUME_TEST_NO_SUCH is not set") as err:
        source.start(SourceContext("web"))
    assert "visible-secret" not in str(err.value)
    with pytest.raises(ValidationError, match="auth_tokens.bad"):
        lookup("source", "http").model_validate({"type": "http", "channels": ["m"], "port": 0,
                                                 "auth_tokens": {"bad": "${vault:x}"}})


def test_401_on_missing_or_wrong_token(pipelines, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("  s3cret-token\n")
    config = lookup("source", "http").model_validate({"type": "http", "channels": ["mem"], "port": 0,
                                                      "auth_token_file": str(token_file)})
    assert config.check() == []
    source = config.build("web")
    p = Pipeline(source).run()
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"},
                        {"Authorization": "Bearer s3cret-token-longer"}):
            status, message = post(p.url, events_json("x"), headers)
            assert status == 401, headers
            assert "token" in message
        assert post(p.url, events_json("x"), {"Authorization": "Bearer s3cret-token"})[0] == 200
        assert [e.body for e in p.drain()] == [b"x"]
        assert p.counters["Http401Count"] == 4
    finally:
        p.close()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD"])
def test_405_for_anything_but_post(pipelines, method):
    p = pipelines()
    status, _ = post(p.url, None if method in ("GET", "HEAD", "DELETE") else b"[]", method=method)
    assert status == 405
    assert p.counters["Http405Count"] == 1


def test_413_request_and_event_too_large(pipelines):
    p = pipelines(max_request_bytes=1000, max_event_size_bytes=100)
    status, message = post(p.url, events_json("x" * 2000))
    assert status == 413 and "max_request_bytes=1000" in message
    status, message = post(p.url, events_json("ok", "y" * 101))
    assert status == 413 and "event 1" in message and "max_event_size_bytes=100" in message
    assert post(p.url, events_json("y" * 100))[0] == 200
    assert [len(e.body) for e in p.drain()] == [100]


def test_413_more_events_than_the_channel_transaction(pipelines):
    p = pipelines(pipeline_kw={"transaction_capacity": 5})
    status, message = post(p.url, events_json(*[str(i) for i in range(6)]))
    assert status == 413 and "transaction_capacity" in message
    assert post(p.url, events_json(*[str(i) for i in range(5)]))[0] == 200
    assert len(p.drain()) == 5


def test_411_without_content_length_and_415_unknown_charset(pipelines):
    p = pipelines()
    with socket.create_connection(("127.0.0.1", p.source.bound_port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[]\n\r\n0\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 411")
    status, message = post(p.url, b"[]", {"Content-Type": "application/json; charset=klingon"})
    assert status == 415 and "klingon" in message
    utf16 = json.dumps([{"body": "é"}]).encode("utf-16")
    assert post(p.url, utf16, {"Content-Type": "application/json; charset=UTF-16"})[0] == 200
    assert p.drain()[0].body == "é".encode("utf-16")  # encoded in the request's charset, as Flume


def test_503_when_the_channel_is_full_and_nothing_is_committed(pipelines):
    p = pipelines(pipeline_kw={"capacity": 5})
    assert post(p.url, events_json("a", "b", "c"))[0] == 200
    status, message = post(p.url, events_json("d", "e", "f"))
    assert status == 503 and "full" in message
    assert p.counters["Http503Count"] == 1 and p.counters["EventRejectedCount"] == 3
    assert [e.body for e in p.drain()] == [b"a", b"b", b"c"]  # nothing of the refused request
    assert post(p.url, events_json("g"))[0] == 200
    assert [e.body for e in p.drain()] == [b"g"]


def test_503_when_the_queue_is_full_and_a_timed_out_request_is_never_delivered(pipelines):
    p = pipelines(run=False, buffer_bytes=1, commit_timeout_s=1.0)  # nobody polls yet
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", post(p.url, events_json("late"))))
    first.start()
    wait_until(lambda: len(p.source.handoff) == 1, 5, what="the first request to be queued")
    status, message = post(p.url, events_json("second"))
    assert status == 503 and "queue is full" in message
    first.join(10)
    status, message = results["first"]
    assert status == 503 and "not accepted" in message
    p.run()
    assert post(p.url, events_json("after"))[0] == 200
    assert [e.body for e in p.drain()] == [b"after"]  # the timed-out request was withdrawn


def test_503_says_so_when_the_commit_may_still_happen(pipelines):
    p = pipelines(pipeline_kw={"put_delay_s": 1.0}, commit_timeout_s=0.3)
    status, message = post(p.url, events_json("slow"))
    assert status == 503 and "may still be committed" in message
    wait_until(lambda: p.channel.size() == 1, 5, what="the slow commit")


def test_merged_requests_too_large_together_are_retried_one_by_one(pipelines):
    p = pipelines(run=False, pipeline_kw={"transaction_capacity": 5}, batch_size=10)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(post, p.url, events_json(f"{k}1", f"{k}2", f"{k}3")) for k in "ab"]
        wait_until(lambda: len(p.source.handoff) == 2, 5, what="both requests queued")
        p.run()
        assert [f.result()[0] for f in futures] == [200, 200]
    assert sorted(e.body for e in p.drain()) == [b"a1", b"a2", b"a3", b"b1", b"b2", b"b3"]


def test_concurrent_requests_each_committed_once(pipelines):
    p = pipelines(batch_size=50)

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", p.source.bound_port, timeout=10)  # keep-alive
        statuses = []
        for i in range(10):
            conn.request("POST", "/", events_json(*[f"{k}-{i}-{j}" for j in range(5)]),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        conn.close()
        return statuses

    with ThreadPoolExecutor(16) as pool:
        statuses = [s for result in pool.map(client, range(16)) for s in result]
    assert statuses == [200] * 160
    bodies = [e.body.decode() for e in p.drain()]
    assert sorted(bodies) == sorted(f"{k}-{i}-{j}" for k in range(16) for i in range(10) for j in range(5))
    assert p.counters["ConnectionAcceptedCount"] == 16


def test_blob_handler(pipelines):
    p = pipelines(handler="blob", max_event_size_bytes=1000)
    payload = bytes(range(256)) * 3
    assert post(p.url + "?host=web1&tag=a&tag=b&empty=", payload)[0] == 200
    assert post(p.url, b"")[0] == 200
    assert post(p.url, b"x" * 1001)[0] == 413
    first, second = p.drain()
    assert first.body == payload and first.headers == {"host": "web1", "tag": "a", "empty": ""}
    assert second.body == b"" and second.headers == {}


def test_max_connections_and_slow_clients(pipelines):
    p = pipelines(max_connections=1, request_timeout_s=0.5)
    held = http.client.HTTPConnection("127.0.0.1", p.source.bound_port, timeout=5)
    held.request("POST", "/", events_json("held"))
    held_response = held.getresponse()
    assert held_response.status == 200
    held_response.read()  # the keep-alive connection stays open and holds the only slot
    status, message = post(p.url, events_json("refused"))
    assert status == 503 and "too many connections" in message
    assert p.counters["ConnectionRejectedCount"] == 1
    held.close()
    wait_until(lambda: p.counters["OpenConnectionCount"] == 0, 5, what="the slot to be freed")
    # a client that announces 100 bytes and sends 10 is answered 408 after request_timeout_s
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", p.source.bound_port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[{\"body\":")
        assert s.recv(100).startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 4
    assert [e.body for e in p.drain()] == [b"held"]


def test_stop_answers_waiting_requests(pipelines):
    p = pipelines(run=False, commit_timeout_s=30)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", post(p.url, events_json("x"))))
    t.start()
    wait_until(lambda: len(p.source.handoff) == 1, 5, what="the request to be queued")
    started = time.monotonic()
    p.source.stop()
    t.join(10)
    assert result["r"][0] == 503
    assert time.monotonic() - started < 5


def test_https_with_token(cert):
    certfile, keyfile = cert
    config = lookup("source", "http").model_validate(
        {"type": "http", "channels": ["mem"], "port": 0, "ssl": True, "ssl_certfile": certfile,
         "ssl_keyfile": keyfile, "auth_token": "tok"})
    p = Pipeline(config.build("web")).run()
    try:
        ctx = ssl.create_default_context(cafile=certfile)
        conn = http.client.HTTPSConnection("127.0.0.1", p.source.bound_port, context=ctx, timeout=10)
        conn.request("POST", "/", events_json("over tls"), {"Authorization": "Bearer tok"})
        resp = conn.getresponse()
        assert resp.status == 200
        conn.close()
        assert [e.body for e in p.drain()] == [b"over tls"]
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            post(f"http://127.0.0.1:{p.source.bound_port}/", events_json("plain"), timeout=3)
        wait_until(lambda: p.counters["TlsHandshakeFailCount"] >= 1, 5, what="the failed handshake")
    finally:
        p.close()


def test_config_defaults_and_errors(tmp_path):
    config = lookup("source", "http")
    c = config.model_validate({"type": "http", "channels": ["c"], "port": 8080, "auth_token": "hunter2"})
    assert c.bind == "127.0.0.1" and c.handler == "json" and c.max_connections > 0
    assert "hunter2" not in repr(c) and "hunter2" not in str(c.model_dump(mode="json"))
    with pytest.raises(ValidationError, match="not both"):
        config.model_validate({"type": "http", "channels": ["c"], "port": 1, "auth_token": "a",
                               "auth_token_file": "/x"})
    with pytest.raises(ValidationError):
        config.model_validate({"type": "http", "channels": ["c"], "port": 1, "handler": "xml"})
    missing = config.model_validate({"type": "http", "channels": ["c"], "port": 1,
                                     "auth_token_file": str(tmp_path / "none")})
    assert "auth_token_file" in missing.check()[0]


# -- fuzz ------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8)
json_events = st.lists(st.fixed_dictionaries({}, optional={
    "headers": st.dictionaries(st.text(max_size=10), st.one_of(st.text(max_size=20), st.integers(), json_values),
                               max_size=4),
    "body": st.one_of(st.text(max_size=50), json_values)}), max_size=6)


def check_handler_outcome(payload: bytes, content_type=None):
    try:
        batch = parse_json_events(payload, content_type, max_event_size_bytes=40)
    except HttpError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return None
    return batch


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                 json_events.map(lambda v: json.dumps(v).encode())),
       st.sampled_from([None, "application/json", "application/json; charset=latin-1", "text/x; charset=nope"]))
def test_fuzz_json_handler_gives_events_or_a_clean_4xx(payload, content_type):
    check_handler_outcome(payload, content_type)


@settings(max_examples=100, deadline=None)
@given(json_events)
def test_fuzz_json_handler_well_formed_events_round_trip(events):
    batch = check_handler_outcome(json.dumps(events).encode())
    ok_shape = all(isinstance(e.get("body", ""), (str, type(None))) and
                   all(isinstance(v, (str, int, float, bool)) and v is not None for v in e.get("headers", {}).values())
                   for e in events)
    fits = ok_shape and all(len((e.get("body") or "").encode("utf-8", "surrogatepass")) <= 40 for e in events)
    encodable = all(not any(0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(e, ensure_ascii=False)) for e in events)
    if fits and encodable:
        assert batch is not None and len(batch) == len(events)
        assert batch.bodies() == [(e.get("body") or "").encode() for e in events]
    if not ok_shape:
        assert batch is None


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=100), st.text(max_size=60))
def test_fuzz_blob_handler(body, query):
    try:
        batch = blob_event(body, query, True, 50)
    except HttpError as exc:
        assert exc.status in (400, 413)
        return
    assert batch.bodies() == [body]


# -- on Ray ----------------------------------------------------------------------------------------

def test_ray_http_to_memory_to_sink(deployed):
    out = testing.collector("http-e2e")
    out.clear()
    handle = deployed({
        "name": "http-e2e", "metrics": {"port": None},
        "sources": {"web": {"type": "http", "port": 0, "channels": ["mem"], "auth_token": "tok"}},
        "channels": {"mem": {"type": "memory", "capacity": 1000}},
        "sinks": {"out": {"type": "testing_sink", "channel": "mem", "collector": "http-e2e"}},
    })
    ports = []

    def listening():
        ports.append(int(handle.metrics().get("SOURCE.web", {}).get("BoundPort", "0") or 0))
        return ports[-1] > 0
    wait_until(listening, 30, interval_s=0.1, what="the http source to listen")
    url = f"http://127.0.0.1:{ports[-1]}/"
    auth = {"Authorization": "Bearer tok", "Content-Type": "application/json"}
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda i: post(url, events_json(*[f"{i}-{j}" for j in range(10)],
                                                                 headers={"req": str(i)}), auth)[0], range(20)))
    assert statuses == [200] * 20
    assert post(url, events_json("x"), {})[0] == 401
    out.wait_for(200, timeout_s=60)
    events = out.events()
    assert sorted(e.body.decode() for e in events) == sorted(f"{i}-{j}" for i in range(20) for j in range(10))
    assert all(e.body.decode().split("-")[0] == e.headers["req"] for e in events)
    metrics = handle.metrics()["SOURCE.web"]
    assert metrics["Http200Count"] == "20" and metrics["Http401Count"] == "1"
