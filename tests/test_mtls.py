"""Mutual TLS: the syslog_tcp and http sources with ``ssl_client_ca_file`` /
``ssl_allowed_client_names``, and the http sink's client certificate, over real sockets on
127.0.0.1 with certificates made by the ``openssl`` command (no Ray)."""
from __future__ import annotations

import socket
import ssl
import subprocess
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from rayflume.errors import DeliveryError
from rayflume.event import EventBatch
from rayflume.registry import lookup
from rayflume.sinks.base import SinkContext
from rayflume.sinks.http import HttpSinkConfig
from rayflume.sinks.http import TlsUnavailable as SinkTlsUnavailable
from rayflume.sources._tls import TlsUnavailable, certificate_names, peer_problem, tls_server_context
from tests.channel_contract import closing_factory, wait_until
from tests.net_helpers import OPENSSL, CollectingPipeline

ALLOWED = ["good-client", "SAN-Client.example"]
WAIT_S = 10


# -- certificates ------------------------------------------------------------------------------------

def _openssl(*args, cwd):
    subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=60, cwd=cwd)


def _new_key_args(key):
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key]


def _make_ca(d, name):
    _openssl("req", "-x509", *_new_key_args(f"{name}.key"), "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return SimpleNamespace(cert=str(d / f"{name}.pem"), key=str(d / f"{name}.key"), name=name)


def _make_leaf(d, ca, name, cn, extensions, serial):
    (d / f"{name}.ext").write_text("basicConstraints=CA:FALSE\n" + "".join(f"{e}\n" for e in extensions))
    _openssl("req", "-new", *_new_key_args(f"{name}.key"), "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", ca.cert, "-CAkey", ca.key, "-set_serial", str(serial),
             "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    return SimpleNamespace(cert=str(d / f"{name}.pem"), key=str(d / f"{name}.key"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA with a server certificate for 127.0.0.1 and client certificates ``good`` (CN
    good-client), ``san`` (CN nobody, DNS SAN san-client.example), ``other`` (CN other); and a
    second CA with a client certificate ``foreign`` (also CN good-client)."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed: cannot make test certificates")
    d = tmp_path_factory.mktemp("pki")
    ca = _make_ca(d, "test-ca")
    ca2 = _make_ca(d, "other-ca")
    client = ["extendedKeyUsage=clientAuth"]
    return SimpleNamespace(
        ca=ca, ca2=ca2,
        server=_make_leaf(d, ca, "server", "localhost",
                          ["extendedKeyUsage=serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost"], 1),
        good=_make_leaf(d, ca, "good", "good-client", client, 2),
        san=_make_leaf(d, ca, "san", "nobody", client + ["subjectAltName=DNS:san-client.example"], 3),
        other=_make_leaf(d, ca, "other", "other", client, 4),
        foreign=_make_leaf(d, ca2, "foreign", "good-client", client, 5))


def source_config(pki, type_="syslog_tcp", **extra):
    return lookup("source", type_).model_validate(
        {"type": type_, "channels": ["mem"], "port": 0, "ssl": True, "ssl_certfile": pki.server.cert,
         "ssl_keyfile": pki.server.key, "ssl_client_ca_file": pki.ca.cert, **extra})


# -- harness -----------------------------------------------------------------------------------------

Pipeline = CollectingPipeline


@pytest.fixture
def pipelines():
    with closing_factory(Pipeline, quiet=False) as factory:
        yield factory


@pytest.fixture
def syslog(pki, pipelines):
    """A started mTLS syslog_tcp source that admits good-client and san-client.example."""
    config = source_config(pki, ssl_allowed_client_names=ALLOWED)
    assert config.check() == []
    return pipelines(config.build("mtls"))


def client_context(pki, client=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca.cert)
    if client is not None:
        ctx.load_cert_chain(client.cert, client.key)
    return ctx


