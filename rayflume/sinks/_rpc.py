"""What the RPC sinks (``avro``, ``thrift``) share: each batch goes to an RPC source in one
``appendBatch`` call through a client of :mod:`rayflume.client`.

``write`` returns only after the source answered ``OK`` (its channels committed the batch); any
other answer, a timeout (``request_timeout_s``) or a broken connection raises, so the take is
rolled back and retried: at least once. With ``reset_connection_interval_s`` the connection is
replaced that often, so a load balancer in front of several collectors spreads long-lived agents
over new ones (Flume's reset-connection-interval). In a ``load_balance`` or ``failover`` sink
group the sinks spread over, or fail over between, several collectors as in Flume's
documentation.

Metrics: ``ConnectionCreatedCount``, ``ConnectionClosedCount``, ``ConnectionFailedCount``,
``BatchFailedCount`` (answered FAILED), and the runner's event counts.
Called from one thread at a time (see :class:`~rayflume.sinks.base.Sink`).
"""
from __future__ import annotations

import time

from pydantic import Field, model_validator

from rayflume.client import NotCommitted
from rayflume.config_base import SinkConfig
from rayflume.errors import DeliveryError
from rayflume.event import EventBatch
from rayflume.sinks.base import Sink, SinkContext
from rayflume.sinks.http import TlsUnavailable, client_tls_problems

CLIENT_KEYS = ("connect_timeout_s", "request_timeout_s", "ssl", "ssl_ca_file", "ssl_certfile", "ssl_keyfile",
               "trust_all_certs")


class RpcSink(Sink):
    """See the module docstring. The client (and its TLS files) is made at start, on the sink's node:
    ``new_client()`` returns it."""

    def __init__(self, name: str, kind: str, new_client, tls_files: tuple | None, batch_size: int = 1000,
                 reset_connection_interval_s: float | None = None):
        self.name = name
        self.kind = kind
        self.new_client = new_client
        self.tls_files = tls_files  # (certfile, keyfile, cafile) with ssl, else None
        self.batch_size = batch_size
        self.reset_connection_interval_s = reset_connection_interval_s
        self.context = SinkContext(name=name)
        self.client = None

    def start(self, context: SinkContext) -> None:
        super().start(context)
        if self.tls_files is not None:
            problems = client_tls_problems(f"{self.kind} sink '{self.name}'", *self.tls_files)[1]
            if problems:
                raise TlsUnavailable("; ".join(problems))
        self.client = self.new_client()

    def write(self, batch: EventBatch) -> None:
        if not len(batch):
            return
        client = self.client
        if (self.reset_connection_interval_s and client.connections_opened
                and time.monotonic() - client.connected_at >= self.reset_connection_interval_s):
            client.close()
            self.context.count("ConnectionClosedCount")
        opened = client.connections_opened
        try:
            client.append_batch(batch)
        except NotCommitted as exc:
            self.context.count("BatchFailedCount")
            raise DeliveryError(f"{self.kind} sink '{self.name}': {exc}; the take of {len(batch)} events is "
                                f"rolled back and retried") from exc
        except DeliveryError as exc:
            self.context.count("ConnectionFailedCount")
            raise DeliveryError(f"{self.kind} sink '{self.name}': {exc}; the take of {len(batch)} events is "
                                f"rolled back and retried") from exc
        finally:
            if client.connections_opened != opened:
                self.context.count("ConnectionCreatedCount", client.connections_opened - opened)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()


class RpcSinkConfig(SinkConfig):
    """Keys of every RPC sink (not registered)."""

    hostname: str = Field(min_length=1, description="Host of the source (Flume's hostname).")
    port: int = Field(gt=0, le=65535, description="Port of the source.")
    connect_timeout_s: float = Field(20.0, gt=0, description="Connection timeout (Flume's connect-timeout, ms).")
    request_timeout_s: float = Field(20.0, gt=0, description="Longest wait for an answer (Flume's "
                                                             "request-timeout, ms).")
    reset_connection_interval_s: float | None = Field(
        None, gt=0, description="Replace the connection this often (Flume's reset-connection-interval); "
                                "null: keep it.")
    ssl: bool = Field(False, description="Connect with TLS.")
    ssl_ca_file: str | None = Field(None, description="PEM CA bundle that verifies the source's certificate "
                                                      "(Flume's truststore); None: the system's CAs.")
    trust_all_certs: bool = Field(False, description="Do not verify the source's certificate (Flume's "
                                                     "trust-all-certs; testing only).")
    ssl_certfile: str | None = Field(None, description="PEM client certificate for sources that require mutual "
                                                       "TLS.")
    ssl_keyfile: str | None = Field(None, description="PEM key of ssl_certfile; None: in ssl_certfile.")

    @model_validator(mode="after")
    def _tls(self):
        who = f"{self.type_name} sink"
        keys = [k for k in ("ssl_ca_file", "ssl_certfile", "ssl_keyfile") if getattr(self, k) is not None]
        if self.trust_all_certs:
            keys.append("trust_all_certs")
        if keys and not self.ssl:
            names = ", ".join(f"`{k}`" for k in keys)
            raise ValueError(f"{who}: {names} {'is' if len(keys) == 1 else 'are'} set but `ssl` is false; set "
                             f"ssl: true or remove them")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError(f"{who}: `ssl_keyfile` is set without `ssl_certfile`; give the PEM client "
                             f"certificate in `ssl_certfile` too, or remove `ssl_keyfile`")
        return self

    def check(self) -> list[str]:
        """Whether this machine can load the TLS files; the sink loads them on its node at start."""
        if not self.ssl:
            return []
        return client_tls_problems(f"{self.type_name} sink", self.ssl_certfile, self.ssl_keyfile, self.ssl_ca_file)[1]

    def rpc_sink(self, name: str, client_type, **protocol_options) -> RpcSink:
        """The sink, whose client is ``client_type(hostname, port, **client keys, **protocol_options)``."""
        options = {key: getattr(self, key) for key in CLIENT_KEYS} | protocol_options
        hostname, port = self.hostname, self.port

        def new_client():
            return client_type(hostname, port, **options)

        tls_files = (self.ssl_certfile, self.ssl_keyfile, self.ssl_ca_file) if self.ssl else None
        return RpcSink(name, self.type_name, new_client, tls_files, self.batch_size, self.reset_connection_interval_s)
