"""TLS for the TCP sources: the ``ssl*`` keys (:class:`TlsConfig`), loading the certificate on the
source's own node (:meth:`TlsConfig.tls_loader`, :func:`resolve_tls`) and the server context.

Mutual TLS: with ``ssl_client_ca_file`` the server asks every client for a certificate and
verifies it against that CA bundle during the handshake (a client without one, or with one the
bundle does not vouch for, fails the handshake: ``TlsHandshakeFailCount``). With
``ssl_allowed_client_names`` too, a verified client is served only when its certificate's subject
common name or one of its DNS subject alternative names is in the list (compared without regard
to case); others are refused after the handshake (``TlsClientRefusedCount``).

The handshake itself runs in the connection's thread (see
:class:`rayflume.sources._server.LimitedServerMixin`), which then calls :func:`peer_problem`.
Certificates and keys are only ever named by path in messages and logs, never shown.
"""
from __future__ import annotations

import os
import ssl

from pydantic import Field, field_validator, model_validator

from rayflume.config_base import SourceConfig
from rayflume.errors import RayflumeError

_FILE_KEYS = ("ssl_certfile", "ssl_keyfile", "ssl_client_ca_file")


class TlsConfig(SourceConfig):
    """TLS keys for TCP servers: ``ssl``, ``ssl_certfile`` (PEM) and ``ssl_keyfile`` (PEM); for mutual
    TLS ``ssl_client_ca_file`` (PEM CA bundle) and optionally ``ssl_allowed_client_names``."""

    ssl: bool = Field(False, description="Serve TLS on the TCP port.")
    ssl_certfile: str | None = Field(None, description="PEM certificate (chain) file; required with ssl.")
    ssl_keyfile: str | None = Field(None, description="PEM private key file; None: the key is in ssl_certfile.")
    ssl_client_ca_file: str | None = Field(
        None, description="PEM CA bundle: when set, every client must present a certificate signed by one of "
                          "these CAs (mutual TLS); others fail the handshake.")
    ssl_allowed_client_names: list[str] | None = Field(
        None, description="With ssl_client_ca_file: serve only clients whose certificate has one of these "
                          "names as subject CN or DNS subject alternative name (case-insensitive); others are "
                          "refused and counted in TlsClientRefusedCount. None: any verified client.")

    @field_validator("ssl_allowed_client_names")
    @classmethod
    def _names(cls, v):
        if v is None:
            return v
        who = f"{cls.type_name or 'network'} source"
        if not v:
            raise ValueError(f"{who}: `ssl_allowed_client_names` is empty, which would refuse every client; list "
                             f"the certificate names to accept, or remove the key to accept any client the "
                             f"`ssl_client_ca_file` CAs vouch for")
        for name in v:
            if not name.strip():
                raise ValueError(f"{who}: `ssl_allowed_client_names` holds an empty name; remove it")
        return v

    @model_validator(mode="after")
    def _tls(self):
        who = f"{self.type_name or 'network'} source"
        if self.ssl and not self.ssl_certfile:
            raise ValueError(f"{who}: `ssl` is true but `ssl_certfile` is not set; give the PEM "
                             f"certificate (and `ssl_keyfile`) or set ssl: false")
        if not self.ssl:
            set_keys = [k for k in (*_FILE_KEYS, "ssl_allowed_client_names") if getattr(self, k) is not None]
            if set_keys:
                keys = ", ".join(f"`{k}`" for k in set_keys)
                raise ValueError(f"{who}: {keys} {'is' if len(set_keys) == 1 else 'are'} set but `ssl` is false; "
                                 f"set ssl: true to serve TLS, or remove them")
        if self.ssl_allowed_client_names is not None and not self.ssl_client_ca_file:
            raise ValueError(f"{who}: `ssl_allowed_client_names` is set but `ssl_client_ca_file` is not; client "
                             f"names are only checked on certificates verified against a CA, so give the PEM CA "
                             f"bundle that signs the client certificates in `ssl_client_ca_file`")
        return self

    def tls_problems(self, who: str | None = None) -> list[str]:
        """Why the certificate/key/CA files cannot be loaded on this machine (empty when they can, or
        without ``ssl``). ``who`` starts each message (default: the source type)."""
        return self._load_tls(who)[1]

    def _load_tls(self, who: str | None) -> tuple[ssl.SSLContext | None, list[str]]:
        if not self.ssl:
            return None, []
        who = who or f"{self.type_name or 'network'} source"
        problems = unreadable_files(who, {key: getattr(self, key) for key in _FILE_KEYS}, "source")
        if problems:
            return None, problems
        try:
            ctx = tls_server_context(self.ssl_certfile, self.ssl_keyfile)
        except (OSError, ssl.SSLError, ValueError) as exc:
            return None, [f"{who}: cannot load the TLS certificate/key ({exc}); give a PEM certificate "
                          f"in `ssl_certfile` and its key in `ssl_keyfile`"]
        if self.ssl_client_ca_file:
            try:
                require_client_certificates(ctx, self.ssl_client_ca_file, self.ssl_allowed_client_names)
            except (OSError, ssl.SSLError, ValueError) as exc:
                return None, [f"{who}: cannot load the client CA bundle `ssl_client_ca_file` "
                              f"{self.ssl_client_ca_file!r} ({exc}); give a PEM file of the CA "
                              f"certificates that sign the client certificates"]
        return ctx, []

    def tls_context(self) -> ssl.SSLContext | None:
        """The server context now (raises :class:`TlsUnavailable` when the files cannot be loaded)."""
        ctx, problems = self._load_tls(None)
        if problems:
            raise TlsUnavailable("; ".join(problems))
        return ctx

    def tls_loader(self, name: str):
        """None without ``ssl``; else a function that loads the certificate and key where it is
        called (the source calls it at start, on its node) and raises :class:`TlsUnavailable`
        naming source ``name``, the key and what to do when it cannot."""
        if not self.ssl:
            return None

        def load() -> ssl.SSLContext:
            ctx, problems = self._load_tls(f"{self.type_name or 'network'} source '{name}'")
            if problems:
                raise TlsUnavailable("; ".join(problems))
            return ctx

        return load


