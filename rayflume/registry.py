"""Registry of component types by their YAML ``type`` name.

Each component module declares its typed config class and registers it next to the class::

    @register("source", "sequence")
    class SequenceSourceConfig(SourceConfig): ...

Built-in components are imported lazily the first time a kind is looked up, so importing
``rayflume`` stays cheap. An interceptor's type may also be a Python import path
(``package.module:function``), resolved by :mod:`rayflume.interceptors.callable`.
"""
from __future__ import annotations

import importlib
from typing import Callable, TypeVar

KINDS = ("source", "channel", "sink", "interceptor", "selector", "processor")

# Modules that hold the built-in components of each kind.
_BUILTIN_MODULES = {
    "source": ["rayflume.sources.sequence", "rayflume.sources.exec", "rayflume.sources.taildir",
               "rayflume.sources.spooldir", "rayflume.sources.syslog", "rayflume.sources.http",
               "rayflume.sources.netcat", "rayflume.sources.kafka", "rayflume.sources.rayflume",
               "rayflume.testing"],
    "channel": ["rayflume.channels.memory", "rayflume.channels.null", "rayflume.channels.file",
                "rayflume.channels.spillable", "rayflume.channels.kafka"],
    "sink": ["rayflume.sinks.logger", "rayflume.sinks.null", "rayflume.sinks.file_roll", "rayflume.sinks.hdfs",
             "rayflume.sinks.kafka", "rayflume.sinks.http", "rayflume.sinks.rayflume", "rayflume.testing"],
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
    """The config class registered for ``type_name``, or None when there is none."""
    _load_builtins(kind)
    return _registry[kind].get(type_name)


def known_types(kind: str) -> list[str]:
    _load_builtins(kind)
    return sorted(_registry[kind])
