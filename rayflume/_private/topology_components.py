"""One component's mapping -> its typed config, validated against the registry (:func:`build_config`),
with pydantic's errors reworded for a Flume user's first mistakes.

The ``type`` may be rayflume's name, Flume's (``TAILDIR``, ``org.apache.flume.sink.hdfs.HDFSEventSink``,
carried as rayflume's in the config), an import path, an entry point's name or, from Python, a
config class (see :mod:`rayflume.registry`). Problems are appended as ``path: message``; a value
that fits none of a field's alternatives is one problem, not one per alternative. Actors rebuild
their configs with :func:`build_config` and :func:`with_nested` too, on their own nodes.
"""
from __future__ import annotations

import types
import typing

from pydantic import ValidationError

from rayflume import registry
from rayflume._private.topology_messages import describe_value, did_you_mean, unknown_key


def _field_description(field) -> str:
    """The first sentence of a field's description, as a clause (``the channel this sink drains``)."""
    desc = (getattr(field, "description", None) or "").strip()
    if not desc:
        return ""
    desc = desc.split(". ")[0].rstrip(".")
    if desc[:1].isupper() and desc[1:2].islower():
        desc = desc[0].lower() + desc[1:]
    return desc


def _type_message(kind: str, value, field_name) -> str | None:
    """Words for pydantic's commonest type errors, or None to keep pydantic's message."""
    got = describe_value(value)
    if kind in ("list_type", "tuple_type", "set_type"):
        example = value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else "a, b"
        return f"expected a list, e.g. [{example}]; got {got}"
    seconds = isinstance(field_name, str) and field_name.endswith("_s")
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected a whole number, e.g. 100; got {got}"
    if kind in ("float_parsing", "float_type", "finite_number"):
        what = "a number of seconds, e.g. 30" if seconds else "a number, e.g. 1.5"
        return f"expected {what}; got {got}"
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false; got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping, e.g. {{key: value}}; got {got}"
    if kind == "string_type":
        return f"expected a string; got {got}"
    return None


def _format_loc(prefix: str, loc) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _pydantic_errors(prefix: str, exc: ValidationError, fields: dict) -> list[str]:
    """Each of pydantic's errors as ``path: message``, in words for the common mistakes.

    ``fields`` are the component's declared fields (for suggestions and descriptions). A missing
    key is reported on its component's path, naming the key and what it is for. A value that fits
    none of a field's alternatives (``bool | str | list[str]``) is one problem, not one per
    alternative.
    """
    out: list[str] = []
    alternatives: dict[str, tuple[int, object, list[str]]] = {}  # union field -> (index in out, input, expected)
    for err in exc.errors():
        loc, kind, value = err["loc"], err["type"], err.get("input")
        path, top, union = _format_loc(prefix, loc), len(loc) == 1, _is_union_member(fields, loc)
        if kind == "extra_forbidden":
            known = [f for f in fields if f != "type"] if top else []
            msg = (unknown_key(loc[-1], known) if known
                   else "unknown key; check the spelling against the component's documented keys")
        elif kind == "missing":
            path = _format_loc(prefix, loc[:-1])
            desc = _field_description(fields.get(loc[-1])) if top else ""
            msg = f"missing required key `{loc[-1]}`" + (f": {desc}" if desc else "")
        else:
            msg = _type_message(kind, value, loc[0] if union else loc[-1] if loc else None)
            if msg is None:
                msg = err["msg"]
                if kind == "value_error":
                    msg = msg.removeprefix("Value error, ")
                elif not isinstance(value, (dict, list)):
                    msg += f"; got {describe_value(value)}"
        if union:
            path = _format_loc(prefix, loc[:1])
            if path not in alternatives:
                alternatives[path] = (len(out), value, [])
                out.append("")  # filled below, in pydantic's order
            alternatives[path][2].append(msg.split("; got ")[0].removeprefix("expected "))
            continue
        out.append(f"{path}: {msg}")
    for path, (index, value, expected) in alternatives.items():
        out[index] = f"{path}: expected {' or '.join(expected)}; got {describe_value(value)}"
    return out


def _is_union_member(fields: dict, loc) -> bool:
    """Whether ``loc`` names one alternative of a union field (pydantic appends the member's type)."""
    field = fields.get(loc[0]) if len(loc) == 2 and isinstance(loc[0], str) and isinstance(loc[1], str) else None
    return field is not None and typing.get_origin(field.annotation) in (typing.Union, types.UnionType)


def build_config(kind: str, raw: dict, path: str, errors: list[str]):
    """Validate one component mapping; returns its typed config, or None after adding errors."""
    if not isinstance(raw, dict):
        errors.append(f"{path}: expected a mapping of the {kind}'s settings, e.g. {{type: ...}}; got "
                      f"{describe_value(raw)}")
        return None
    if "type" in raw and raw["type"] is None:
        # YAML reads `type: null` as None; the only sensible meaning is the `null` component.
        raw = {**raw, "type": "null"}
    type_name = raw.get("type")
    if not isinstance(type_name, (str, type)):
        what = ("missing required key `type`" if type_name is None
                else f"`type` must be a string (or, from Python, a {kind} config class), got "
                     f"{describe_value(type_name)}")
        errors.append(f"{path}: {what}; known {kind} types: {', '.join(registry.known_types(kind))}")
        return None
    try:
        # a built-in or Flume name, an import path, an entry point's name, or a config class
        cls = registry.lookup(kind, type_name, strict=True)
    except registry.ComponentTypeError as exc:
        errors.append(f"{path}.type: {exc}")
        return None
    if cls is not None:
        # Flume's name (TAILDIR, org.apache.flume...): the config carries rayflume's, plus the keys
        # the Flume type implies (netcatudp: protocol udp) unless written. A class object: the
        # config carries its name, module:QualifiedName.
        canonical, implied = registry.canonical_type(kind, type_name)
        raw = {**implied, **raw, "type": canonical}
    try:
        if cls is not None:
            config = cls(**raw)
        elif kind == "interceptor" and ":" in type_name:
            from rayflume.interceptors.callable import CallableInterceptorConfig, resolve_callable_interceptor

            cls = CallableInterceptorConfig
            config = resolve_callable_interceptor(raw)
        else:
            hint = (" or a Python import path 'module:callable'" if kind == "interceptor" else
                    f", or a Python import path 'package.module:ConfigClass' naming your own {kind} config class")
            installed = registry.entry_point_types(kind)
            known = registry.known_types(kind) + [t for t in installed if t not in registry.known_types(kind)]
            from rayflume.flume_conf.mapping import unsupported_reason

            flume = unsupported_reason(kind, type_name)
            flume = f"; Flume's {type_name} has no rayflume equivalent: {flume}" if flume else ""
            errors.append(f"{path}.type: unknown {kind} type '{type_name}'{flume}; known types: {', '.join(known)}"
                          f"{hint}{did_you_mean(type_name, known)}")
            return None
    except ValidationError as exc:
        errors.extend(_pydantic_errors(path, exc, cls.model_fields if cls is not None else {}))
        return None
    except (ValueError, TypeError, ImportError) as exc:
        errors.append(f"{path}: {exc}")
        return None
    return config


def with_nested(config, path: str, errors: list[str]):
    """Resolve a source's interceptor and selector mappings into typed configs."""
    interceptors = []
    for i, raw in enumerate(config.interceptors):
        built = build_config("interceptor", raw, f"{path}.interceptors[{i}]", errors)
        if built is not None:
            interceptors.append(built)
    selector = build_config("selector", config.selector, f"{path}.selector", errors)
    return config.model_copy(update={"interceptors": interceptors, "selector": selector})