class TlsUnavailable(RayflumeError):
    """A TLS source's certificate, key or client CA bundle cannot be loaded on its node."""


def resolve_tls(tls):
    """A source's ``tls`` argument as an SSLContext (or None): a loader from
    :meth:`TlsConfig.tls_loader` is called here, so call this at start, on the source's node."""
    return tls() if callable(tls) else tls


class ServerContext(ssl.SSLContext):
    """A server SSLContext that carries the client names :func:`peer_problem` accepts
    (``allowed_client_names``: lower-case names, or None for any verified client)."""

    allowed_client_names: frozenset[str] | None = None


def tls_server_context(certfile: str, keyfile: str | None = None, client_ca_file: str | None = None,
                       allowed_client_names=None) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or newer) from PEM certificate and key files; with
    ``client_ca_file``, clients must present a certificate that CA bundle verifies (see
    :func:`require_client_certificates`)."""
    ctx = ServerContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile, password=_no_password)
    if client_ca_file:
        require_client_certificates(ctx, client_ca_file, allowed_client_names)
    return ctx


def _no_password():
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's password.
    raise ValueError("the private key is encrypted; give an unencrypted PEM key (readable only by the "
                     "user that runs rayflume)")


def require_client_certificates(ctx: ServerContext, client_ca_file: str, allowed_client_names=None) -> None:
    """Make ``ctx`` demand a client certificate verified by the PEM bundle ``client_ca_file`` and, when
    ``allowed_client_names`` is given, carrying one of those names (checked by :func:`peer_problem`)."""
    ctx.load_verify_locations(cafile=client_ca_file)
    if not ctx.cert_store_stats()["x509"]:  # counts self-signed non-CA certificates too (pinned clients)
        raise ValueError("no certificate found in the file")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.allowed_client_names = (None if allowed_client_names is None
                                else frozenset(_norm(n) for n in allowed_client_names))


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def certificate_names(cert: dict) -> list[str]:
    """The subject common names and DNS subject alternative names of a decoded certificate
    (``SSLSocket.getpeercert()``), in that order."""
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    return names


def peer_problem(conn: ssl.SSLSocket) -> str | None:
    """Why the client of a finished handshake on ``conn`` must be refused, or None to serve it."""
    allowed = getattr(conn.context, "allowed_client_names", None)
    if allowed is None:
        return None
    cert = conn.getpeercert()
    if not cert:
        return "the client presented no certificate"
    names = certificate_names(cert)
    if any(_norm(n) in allowed for n in names):
        return None
    shown = ", ".join(repr(n) for n in names[:5]) or "none"
    return f"its certificate's names ({shown}) are not in ssl_allowed_client_names"


def unreadable_files(who: str, paths: dict, runs: str) -> list[str]:
    """A message for each of ``paths`` (key -> path or None) that cannot be read on this node;
    ``runs`` names what the node runs ("source", "sink")."""
    return [f"{who}: `{key}` {path!r} does not exist or is not readable on this node; put the file on every "
            f"node that runs this {runs}, or fix `{key}`"
            for key, path in paths.items() if path and not os.access(path, os.R_OK)]
