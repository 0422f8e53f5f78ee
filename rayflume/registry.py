"""Registry of component types by their YAML ``type`` name.

Each component module declares its typed config class and registers it next to the class::

    @register("source", "sequence")
    class SequenceSourceConfig(SourceConfig): ...

Built-in components are imported lazily the first time a kind is looked up, so importing
``rayflume`` stays cheap.

Components of one's own (as Flume takes a class name) come in three ways, all resolved by
:func:`lookup`; what they name is always a *config class*, exactly like a built-in one:

- an import path ``package.module:ConfigClass`` as the ``type`` (any kind; for interceptors a path
  to a plain function or class is still a callable interceptor, see
  :mod:`rayflume.interceptors.callable`);
- the name of an entry point of the group ``rayflume.components`` (:data:`ENTRY_POINT_GROUP`) of an
  installed distribution, whose value is ``module:ConfigClass``;
- from Python, the config class itself as the ``type`` of a component mapping.

The config class must subclass the kind's base in :mod:`rayflume.config_base` (``SourceConfig``,
``SinkConfig``, ``ChannelConfig``, ``SelectorConfig``, ``ProcessorConfig``,
``InterceptorConfig``) and implement ``build()``, which returns the running component (a
:class:`~rayflume.sources.base.Source`, :class:`~rayflume.sinks.base.Sink`, ...). Its pydantic
fields are the component's keys, validated as a built-in's are. It must not redeclare ``type``:
the config carries the type as written (the import path, the entry point's name, or
``module:QualifiedName`` for a class object). A type naming user code that cannot be used (module
or attribute missing, wrong base class, no ``build()``) is a :class:`ComponentTypeError` saying
what to do.

Flume's names for the same components are accepted too: its aliases (``TAILDIR``, ``seq``,
``syslogtcp``, ``SPILLABLEMEMORY``; case-insensitive, as in Flume) and its class names
(``org.apache.flume.source.taildir.TaildirSource``). :data:`FLUME_TYPES` is the one table of them;
:func:`lookup` resolves them and :func:`canonical_type` says which rayflume type a name stands for
(and the keys a Flume type implies, such as ``protocol: udp`` for ``netcatudp``). Lists of types
shown to users (:func:`known_types`) keep rayflume's own names.
"""
from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import importlib.metadata
import inspect
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

from rayflume import config_base

KINDS = ("source", "channel", "sink", "interceptor", "selector", "processor")

# Modules that hold the built-in components of each kind.
# Where each built-in type is registered: an actor imports only the modules of the types it runs
# (an agent's taildir actor never loads Kafka, Avro, Thrift, HTTP or syslog parsing); anything else
# (Flume's names, user types, listings for messages) loads every built-in of the kind.
_BUILTIN_TYPES: dict[str, dict[str, str]] = {
    "source": {"sequence": "rayflume.sources.sequence", "exec": "rayflume.sources.exec",
               "taildir": "rayflume.sources.taildir", "spooldir": "rayflume.sources.spooldir",
               "syslog_tcp": "rayflume.sources.syslog", "syslog_udp": "rayflume.sources.syslog",
               "http": "rayflume.sources.http", "netcat": "rayflume.sources.netcat",
               "kafka": "rayflume.sources.kafka", "rayflume": "rayflume.sources.rayflume",
               "avro": "rayflume.sources.avro", "thrift": "rayflume.sources.thrift"},
    "channel": {"memory": "rayflume.channels.memory", "null": "rayflume.channels.null",
                "file": "rayflume.channels.file", "spillable": "rayflume.channels.spillable",
                "kafka": "rayflume.channels.kafka"},
    "sink": {"logger": "rayflume.sinks.logger", "null": "rayflume.sinks.null", "file_roll": "rayflume.sinks.file_roll",
             "hdfs": "rayflume.sinks.hdfs", "kafka": "rayflume.sinks.kafka", "http": "rayflume.sinks.http",
             "rayflume": "rayflume.sinks.rayflume", "avro": "rayflume.sinks.avro", "thrift": "rayflume.sinks.thrift"},
    "interceptor": {"host": "rayflume.interceptors.builtin", "remove_header": "rayflume.interceptors.builtin",
                    "static": "rayflume.interceptors.builtin", "timestamp": "rayflume.interceptors.builtin",
                    "uuid": "rayflume.interceptors.builtin", "regex_extractor": "rayflume.interceptors.regex",
                    "regex_filter": "rayflume.interceptors.regex", "search_replace": "rayflume.interceptors.regex"},
    "selector": {"multiplexing": "rayflume.selectors", "replicating": "rayflume.selectors"},
    "processor": {"default": "rayflume.processors", "failover": "rayflume.processors",
                  "load_balance": "rayflume.processors"},
}
# The test components (in-memory sources and sinks, a flaky sink) register when rayflume.testing is
# imported. They are not built-ins: a topology naming one imports that module (in the actor too),
# but lists of types shown to users (known_types: error messages, `rayflume describe`) leave them out.
TESTING_MODULE = "rayflume.testing"
_TESTING_TYPES = {"source": ("testing_source", "testing_feed"), "sink": ("testing_sink", "flaky_sink")}
# Modules that register no type of the table but must load with the kind's built-ins.
_OTHER_BUILTIN_MODULES = {"interceptor": ["rayflume.interceptors.callable"]}

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
        setattr(cls, "type_name", type_name)  # T is any class: mypy cannot know the attribute
        return cls

    return decorate


