"""Interceptors written by users as Python callables, named by import path.

In topology YAML the interceptor's ``type`` is an import path ``package.module:attr`` (``attr``
may be dotted, ``module:Outer.method``)::

    interceptors:
      - {type: "mypkg.filters:drop_debug"}                 # function, batch mode (default)
      - {type: "mypkg.filters:tag_event", mode: event}     # function, event mode
      - {type: "mypkg.filters:Enricher", args: {table: geo.csv}}   # class

What the target must be:

- a **function**, in ``mode: batch`` (default): called with an :class:`~rayflume.event.EventBatch`,
  returns an ``EventBatch`` with at most as many events (this is the fast path: use Arrow kernels).
- a **function**, in ``mode: event``: called once per :class:`~rayflume.event.Event`, returns an
  ``Event`` (the same object modified, or a new one) or ``None`` to drop the event. This is a
  per-event Python loop: convenient, but slow for large batches.
- a **class**: instantiated once, when the source builds its interceptors, as ``cls(**args)``.
  Its ``intercept`` method is then called like a function in the given ``mode`` (an
  ``EventBatch`` in batch mode, an ``Event`` in event mode). Its ``close()``, if it has one, is
  called when the source stops.

``args`` is only allowed for classes. The module is imported when the topology is validated
(on the driver) and again where the source runs, so it must be importable on every node: on
``PYTHONPATH`` or installed in the environment (for Ray, e.g. through a runtime_env).

Because the type is an import path it cannot be registered under a fixed name: the topology
validator calls :func:`resolve_callable_interceptor` for a ``type`` containing ``:`` that is not a
registered interceptor.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rayflume.config_base import InterceptorConfig
from rayflume.event import Event, EventBatch
from rayflume.interceptors.base import Interceptor

__all__ = ["CallableInterceptorConfig", "CallableInterceptor", "resolve_callable_interceptor", "import_target"]


def import_target(path: str) -> Any:
    """The object named by ``module:attr``; ValueError saying what to check when it cannot be imported."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise ValueError(f"interceptor type {path!r} is neither a built-in interceptor nor an import path "
                         f"of the form 'package.module:attribute'")
    module_name, attr_path = (part.strip() for part in path.split(":"))
    if not module_name or not attr_path:
        raise ValueError(f"interceptor type {path!r}: an import path needs both a module and an attribute, "
                         f"as in 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"interceptor {path!r}: cannot import module {module_name!r} ({exc}); check that it "
                         f"is on PYTHONPATH or that its package is installed where the topology runs") from exc
    except Exception as exc:  # the user's module itself failed while importing
        raise ValueError(f"interceptor {path!r}: importing module {module_name!r} failed with "
                         f"{type(exc).__name__}: {exc}; fix the module") from exc
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"interceptor {path!r}: module {module_name!r} has no attribute {attr_path!r}; "
                             f"check the name, and that PYTHONPATH or the installed package holds the "
                             f"version of {module_name!r} that defines it") from None
    return target


class CallableInterceptor(Interceptor):
    """Runs a user function (or the ``intercept`` method of a user object) on each batch or event.

    Thread-safety is the user code's. Return values are checked: a wrong type raises TypeError
    naming the import path, and the chain rejects a batch that grew.
    """

    def __init__(self, fn, mode: str = "batch", name: str = "", owner: Any = None):
        if mode not in ("batch", "event"):
            raise ValueError(f"interceptor {name!r}: mode must be 'batch' or 'event', not {mode!r}")
        self.fn = fn
        self.mode = mode
        self.name = name or getattr(fn, "__qualname__", repr(fn))
        self._owner = owner

    def intercept(self, batch: EventBatch) -> EventBatch:
        if self.mode == "batch":
            result = self.fn(batch)
            if not isinstance(result, EventBatch):
                raise TypeError(f"interceptor {self.name!r} (batch mode) must return an EventBatch, "
                                f"got {type(result).__name__}")
            return result
        kept = []
        for event in batch.to_events():
            result = self.fn(event)
            if result is None:
                continue
            if not isinstance(result, Event):
                raise TypeError(f"interceptor {self.name!r} (event mode) must return an Event or None, "
                                f"got {type(result).__name__}")
            kept.append(result)
        return EventBatch.from_events(kept)

    def close(self) -> None:
        close = getattr(self._owner, "close", None)
        if callable(close):
            close()


class CallableInterceptorConfig(InterceptorConfig):
    """A user interceptor: ``type`` is ``package.module:attribute`` (see the module docstring)."""

    mode: Literal["batch", "event"] = Field(
        "batch", description="batch: the callable maps an EventBatch to an EventBatch; event: an Event "
                             "to an Event or None (dropped).")
    args: dict[str, Any] = Field(default_factory=dict,
                                 description="Keyword arguments for the class named by type (classes only).")

    @field_validator("type")
    @classmethod
    def _importable(cls, v: str) -> str:
        import_target(v)
        return v

    @model_validator(mode="after")
    def _shape(self) -> "CallableInterceptorConfig":
        target = import_target(self.type)
        if inspect.isclass(target):
            if not callable(getattr(target, "intercept", None)):
                raise ValueError(f"interceptor {self.type!r}: class {target.__qualname__} has no "
                                 f"intercept() method; give it intercept(batch) (or intercept(event) "
                                 f"with mode: event)")
            try:
                inspect.signature(target).bind(**self.args)
            except TypeError as exc:
                raise ValueError(f"interceptor {self.type!r}: 'args' {sorted(self.args)} do not fit "
                                 f"{target.__qualname__}(): {exc}") from None
            except ValueError:
                pass  # no introspectable signature: errors surface when the source builds it
        elif callable(target):
            if self.args:
                raise ValueError(f"interceptor {self.type!r}: 'args' is only for classes, and "
                                 f"{self.type.split(':')[1]} is a function; remove 'args' or make it a class")
        else:
            raise ValueError(f"interceptor {self.type!r}: {type(target).__name__} object is not callable; "
                             f"name a function or a class")
        return self

    def build(self) -> CallableInterceptor:
        target = import_target(self.type)
        if inspect.isclass(target):
            instance = target(**self.args)
            return CallableInterceptor(instance.intercept, self.mode, self.type, owner=instance)
        return CallableInterceptor(target, self.mode, self.type)


def resolve_callable_interceptor(raw: dict) -> InterceptorConfig:
    """The config of a user interceptor from its raw YAML mapping.

    Raises ValueError (pydantic's ValidationError is one) for an unknown key, a bad ``mode`` or
    ``args``, or an import path that does not import; the message names the path and says what
    to check.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"an interceptor must be a mapping with a 'type', not {type(raw).__name__}")
    if "type" not in raw:
        raise ValueError("an interceptor needs a 'type'")
    return CallableInterceptorConfig.model_validate(raw)
