"""Registry of component types by their YAML ``type`` name.

Each component module declares its typed config class and registers it next to the class::

    @register("source", "sequence")
    class SequenceSourceConfig(SourceConfig): ...

Built-in components are imported lazily the first time a kind is looked up, so importing
``rayflume`` stays cheap. An interceptor's type may also be a Python import path
(``package.module:function``), resolved by :mod:`rayflume.interceptors.callable`.

Flume's names for the same components are accepted too: its aliases (``TAILDIR``, ``seq``,
``syslogtcp``, ``SPILLABLEMEMORY``; case-insensitive, as in Flume) and its class names
(``org.apache.flume.source.taildir.TaildirSource``). :data:`FLUME_TYPES` is the one table of them;
:func:`lookup` resolves them and :func:`canonical_type` says which rayflume type a name stands for
(and the keys a Flume type implies, such as ``protocol: udp`` for ``netcatudp``). Lists of types
shown to users (:func:`known_types`) keep rayflume's own names.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, TypeVar

KINDS = ("source", "channel", "sink", "interceptor", "selector", "processor")

# Modules that hold the built-in components of each kind.
_BUILTIN_MODULES = {
    "source": ["rayflume.sources.sequence", "rayflume.sources.exec", "rayflume.sources.taildir",
               "rayflume.sources.spooldir", "rayflume.sources.syslog", "rayflume.sources.http",
               "rayflume.sources.netcat", "rayflume.sources.kafka", "rayflume.sources.rayflume",
               "rayflume.sources.avro", "rayflume.sources.thrift", "rayflume.testing"],
    "channel": ["rayflume.channels.memory", "rayflume.channels.null", "rayflume.channels.file",
                "rayflume.channels.spillable", "rayflume.channels.kafka"],
    "sink": ["rayflume.sinks.logger", "rayflume.sinks.null", "rayflume.sinks.file_roll", "rayflume.sinks.hdfs",
             "rayflume.sinks.kafka", "rayflume.sinks.http", "rayflume.sinks.rayflume", "rayflume.sinks.avro",
             "rayflume.sinks.thrift", "rayflume.testing"],
    "interceptor": ["rayflume.interceptors.builtin", "rayflume.interceptors.regex",
                    "rayflume.interceptors.callable"],
    "selector": ["rayflume.selectors"],
    "processor": ["rayflume.processors"],
}

_registry: dict[str, dict[str, type]] = {k: {} for k in KINDS}
_loaded: set[str] = set()

T = TypeVar("T", bound=type)


def register(kind: str, type_name: str) -> Callable[[T], T]:
    """Class decorator: make ``cls`` the config class of ``kind`` components named ``type_name``."""
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; expected one of {KINDS}")

    def decorate(cls: T) -> T:
        existing = _registry[kind].get(type_name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"{kind} type {type_name!r} is registered twice ({existing} and {cls})")
        _registry[kind][type_name] = cls
        cls.type_name = type_name
        return cls

    return decorate


def _load_builtins(kind: str) -> None:
    if kind in _loaded:
        return
    _loaded.add(kind)
    for module in _BUILTIN_MODULES[kind]:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # A built-in module that is not written yet is simply absent; anything else is a bug.
            if exc.name != module:
                raise


def lookup(kind: str, type_name: str) -> type | None:
    """The config class registered for ``type_name`` (a rayflume type, or Flume's alias or class
    name for it), or None when there is none."""
    _load_builtins(kind)
    cls = _registry[kind].get(type_name)
    if cls is None and isinstance(type_name, str):
        flume = flume_type(kind, type_name)
        if flume is not None:
            cls = _registry[kind].get(flume.rayflume_type)
    return cls


def canonical_type(kind: str, type_name: str) -> tuple[str, dict]:
    """``(rayflume type, keys implied)`` for a type as written: ``("taildir", {})`` for
    ``TAILDIR``, ``("netcat", {"protocol": "udp"})`` for ``netcatudp``; a name that is no Flume
    name comes back as it is, with no implied keys."""
    _load_builtins(kind)
    if type_name in _registry[kind]:
        return type_name, {}
    flume = flume_type(kind, type_name)
    if flume is None:
        return type_name, {}
    return flume.rayflume_type, dict(flume.implied)


def known_types(kind: str) -> list[str]:
    _load_builtins(kind)
    return sorted(_registry[kind])


# -- Flume's names -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlumeType:
    """One Flume component type that a rayflume type stands in for: Flume's alias (None where Flume
    has none, as for Kafka), its class names, and the keys the Flume type implies in rayflume
    (``netcatudp`` is rayflume's netcat source with ``protocol: udp``)."""

    kind: str
    rayflume_type: str
    alias: str | None
    classes: tuple[str, ...]
    implied: tuple[tuple[str, object], ...] = field(default=())

    @property
    def flume_name(self) -> str:
        """How Flume's documentation names the type: its alias, else its class."""
        return self.alias or self.classes[0]

    def names(self) -> tuple[str, ...]:
        return ((self.alias,) if self.alias else ()) + self.classes


def _t(kind, rayflume_type, alias, *classes, implied=()):
    return FlumeType(kind, rayflume_type, alias, tuple(classes), tuple(implied))


_S, _C, _K = "org.apache.flume.source.", "org.apache.flume.channel.", "org.apache.flume.sink."
_I = "org.apache.flume.interceptor."
FLUME_TYPES: tuple[FlumeType, ...] = (
    _t("source", "avro", "avro", _S + "AvroSource"),
    _t("source", "thrift", "thrift", _S + "ThriftSource"),
    _t("source", "exec", "exec", _S + "ExecSource"),
    _t("source", "spooldir", "spooldir", _S + "SpoolDirectorySource"),
    _t("source", "taildir", "TAILDIR", _S + "taildir.TaildirSource"),
    _t("source", "netcat", "netcat", _S + "NetcatSource"),
    _t("source", "netcat", "netcatudp", _S + "NetcatUdpSource", implied=(("protocol", "udp"),)),
    _t("source", "sequence", "seq", _S + "SequenceGeneratorSource"),
    _t("source", "syslog_tcp", "syslogtcp", _S + "SyslogTcpSource"),
    _t("source", "syslog_udp", "syslogudp", _S + "SyslogUDPSource"),
    _t("source", "http", "http", _S + "http.HTTPSource"),
    _t("source", "kafka", None, _S + "kafka.KafkaSource"),
    _t("channel", "memory", "memory", _C + "MemoryChannel"),
    _t("channel", "file", "file", _C + "file.FileChannel"),
    _t("channel", "spillable", "SPILLABLEMEMORY", _C + "SpillableMemoryChannel"),
    _t("channel", "kafka", None, _C + "kafka.KafkaChannel"),
    _t("sink", "hdfs", "hdfs", _K + "hdfs.HDFSEventSink"),
    _t("sink", "logger", "logger", _K + "LoggerSink"),
    _t("sink", "avro", "avro", _K + "AvroSink"),
    _t("sink", "thrift", "thrift", _K + "ThriftSink"),
    _t("sink", "file_roll", "file_roll", _K + "RollingFileSink"),
    _t("sink", "null", "null", _K + "NullSink"),
    _t("sink", "kafka", None, _K + "kafka.KafkaSink"),
    _t("sink", "http", "http", _K + "http.HttpSink"),
    _t("interceptor", "timestamp", "timestamp", _I + "TimestampInterceptor$Builder"),
    _t("interceptor", "host", "host", _I + "HostInterceptor$Builder"),
    _t("interceptor", "static", "static", _I + "StaticInterceptor$Builder"),
    _t("interceptor", "remove_header", "remove_header", _I + "RemoveHeaderInterceptor$Builder"),
    _t("interceptor", "uuid", None, "org.apache.flume.sink.solr.morphline.UUIDInterceptor$Builder"),
    _t("interceptor", "regex_filter", "regex_filter", _I + "RegexFilteringInterceptor$Builder"),
    _t("interceptor", "regex_extractor", "regex_extractor", _I + "RegexExtractorInterceptor$Builder"),
    _t("interceptor", "search_replace", "search_replace", _I + "SearchAndReplaceInterceptor$Builder"),
    _t("selector", "replicating", "replicating", _C + "ReplicatingChannelSelector"),
    _t("selector", "multiplexing", "multiplexing", _C + "MultiplexingChannelSelector"),
    _t("processor", "default", "default", _K + "DefaultSinkProcessor"),
    _t("processor", "failover", "failover", _K + "FailoverSinkProcessor"),
    _t("processor", "load_balance", "load_balance", _K + "LoadBalancingSinkProcessor"),
)

# Flume matches aliases whatever their case (`TAILDIR`, `taildir`) and class names exactly.
_FLUME_BY_NAME: dict[tuple[str, str], FlumeType] = {}
for _flume in FLUME_TYPES:
    if _flume.alias:
        _FLUME_BY_NAME[(_flume.kind, _flume.alias.lower())] = _flume
    for _cls in _flume.classes:
        _FLUME_BY_NAME[(_flume.kind, _cls)] = _flume


def flume_type(kind: str, name: str) -> FlumeType | None:
    """The Flume type ``name`` (an alias in any case, or a class name) stands for, or None."""
    if not isinstance(name, str):
        return None
    return _FLUME_BY_NAME.get((kind, name)) or _FLUME_BY_NAME.get((kind, name.lower()))


# Keys whose ``${env:NAME}`` / ``${file:PATH}`` references the component reads itself, on its node,
# when it starts: they stay as written in the topology (the secret never enters the stored spec).
# Every other reference in a topology file is substituted when the file is loaded. A component can
# also declare its own with a class attribute ``resolves_references = ("key", ...)``.
SELF_RESOLVED_KEYS: dict[tuple[str, str], tuple[str, ...]] = {
    ("source", "http"): ("auth_token", "auth_tokens"),
}


def self_resolved_keys(kind: str, type_name: str) -> tuple[str, ...]:
    """The keys of a ``kind`` component of type ``type_name`` that it resolves itself at start."""
    canonical, _ = canonical_type(kind, type_name) if isinstance(type_name, str) else (type_name, {})
    cls = lookup(kind, canonical) if isinstance(canonical, str) else None
    declared = tuple(getattr(cls, "resolves_references", ()) or ())
    return SELF_RESOLVED_KEYS.get((kind, canonical), ()) + declared