def _load_builtins(kind: str) -> None:
    if kind in _loaded:
        return
    _loaded.add(kind)
    for module in [*dict.fromkeys(_BUILTIN_TYPES[kind].values()), *_OTHER_BUILTIN_MODULES.get(kind, [])]:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # A built-in module that is not written yet is simply absent; anything else is a bug.
            if exc.name != module:
                raise


def lookup(kind: str, type_name, strict: bool = False) -> type | None:
    """The config class of ``kind`` components of type ``type_name``, or None when there is none.

    ``type_name`` is a rayflume type, Flume's alias or class name for one, an import path
    ``package.module:ConfigClass``, the name of a ``rayflume.components`` entry point, or a config
    class itself. With ``strict``, a type naming user code that cannot be used raises
    :class:`ComponentTypeError` saying why and what to do; otherwise it is None, like an unknown
    name. An interceptor's import path that names no config class is None (it is a callable
    interceptor's, see :mod:`rayflume.interceptors.callable`)."""
    try:
        return _resolve(kind, type_name)
    except ComponentTypeError:
        if strict:
            raise
        return None


def _builtin(kind: str, type_name: str) -> type | None:
    """The built-in config class named ``type_name`` exactly, importing only its module."""
    module = _BUILTIN_TYPES[kind].get(type_name)
    if module is None and type_name in _TESTING_TYPES.get(kind, ()):
        module = TESTING_MODULE
    if module is None:
        return None
    importlib.import_module(module)
    return _registry[kind].get(type_name)


def _resolve(kind: str, type_name) -> type | None:
    if isinstance(type_name, str):
        cls = _builtin(kind, type_name)
        if cls is not None:
            return cls
    _load_builtins(kind)
    if isinstance(type_name, type):
        return check_config_class(kind, type_name, f"{kind} type {type_label(type_name)!r}")
    if not isinstance(type_name, str):
        return None
    cls = _registry[kind].get(type_name)
    if cls is None:
        flume = flume_type(kind, type_name)
        if flume is not None:
            cls = _registry[kind].get(flume.rayflume_type)
    if cls is not None:
        return cls
    if ":" in type_name:
        return _from_import_path(kind, type_name)
    return _from_entry_point(kind, type_name)


class ComponentTypeError(ValueError):
    """A component type naming user code (an import path, an entry point, a class) that cannot be
    used as a component of its kind; the message names the type and says what to do."""


CONFIG_BASES: dict[str, type] = {
    "source": config_base.SourceConfig, "channel": config_base.ChannelConfig, "sink": config_base.SinkConfig,
    "interceptor": config_base.InterceptorConfig, "selector": config_base.SelectorConfig,
    "processor": config_base.ProcessorConfig,
}
# What each kind's build() takes and returns, for messages.
_BUILD = {"source": ("build(name)", "rayflume.sources.base.Source"),
          "channel": ("build(name)", "rayflume.channels.base.Channel"),
          "sink": ("build(name)", "rayflume.sinks.base.Sink"),
          "interceptor": ("build()", "rayflume.interceptors.base.Interceptor"),
          "selector": ("build(channels)", "rayflume.selectors.base.ChannelSelector"),
          "processor": ("build(sinks)", "rayflume.processors.base.SinkProcessor")}
_SECTIONS = {"source": "sources", "channel": "channels", "sink": "sinks", "interceptor": "a source's interceptors",
             "selector": "a source's selector", "processor": "a sink group's processor"}
_RUNTIME_MODULES = {"source": "rayflume.sources.base", "channel": "rayflume.channels.base",
                    "sink": "rayflume.sinks.base", "interceptor": "rayflume.interceptors.base",
                    "selector": "rayflume.selectors.base", "processor": "rayflume.processors.base"}