def send(pki, port: int, data: bytes, client=None) -> None:
    """Send ``data`` over TLS as ``client`` (None: without a certificate) and close."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as raw:
        with client_context(pki, client).wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(data)


def send_refused(pki, port: int, data: bytes, client=None) -> str:
    """Try to send ``data`` as ``client``; the server must end the connection without answering.
    Returns how the client saw it end. (With TLS 1.3 a client finishes its side of the handshake
    before the server checks its certificate, so the refusal shows on the first read.)"""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as raw:
        try:
            with client_context(pki, client).wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(data)
                got = s.recv(1)
        except OSError as exc:  # ssl.SSLError (an alert), EOF in violation of protocol, reset
            return repr(exc)
    assert got == b"", f"the server answered {got!r}"
    return "EOF"


def line(body: str) -> bytes:
    return f"<13>1 - h app - - - {body}\n".encode()


# -- syslog_tcp --------------------------------------------------------------------------------------

def test_client_without_a_certificate_fails_the_handshake(pki, syslog):
    send_refused(pki, syslog.port, line("anonymous"))
    wait_until(lambda: syslog.counters["TlsHandshakeFailCount"] == 1, WAIT_S, what="the failed handshake")
    send(pki, syslog.port, line("good"), pki.good)
    assert [e.body for e in syslog.collect(1)] == [b"good"]
    assert syslog.counters["TlsClientRefusedCount"] == 0


def test_client_certificate_from_another_ca_fails_the_handshake(pki, syslog):
    how = send_refused(pki, syslog.port, line("foreign"), pki.foreign)  # CN good-client, but the wrong CA
    wait_until(lambda: syslog.counters["TlsHandshakeFailCount"] == 1, WAIT_S, what="the failed handshake")
    send(pki, syslog.port, line("good"), pki.good)
    assert [e.body for e in syslog.collect(1)] == [b"good"], how
    assert syslog.counters["TlsClientRefusedCount"] == 0


def test_valid_clients_by_common_name_or_dns_name_are_served(pki, syslog):
    send(pki, syslog.port, line("by cn one") + line("by cn two"), pki.good)
    send(pki, syslog.port, line("by san"), pki.san)
    assert sorted(e.body for e in syslog.collect(3)) == [b"by cn one", b"by cn two", b"by san"]
    assert syslog.counters["TlsHandshakeFailCount"] == 0 and syslog.counters["TlsClientRefusedCount"] == 0


def test_verified_client_with_a_name_not_allowed_is_refused_and_counted(pki, syslog):
    send_refused(pki, syslog.port, line("other"), pki.other)
    wait_until(lambda: syslog.counters["TlsClientRefusedCount"] == 1, WAIT_S, what="the refused client")
    send(pki, syslog.port, line("good"), pki.good)
    assert [e.body for e in syslog.collect(1)] == [b"good"]
    assert syslog.counters["TlsHandshakeFailCount"] == 0


def test_without_allowed_names_any_client_of_the_ca_is_served(pki, pipelines):
    p = pipelines(source_config(pki).build("mtls-any"))
    send(pki, p.port, line("other"), pki.other)
    assert [e.body for e in p.collect(1)] == [b"other"]
    send_refused(pki, p.port, line("foreign"), pki.foreign)
    wait_until(lambda: p.counters["TlsHandshakeFailCount"] == 1, WAIT_S, what="the failed handshake")


# -- netcat -------------------------------------------------------------------------------------------

def test_netcat_over_mtls_acknowledges_a_valid_client_and_refuses_the_others(pki, pipelines):
    p = pipelines(source_config(pki, "netcat", ssl_allowed_client_names=ALLOWED).build("nc"))
    with socket.create_connection(("127.0.0.1", p.port), timeout=WAIT_S) as raw:
        with client_context(pki, pki.good).wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"one\ntwo\n")
            replies = b""
            while replies.count(b"OK\n") < 2:
                chunk = s.recv(64)
                assert chunk, f"the source closed the connection after {replies!r}"
                replies += chunk
    assert replies == b"OK\nOK\n"
    send_refused(pki, p.port, b"anonymous\n")
    send_refused(pki, p.port, b"other\n", pki.other)
    wait_until(lambda: (p.counters["TlsHandshakeFailCount"], p.counters["TlsClientRefusedCount"]) == (1, 1),
               WAIT_S, what="one failed handshake and one refused client")
    assert [e.body for e in p.collect(2)] == [b"one", b"two"]


def test_netcat_tls_needs_tcp(pki):
    with pytest.raises(ValidationError, match="netcat source: `ssl` needs protocol: tcp"):
        source_config(pki, "netcat", protocol="udp")


# -- http source and http sink ----------------------------------------------------------------------

def http_sink(pki, port: int, client=None, **kw):
    config = HttpSinkConfig(type="http", channel="c", endpoint=f"https://127.0.0.1:{port}/",
                            ssl_ca_file=pki.ca.cert, ssl_certfile=client and client.cert,
                            ssl_keyfile=client and client.key, **kw)
    assert config.check() == []
    sink = config.build("out")
    sink.start(SinkContext("out"))
    sink.sleep = lambda s: None
    return sink


def test_http_sink_with_a_client_certificate_posts_to_an_mtls_http_source(pki, pipelines):
    # The http source's json handler wants a JSON array, the sink's json_lines is one object a line:
    # raw bodies into the blob handler (one event per POST) instead.
    p = pipelines(source_config(pki, "http", handler="blob", ssl_allowed_client_names=ALLOWED).build("web"))
    sink = http_sink(pki, p.port, pki.good, format="raw")
    try:
        sink.write(EventBatch.from_bodies([b"one", b"two"]))  # returns only on a 2XX
        sink.write(EventBatch.from_bodies([b"three"]))
    finally:
        sink.stop()
    assert sink.context.counters["HttpResponse2XXCount"] == 2
    assert sink.context.counters["ConnectionCreatedCount"] == 1  # one mTLS connection, kept alive
    assert [e.body for e in p.collect(2)] == [b"one\ntwo\n", b"three\n"]
    assert p.counters["Http200Count"] == 2

    for client, counter in ((None, "TlsHandshakeFailCount"), (pki.foreign, "TlsHandshakeFailCount"),
                            (pki.other, "TlsClientRefusedCount")):
        sink = http_sink(pki, p.port, client, format="raw")
        try:
            with pytest.raises(DeliveryError, match="failed"):
                sink.write(EventBatch.from_bodies([b"refused"]))
        finally:
            sink.stop()
        assert sink.context.counters["ConnectionFailedCount"] == 1
        wait_until(lambda: p.counters[counter] >= 1, WAIT_S, what=counter)
    assert (p.counters["TlsHandshakeFailCount"], p.counters["TlsClientRefusedCount"]) == (2, 1)
    assert p.take_committed() == []


def test_http_sink_verifies_the_server_against_its_ca(pki, pipelines):
    p = pipelines(source_config(pki, "http").build("web"))
    sink = HttpSinkConfig(type="http", channel="c", endpoint=f"https://127.0.0.1:{p.port}/",
                          ssl_ca_file=pki.ca2.cert, ssl_certfile=pki.good.cert, ssl_keyfile=pki.good.key).build("out")
    sink.start(SinkContext("out"))
    try:
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            sink.write(EventBatch.from_bodies([b"x"]))
    finally:
        sink.stop()


# -- configuration -----------------------------------------------------------------------------------

def test_source_config_errors(pki, tmp_path):
    config = lookup("source", "syslog_tcp")
    base = {"type": "syslog_tcp", "channels": ["c"], "port": 0}
    tls = {**base, "ssl": True, "ssl_certfile": pki.server.cert, "ssl_keyfile": pki.server.key}
    with pytest.raises(ValidationError, match="ssl_client_ca_file.*ssl. is false"):
        config.model_validate({**base, "ssl_client_ca_file": pki.ca.cert})
    with pytest.raises(ValidationError, match="ssl_allowed_client_names.*ssl. is false"):
        config.model_validate({**base, "ssl_allowed_client_names": ["a"]})
    with pytest.raises(ValidationError, match="ssl_allowed_client_names.*ssl_client_ca_file. is not"):
        config.model_validate({**tls, "ssl_allowed_client_names": ["a"]})
    with pytest.raises(ValidationError, match="is empty"):
        config.model_validate({**tls, "ssl_client_ca_file": pki.ca.cert, "ssl_allowed_client_names": []})
    with pytest.raises(ValidationError, match="empty name"):
        config.model_validate({**tls, "ssl_client_ca_file": pki.ca.cert, "ssl_allowed_client_names": [" "]})

    missing = config.model_validate({**tls, "ssl_client_ca_file": str(tmp_path / "nope.pem")})
    [problem] = missing.check()
    assert "`ssl_client_ca_file`" in problem and "not readable" in problem
    with pytest.raises(TlsUnavailable, match="syslog_tcp source 'x': `ssl_client_ca_file`"):
        missing.tls_loader("x")()
    junk = tmp_path / "junk.pem"
    junk.write_text("not a CA\n")
    [problem] = config.model_validate({**tls, "ssl_client_ca_file": str(junk)}).check()
    assert "cannot load the client CA bundle `ssl_client_ca_file`" in problem
    # a key that is not a key: the message names the file's key, never its contents
    secret = tmp_path / "secret.key"
    secret.write_text("-----BEGIN PRIVATE KEY-----\nSUPERSECRETKEYDATA\n-----END PRIVATE KEY-----\n")
    [problem] = config.model_validate({**tls, "ssl_keyfile": str(secret)}).check()
    assert "cannot load the TLS certificate/key" in problem and "SUPERSECRET" not in problem


def test_encrypted_key_fails_instead_of_prompting(pki, tmp_path):
    encrypted = tmp_path / "enc.key"
    _openssl("pkey", "-in", pki.server.key, "-aes256", "-passout", "pass:pw", "-out", str(encrypted), cwd=tmp_path)
    config = lookup("source", "http").model_validate(
        {"type": "http", "channels": ["c"], "port": 0, "ssl": True, "ssl_certfile": pki.server.cert,
         "ssl_keyfile": str(encrypted)})
    [problem] = config.check()
    assert "encrypted" in problem


def test_peer_problem_checks_names_only_on_contexts_that_list_them(pki):
    cert = {"subject": ((("countryName", "XX"),), (("commonName", "Good-Client"),)),
            "subjectAltName": (("DNS", "a.example"), ("IP Address", "10.0.0.1"))}
    assert certificate_names(cert) == ["Good-Client", "a.example"]

    def conn(ctx, peer):
        return SimpleNamespace(context=ctx, getpeercert=lambda: peer)

    plain = tls_server_context(pki.server.cert, pki.server.key)
    assert peer_problem(conn(plain, None)) is None
    any_client = tls_server_context(pki.server.cert, pki.server.key, pki.ca.cert)
    assert any_client.verify_mode == ssl.CERT_REQUIRED and peer_problem(conn(any_client, cert)) is None
    named = tls_server_context(pki.server.cert, pki.server.key, pki.ca.cert, ["good-client"])
    assert peer_problem(conn(named, cert)) is None  # case-insensitive
    assert "a.example" in peer_problem(conn(named, {**cert, "subject": ()}))
    assert peer_problem(conn(named, None)) == "the client presented no certificate"


def test_sink_config_errors(pki, tmp_path):
    with pytest.raises(ValidationError, match="not https"):
        HttpSinkConfig(type="http", channel="c", endpoint="http://127.0.0.1:1/", ssl_ca_file=pki.ca.cert)
    with pytest.raises(ValidationError, match="ssl_keyfile. is set without .ssl_certfile"):
        HttpSinkConfig(type="http", channel="c", endpoint="https://127.0.0.1:1/", ssl_keyfile=pki.good.key)
    missing = HttpSinkConfig(type="http", channel="c", endpoint="https://127.0.0.1:1/",
                             ssl_certfile=str(tmp_path / "nope.pem"))
    [problem] = missing.check()
    assert "`ssl_certfile`" in problem and "not readable" in problem
    sink = missing.build("out")
    with pytest.raises(SinkTlsUnavailable, match="http sink 'out': `ssl_certfile`"):
        sink.start(SinkContext("out"))
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    [problem] = HttpSinkConfig(type="http", channel="c", endpoint="https://127.0.0.1:1/",
                               ssl_ca_file=str(junk)).check()
    assert "cannot load the CA bundle `ssl_ca_file`" in problem
