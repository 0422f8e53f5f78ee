"""What every network source shares: its configuration keys (:class:`NetworkSourceConfig`:
``bind`` 127.0.0.1, ``port``, ``allowed_clients``, ``buffer_bytes``), the counters they all report,
address helpers and reverse lookups of client addresses."""
from __future__ import annotations

import ipaddress
import socket
import threading

from pydantic import Field, field_validator

from rayflume.config_base import SourceConfig
from rayflume.sources._limits import LIMIT_COUNTERS, parse_networks

DEFAULT_BIND = "127.0.0.1"
DEFAULT_BUFFER_BYTES = 16 << 20

# Counters every network source reports (created at start so server threads never grow the dict
# while the actor iterates it for metrics).
CONNECTION_COUNTERS = ("OpenConnectionCount", "ConnectionAcceptedCount", "ConnectionRejectedCount",
                       "TlsHandshakeFailCount", "TlsClientRefusedCount", "EventRejectedCount") + LIMIT_COUNTERS


def _check_bind(component: str, value: str) -> str:
    if not value:
        raise ValueError(f"{component}: `bind` must be an address such as 127.0.0.1 (0.0.0.0 listens "
                         f"on every interface)")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not all(part and len(part) <= 63 for part in value.split(".")):
            raise ValueError(f"{component}: `bind` {value!r} is neither an IP address nor a host name")
    return value


class NetworkSourceConfig(SourceConfig):
    """Keys every network source shares (TCP ones add ``max_connections``). Not registered."""

    bind: str = Field(DEFAULT_BIND, description="Address to listen on. 127.0.0.1 by default: set "
                                                "0.0.0.0 (or an interface address) to accept remote clients.")
    port: int = Field(ge=0, le=65535, description="Port to listen on; 0 picks a free one (reported as "
                                                  "the BoundPort metric).")
    allowed_clients: list[str] = Field(
        default_factory=list, description="IP addresses or CIDR blocks allowed to send (connections or "
                                          "datagrams from elsewhere are refused and counted); empty: any.")
    buffer_bytes: int = Field(DEFAULT_BUFFER_BYTES, gt=0,
                              description="Most bytes received and not yet polled; when full, TCP "
                                          "readers stop reading (backpressure), UDP datagrams are "
                                          "dropped (counted) and HTTP requests get 503.")

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        return _check_bind(f"{cls.type_name or 'network'} source", v)

    @field_validator("allowed_clients")
    @classmethod
    def _allowed(cls, v):
        parse_networks(v, f"{cls.type_name or 'network'} source")
        return v


def is_loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return bind == "localhost"


def family_of(bind: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(bind).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


class HostnameCache:
    """Reverse DNS of client addresses, cached (bounded); the address itself when unresolvable."""

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()

    def lookup(self, ip: str) -> str:
        name = self._names.get(ip)
        if name is not None:
            return name
        try:
            name = socket.gethostbyaddr(ip)[0]
        except (OSError, UnicodeError):
            name = ip
        with self._lock:
            if len(self._names) >= self.max_entries:
                self._names.clear()
            self._names[ip] = name
        return name