def type_label(type_name) -> str:
    """How messages and a component's config name a type: a class object as
    ``module:QualifiedName``, anything else as written."""
    if isinstance(type_name, type):
        return f"{type_name.__module__}:{type_name.__qualname__}"
    return str(type_name)


def _contract(kind: str) -> str:
    build, returns = _BUILD[kind]
    base = CONFIG_BASES[kind].__name__
    return (f"a {kind} type names a subclass of rayflume.config_base.{base} whose fields are the {kind}'s keys "
            f"and whose {build} returns the running {kind} (a {returns})")


def check_config_class(kind: str, cls, what: str) -> type:
    """``cls`` if it is a usable config class of ``kind``; else ComponentTypeError naming ``what``."""
    base = CONFIG_BASES[kind]
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise ComponentTypeError(f"{what}: {_what_it_is(kind, cls)}; {_contract(kind)}")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ()))) or "build"
        raise ComponentTypeError(f"{what}: {cls.__qualname__} does not implement {missing}; define "
                                 f"{_BUILD[kind][0]} returning the running {kind} (a {_BUILD[kind][1]})")
    return cls


def _what_it_is(kind: str, obj) -> str:
    """What a wrong target is, in words that point at the usual mistake."""
    if isinstance(obj, type):
        for other, base in CONFIG_BASES.items():
            if issubclass(obj, base):
                return (f"{obj.__qualname__} is a {other} config class, not a {kind} one; use it under "
                        f"{_SECTIONS[other]}")
        runtime = sys.modules.get(_RUNTIME_MODULES[kind])
        runtime_base = getattr(runtime, _BUILD[kind][1].rsplit(".", 1)[1], None) if runtime else None
        if isinstance(runtime_base, type) and issubclass(obj, runtime_base):
            return (f"{obj.__qualname__} is the running {kind} itself; name its config class, whose "
                    f"{_BUILD[kind][0]} returns it")
        return f"{obj.__qualname__} is not a rayflume config class"
    return f"it is a {type(obj).__name__}, not a class"


# -- user code: import paths and the directories of a topology's runtime_env -------------------------
_code_dirs: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("rayflume_code_dirs", default=())


@contextlib.contextmanager
def code_dirs(dirs) -> Iterator[None]:
    """While inside, a module an import path names that is not importable as is is also looked for
    in ``dirs`` (the local directories a topology ships in its runtime_env), so a topology is
    validated on the machine that deploys it as it will run on the cluster."""
    token = _code_dirs.set(tuple(dirs))
    try:
        yield
    finally:
        _code_dirs.reset(token)


