"""What ``rayflume types`` shows: the component types, each type's keys (from its typed config:
name, type, default, description), and a JSON Schema of a whole topology file for editors.

Everything comes from the registered pydantic configs, so it cannot drift from what validation
accepts.
"""
from __future__ import annotations

import json
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from rayflume import registry

KINDS = ("source", "channel", "sink", "interceptor", "selector", "processor")
SECTIONS = {"sources": "source", "channels": "channel", "sinks": "sink"}
_COMMON = {"type"}  # shown in the heading, not as a key


def summary(cls: type) -> str:
    """The first sentence of a config's docstring, on one line."""
    doc = " ".join((cls.__doc__ or "").replace("``", "").split())
    return doc.split(". ")[0].rstrip(".") if doc else ""


def types_table() -> list[tuple[str, str, str]]:
    """``(kind, type, summary)`` of every registered component type."""
    return [(kind, name, summary(registry.lookup(kind, name)))
            for kind in KINDS for name in registry.known_types(kind)]


def _type_text(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    return text or str(annotation).replace("typing.", "")


def _default_text(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    return json.dumps(value) if isinstance(value, (str, int, float, bool, list, dict, type(None))) else repr(value)


def keys(cls: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, description)`` of each key of the config class ``cls``."""
    return [(name, _type_text(field.annotation), _default_text(field), field.description or "")
            for name, field in cls.model_fields.items() if name not in _COMMON]


def describe(type_name: str, kind: str | None = None) -> str:
    """The keys of every component type named ``type_name`` (of ``kind`` if given; a Flume name is
    accepted too), as text. Raises LookupError naming the known types when there is none."""
    found = [(k, registry.lookup(k, type_name)) for k in ([kind] if kind else KINDS)]
    found = [(k, cls) for k, cls in found if cls is not None]
    if not found:
        known = ", ".join(f"{k} {n}" for k, n, _ in types_table() if kind in (None, k))
        raise LookupError(f"no component type {type_name!r}{f' of kind {kind}' if kind else ''}; known: {known}")
    parts = []
    for k, cls in found:
        rows = keys(cls)
        width = max((len(r[0]) for r in rows), default=0)
        lines = [f"{k} {cls.type_name}: {summary(cls)}"]
        for name, annotation, default, description in rows:
            lines.append(f"  {name.ljust(width)}  {annotation} = {default}")
            if description:
                lines.append(f"  {' ' * width}    {description}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def topology_schema() -> dict:
    """A JSON Schema (draft 2020-12) of a topology file: single-tier or tiered, each component
    checked against its type's keys."""
    defs: dict = {}

    def component(kind: str) -> dict:
        choices = []
        for name in registry.known_types(kind):
            schema = registry.lookup(kind, name).model_json_schema(ref_template="#/$defs/{model}")
            defs.update(schema.pop("$defs", {}))
            schema.setdefault("properties", {})["type"] = {"const": name}
            schema["required"] = sorted(set(schema.get("required", [])) | {"type"})
            choices.append(schema)
        defs[kind] = {"oneOf": choices}
        return {"$ref": f"#/$defs/{kind}"}

    tier = {
        "type": "object",
        "properties": {
            **{section: {"type": "object", "additionalProperties": component(kind)}
               for section, kind in SECTIONS.items()},
            "sink_groups": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["sinks"],
                "properties": {"sinks": {"type": "array", "items": {"type": "string"}},
                               "processor": component("processor")}}},
            "placement": {"type": "object"},
        },
    }
    defs["tier"] = tier
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "rayflume topology",
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "metrics": {"type": "object"},
            "alerts": {"type": "object"},
            "tiers": {"type": "object", "additionalProperties": {"$ref": "#/$defs/tier"}},
            **tier["properties"],
        },
        "$defs": defs,
    }
