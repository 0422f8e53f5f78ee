"""What an entry of the Flume mapping table is, and the pieces several component kinds share.

A :class:`ComponentMapping` per Flume component type holds a :class:`Prop` per documented Flume
property: the rayflume key it becomes and the :class:`Conversion` of its value (:data:`AUTO`: as
the rayflume field's type; :data:`MS`: milliseconds to seconds; :func:`enum`: Flume's spellings to
rayflume's), or, when there is no equivalent, why and what to do instead (:func:`no`). A value
that cannot be carried over raises :class:`Unusable`. The shared pieces: the reasons Java-only
settings (keystores, TLS tuning, Kerberos, Java Kafka client keys) have no equivalent, the Kafka
client pass-through (:func:`kafka_passthrough`) and the Kafka producer's ``acks`` check.
"""
from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from typing import Any, Callable

from rayflume import registry


class Unusable(Exception):
    """The property's value cannot be carried over and the topology would not do what the Flume
    agent did; the message says what to do (an error)."""


@dataclass(frozen=True)
class Conversion:
    """How a Flume value (a string) becomes a rayflume value. ``doc`` says it in the docs."""

    doc: str
    fn: Callable[[str, Any], Any]  # (value, the rayflume field's annotation or None) -> value

    def __call__(self, value: str, annotation=None):
        return self.fn(value, annotation)


def _bool(value: str) -> bool:
    text = value.strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _number(value: str) -> float | int:
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None


def _tokens(value: str) -> list[str]:
    return [t for t in re.split(r"[\s,]+", value.strip()) if t]


def _auto(value: str, annotation) -> Any:
    """``value`` as the type the rayflume field declares (a string when unknown)."""
    args = set(typing.get_args(annotation)) or {annotation}
    origins = {typing.get_origin(a) or a for a in args} - {type(None)}
    if str in origins or not origins:
        return value
    if origins == {bool}:
        return _bool(value)
    if int in origins and float not in origins:
        number = _number(value)
        if isinstance(number, float) and not number.is_integer():
            raise ValueError(f"expected a whole number, got {value!r}")
        return int(number)
    if float in origins:
        return _number(value)
    if list in origins:
        return _tokens(value)
    return value


AUTO = Conversion("", _auto)
AS_IS = Conversion("", lambda v, a: v)
MS = Conversion("milliseconds / 1000", lambda v, a: _number(v) / 1000)
SECONDS = Conversion("seconds", lambda v, a: _number(v))
LIST = Conversion("space-separated names -> list", lambda v, a: v.split())
COMMA_LIST = Conversion("comma-separated -> list", lambda v, a: [t.strip() for t in v.split(",") if t.strip()])
INT = Conversion("", lambda v, a: int(_number(v)))


def enum(values: dict[str, Any], otherwise: str) -> Conversion:
    """Flume's spellings (any case) -> rayflume's; any other value is :class:`Unusable` with
    ``otherwise`` as what to do."""
    lowered = {k.lower(): v for k, v in values.items()}

    def convert(value: str, annotation):
        key = value.strip().lower()
        if key not in lowered:
            raise Unusable(f"{value!r} has no rayflume equivalent; {otherwise}")
        return lowered[key]

    shown = ", ".join(f"{k} -> {v}" for k, v in values.items())
    return Conversion(shown, convert)


@dataclass(frozen=True)
class Prop:
    """One Flume property. ``key`` None: it has no equivalent; ``why`` says why and what to do,
    and ``error`` makes using it an error (the topology would not do what the agent did) rather
    than a warning; but a ``key`` None with a conversion other than AUTO is a property whose
    accepted values need no key (Flume's default behaviour is rayflume's), checked by the
    conversion. With a key, ``why`` is an optional note for the docs."""

    flume: str
    key: str | None
    conv: Conversion = AUTO
    why: str = ""
    error: bool = False
    doc: str = ""  # the key's meaning when its component config is not available to describe it

    def match(self, name: str) -> list[str] | None:
        """The ``*`` captures if this property's Flume key matches ``name``, else None."""
        if "*" not in self.flume:
            return [] if name == self.flume else None
        parts = [re.escape(p) for p in self.flume.split("*")]
        pattern = "".join(p + ("([^.]+)" if i < len(parts) - 2 else "(.+)") for i, p in enumerate(parts[:-1]))
        m = re.fullmatch(pattern + parts[-1], name)
        return list(m.groups()) if m else None


@dataclass(frozen=True)
class ComponentMapping:
    """The properties of one Flume component type and what they become in rayflume.

    Flume types with no rayflume equivalent are in :data:`~rayflume.flume_conf.mapping.UNSUPPORTED` instead.
    ``flume_defaults`` are ``(key, value, why)`` set when the Flume
    file does not set the key, where Flume's default differs from rayflume's in a way that changes
    what the agent does. ``finish`` reshapes what the properties gave (``(mapping, warn)`` ->
    None; ``warn(message)`` reports a problem, raising :class:`Unusable` is an error)."""

    kind: str
    flume: str
    rayflume_type: str
    props: tuple[Prop, ...] = ()
    flume_defaults: tuple[tuple[str, Any, str], ...] = ()
    finish: Callable[[dict, Callable[[str], None]], None] | None = None
    scratch: tuple[str, ...] = ()  # keys the properties fill for ``finish`` only, not rayflume keys

    @property
    def implied(self) -> dict:
        """Keys the Flume type implies in rayflume (the registry's: ``protocol: udp`` for netcatudp)."""
        flume = registry.flume_type(self.kind, self.flume)
        return dict(flume.implied) if flume is not None else {}

    def find(self, name: str) -> tuple[Prop, list[str]] | None:
        """The table's entry for property ``name`` (exact keys before patterns), with its captures."""
        for prop in sorted(self.props, key=lambda p: ("*" in p.flume, -len(p.flume))):
            captures = prop.match(name)
            if captures is not None:
                return prop, captures
        return None