def import_module(module_name: str):
    """``importlib.import_module``, retried with :func:`code_dirs` on ``sys.path`` when the module
    itself (not something it imports) is missing. A module found there stays imported."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        dirs = [d for d in _code_dirs.get() if d not in sys.path]
        missing_own = exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + "."))
        if not dirs or not missing_own:
            raise
    sys.path[:0] = dirs
    try:
        importlib.invalidate_caches()
        return importlib.import_module(module_name)
    finally:
        for d in dirs:
            if d in sys.path:
                sys.path.remove(d)


_SHIP_IT = ("put its directory on PYTHONPATH where the topology is validated, and ship it to the cluster with "
            "the topology's `runtime_env: {py_modules: [package dir]}` or `runtime_env: {working_dir: dir}` "
            "(or install its package on every node)")


def _from_import_path(kind: str, path: str) -> type | None:
    """The config class ``package.module:ConfigClass`` names (``ConfigClass`` may be dotted)."""
    what = f"{kind} type {path!r}"
    module_name, _, attr_path = (part.strip() for part in path.partition(":"))
    if path.count(":") != 1 or not module_name or not attr_path:
        if kind == "interceptor":
            return None  # the callable interceptor says what is wrong with it
        raise ComponentTypeError(f"{what}: an import path has the form 'package.module:ConfigClass'")
    try:
        module = import_module(module_name)
    except Exception as exc:
        if kind == "interceptor":
            return None
        if isinstance(exc, ModuleNotFoundError) and exc.name and (
                module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ComponentTypeError(f"{what}: cannot import module {module_name!r} ({exc}); {_SHIP_IT}") from None
        raise ComponentTypeError(f"{what}: importing module {module_name!r} failed with {type(exc).__name__}: "
                                 f"{exc}; fix the module (a package it needs goes in runtime_env.pip)") from None
    target = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            if kind == "interceptor":
                return None
            candidates = _config_classes_in(kind, module)
            hint = difflib.get_close_matches(part, candidates, n=1, cutoff=0.6)
            listed = (f"; {kind} config classes in it: {', '.join(candidates)}" if candidates
                      else f"; it defines no {kind} config class")
            raise ComponentTypeError(f"{what}: module {module_name!r} has no attribute {attr_path!r}"
                                     f"{f' (did you mean {hint[0]!r}?)' if hint else ''}{listed}. Check the name, "
                                     f"and that the module found ({getattr(module, '__file__', '?')}) is the "
                                     f"version that defines it")
        target = getattr(target, part)
    if kind == "interceptor" and not (isinstance(target, type) and issubclass(target, config_base.ComponentConfig)):
        return None  # a function or a plain class: a callable interceptor
    return check_config_class(kind, target, what)


def _config_classes_in(kind: str, module) -> list[str]:
    base = CONFIG_BASES[kind]
    return sorted(n for n, v in vars(module).items()
                  if isinstance(v, type) and issubclass(v, base) and v is not base and not inspect.isabstract(v))


# -- installed distributions: entry points -----------------------------------------------------------
ENTRY_POINT_GROUP = "rayflume.components"


def _distribution_of(ep) -> str:
    dist = getattr(ep, "dist", None)
    return f"distribution {dist.metadata['Name']!r}" if dist is not None else "an installed distribution"


def _from_entry_point(kind: str, name: str) -> type | None:
    """The config class of the ``rayflume.components`` entry point ``name`` of this kind, or None
    when no installed distribution declares one. Entry points of the same name for other kinds
    (a ``numbered`` source and a ``numbered`` sink) are told apart by their base class."""
    found = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        return None
    fitting, others = [], []
    for ep in found:
        what = f"{kind} type {name!r} (entry point {ep.value!r} of {_distribution_of(ep)})"
        try:
            target = ep.load()
        except Exception as exc:
            raise ComponentTypeError(f"{what}: loading it failed with {type(exc).__name__}: {exc}; reinstall "
                                     f"the distribution where the topology is validated and on every node, "
                                     f"or fix its entry point") from None
        if isinstance(target, type) and issubclass(target, CONFIG_BASES[kind]):
            fitting.append((ep, check_config_class(kind, target, what)))
        else:
            others.append((what, target))
    if len(fitting) > 1:
        raise ComponentTypeError(f"{kind} type {name!r} is declared by several entry points "
                                 f"({', '.join(f'{ep.value} of {_distribution_of(ep)}' for ep, _ in fitting)}); "
                                 f"uninstall one, or write the import path of the one meant as the type")
    if fitting:
        return fitting[0][1]
    # the name is declared, but not for this kind: say what it is (a sink used as a source, say)
    what, target = others[0]
    raise ComponentTypeError(f"{what}: {_what_it_is(kind, target)}; {_contract(kind)}")


def entry_point_types(kind: str) -> list[str]:
    """Names of the installed ``rayflume.components`` entry points that load as ``kind`` config
    classes (for lists of known types in messages); one that fails to load is left out."""
    out = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = ep.load()
        except Exception:
            continue
        if isinstance(target, type) and issubclass(target, CONFIG_BASES[kind]) and ep.name not in out:
            out.append(ep.name)
    return sorted(out)


def canonical_type(kind: str, type_name: str) -> tuple[str, dict]:
    """``(rayflume type, keys implied)`` for a type as written: ``("taildir", {})`` for
    ``TAILDIR``, ``("netcat", {"protocol": "udp"})`` for ``netcatudp``; a name that is no Flume
    name comes back as it is, with no implied keys."""
    if isinstance(type_name, str) and type_name in _BUILTIN_TYPES[kind]:
        return type_name, {}
    _load_builtins(kind)
    if isinstance(type_name, type):
        return type_label(type_name), {}
    if not isinstance(type_name, str) or type_name in _registry[kind]:
        return type_name, {}
    flume = flume_type(kind, type_name)
    if flume is None:
        return type_name, {}
    return flume.rayflume_type, dict(flume.implied)


def known_types(kind: str) -> list[str]:
    """The types of ``kind`` to show users: built-in ones and any registered since, but not the
    test components of :mod:`rayflume.testing`."""
    _load_builtins(kind)
    return sorted(name for name, cls in _registry[kind].items() if cls.__module__ != TESTING_MODULE)


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
    canonical, _ = canonical_type(kind, type_name)
    cls = lookup(kind, type_name)
    declared = tuple(getattr(cls, "resolves_references", ()) or ())
    return SELF_RESOLVED_KEYS.get((kind, canonical), ()) + declared