def no(flume: str, why: str, error: bool = False) -> Prop:
    """A Flume property with no rayflume equivalent."""
    return Prop(flume, None, why=why, error=error)


# -- shared pieces ---------------------------------------------------------------------------------
PEM_KEYSTORE = ("rayflume reads PEM files, not Java keystores: convert the keystore to PEM (keytool -importkeystore "
                "-deststoretype PKCS12, then openssl pkcs12 -nodes) and set ssl_certfile/ssl_keyfile")
PEM_TRUSTSTORE = ("rayflume reads PEM files, not Java truststores: export the CA certificates to PEM (keytool "
                  "-exportcert -rfc) and set ssl_ca_file")
JAVA_TLS_TUNING = ("rayflume uses Python's TLS defaults (TLS 1.2 or later, the system's cipher policy); there is "
                   "no per-component protocol or cipher list: remove it")
KERBEROS_RPC = ("no equivalent yet: the thrift source and sink speak Thrift without SASL/Kerberos; protect the hop "
                "with TLS (ssl, ssl_client_ca_file for client certificates) instead")
KEEP_ALIVE = ("a put into a full rayflume channel fails at once and the source retries (backpressure) rather than "
              "waiting keep-alive seconds; remove it")
BYTE_BUFFER = ("rayflume's byte_capacity counts the events' Arrow buffers with no headroom percentage; size "
               "byte_capacity for it")
JAVA_KAFKA_CLIENT = {
    "key.serializer": "rayflume's Kafka client (librdkafka) sends bytes; remove it",
    "value.serializer": "rayflume's Kafka client (librdkafka) sends bytes; remove it",
    "key.deserializer": "rayflume's Kafka client (librdkafka) reads bytes; remove it",
    "value.deserializer": "rayflume's Kafka client (librdkafka) reads bytes; remove it",
    "ssl.truststore.location": "librdkafka reads PEM: export the truststore's CAs to PEM and set ssl.ca.location",
    "ssl.truststore.password": "librdkafka reads PEM: export the truststore's CAs to PEM and set ssl.ca.location",
    "ssl.truststore.type": "librdkafka reads PEM: export the truststore's CAs to PEM and set ssl.ca.location",
    "ssl.keystore.location": ("librdkafka reads PEM: convert the keystore and set ssl.certificate.location and "
                              "ssl.key.location"),
    "ssl.keystore.password": ("librdkafka reads PEM: convert the keystore and set ssl.certificate.location and "
                              "ssl.key.location"),
    "ssl.keystore.type": ("librdkafka reads PEM: convert the keystore and set ssl.certificate.location and "
                          "ssl.key.location"),
    "ssl.key.password": "librdkafka's equivalent is ssl.key.password of a PEM key; set it with ssl.key.location",
    "sasl.jaas.config": "librdkafka takes no JAAS file: set sasl.username and sasl.password (PLAIN/SCRAM) instead",
    "sasl.kerberos.service.name": "set librdkafka's sasl.kerberos.service.name and sasl.kerberos.keytab instead",
    "partitioner.class": "Java partitioners do not run here; librdkafka's `partitioner` property names a built-in one",
    "interceptor.classes": "Java client interceptors do not run here; remove it",
}


def _kafka_client(value: str, annotation) -> str:
    return value


KAFKA_CLIENT = Conversion("passed through to librdkafka as written", _kafka_client)


def kafka_passthrough(prefix: str, key: str, what: str) -> tuple[Prop, ...]:
    """``kafka.<prefix>.*`` into the component's ``key`` map, with the Java-only client keys reported."""
    props = [Prop(f"kafka.{prefix}.*", f"{key}.*", KAFKA_CLIENT,
                  why=f"Kafka {what} properties, passed to librdkafka, which validates them when the component starts")]
    props += [no(f"kafka.{prefix}.{k}", why) for k, why in JAVA_KAFKA_CLIENT.items()]
    return tuple(props)


def _kafka_acks(mapping: dict, warn) -> None:
    """Flume's Java producer with ``acks`` other than all is not idempotent; librdkafka's is unless
    told otherwise, and refuses such acks: keep Flume's behaviour and say what it costs."""
    producer = mapping.get("producer") or {}
    acks = str(producer.get("acks", "all")).strip().lower()
    if acks not in ("all", "-1") and "enable.idempotence" not in producer:
        producer["enable.idempotence"] = "false"
        warn(f"kafka.producer.acks = {acks}: kept, with producer.enable.idempotence: false (as Flume's producer); "
             f"acks other than all can lose acknowledged events: set kafka.producer.acks = all to avoid it")
