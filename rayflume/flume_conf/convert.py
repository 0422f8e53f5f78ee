"""One agent of a Flume properties file -> a rayflume topology mapping.

:func:`convert_text` guarantees that every property of the agent is either carried over or
reported: a property with no rayflume equivalent, an unknown one, one of a component the agent does
not list (Flume ignores those) each give one :class:`Problem` naming the file, line and property,
why, and what to do. Problems that would make the topology do something else than the agent did (an
unsupported component type, a value with no equivalent, a missing ``type``) are errors; the rest are
warnings. The result is validated by rayflume's own validation (with ``${env:}``/``${file:}``
references substituted as a deploy would), and validation problems are errors too.

Flume's config filters (``a1.configfilters = f1``, ``a1.configfilters.f1.type = env``) become
rayflume's references: ``${f1['NAME']}`` is written ``${env:NAME}``, which rayflume substitutes
when the topology is loaded. Other filter types have no equivalent.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import yaml

from rayflume import registry
from rayflume.errors import ConfigError, read_config_file
from rayflume.flume_conf import mapping as table
from rayflume.flume_conf.properties import Property, parse_properties

SECTIONS = (("sources", "source"), ("channels", "channel"), ("sinks", "sink"))
AGENT_LISTS = ("sources", "channels", "sinks", "sinkgroups", "configfilters")
_FILTER_REF = re.compile(r"\$\{([A-Za-z0-9_-]+)\[\s*(['\"]?)([^'\"\]]+)\2\s*\]\}")
_RAYFLUME_REF = re.compile(r"\$\{(env|file):[^}]+\}")


@dataclass(frozen=True)
class Problem:
    """One property not carried over (or carried over wrongly): where, which, why, what to do."""

    line: int | None
    key: str
    message: str

    def format(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


@dataclass
class FlumeConversion:
    """An agent converted: the topology mapping (references such as ``${env:X}`` left as
    written), and what could not be carried over."""

    agent: str
    source: str
    data: dict
    warnings: list[Problem] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    # Flume defaults written explicitly where rayflume's differ (memory channel capacity 100, ...)
    notes: list[Problem] = field(default_factory=list)
    # the agent's properties that were carried over (full keys): with the keys of the warnings and
    # errors, every property of the agent
    carried: set[str] = field(default_factory=set)

    def warning_lines(self) -> list[str]:
        return [p.format(self.source) for p in self.warnings]

    def note_lines(self) -> list[str]:
        return [p.format(self.source) for p in self.notes]

    def error_lines(self) -> list[str]:
        return [p.format(self.source) for p in self.errors]


def agents_in(properties: list[Property]) -> list[str]:
    """The agent names a properties file configures (``a1`` of ``a1.sources = r1``)."""
    names = set()
    for prop in properties:
        parts = prop.key.split(".")
        if len(parts) >= 2 and parts[1] in AGENT_LISTS:
            names.add(parts[0])
    return sorted(names)


def no_agent_error(source: str, properties: list[Property]) -> ConfigError:
    """The error for a properties file given without ``--agent``."""
    agents = agents_in(properties)
    found = (f"it configures agent(s): {', '.join(agents)}" if agents
             else "it configures no agent (no `NAME.sources = ...`)")
    example = agents[0] if agents else "a1"
    return ConfigError([f"{source}: this is a Flume agent configuration (a properties file), and {found}. Say which "
                        f"agent to run with --agent (Flume's -n), e.g. `--agent {example}`; `rayflume convert {source} "
                        f"--agent {example}` writes it as a rayflume topology (YAML)"])


class _Converter:
    def __init__(self, agent: str, source: str, own: dict[str, Property]):
        self.agent, self.source, self.own = agent, source, own
        self.used: set[str] = set()
        self.warnings: list[Problem] = []
        self.errors: list[Problem] = []
        self.notes: list[Problem] = []
        self.carried: set[str] = set()
        self.filters: dict[str, str] = {}
        self.origin: dict[str, Property] = {}  # topology path -> the property it came from
        # component path -> the mapping its type chose (None: its type is not converted)
        self._mappings: dict[str, table.ComponentMapping | None] = {}

    # -- bookkeeping ---------------------------------------------------------------------------
    def full(self, key: str) -> str:
        return f"{self.agent}.{key}"

    def take(self, key: str) -> Property | None:
        """A structural property (a type, a list of names), marked used and carried over."""
        prop = self.own.get(key)
        if prop is not None:
            self.used.add(key)
            self.carried.add(prop.key)
        return prop

    def under(self, prefix: str) -> dict[str, Property]:
        """Properties under ``prefix.`` not yet used, keyed by the rest of their key."""
        return {k[len(prefix) + 1:]: p for k, p in self.own.items()
                if k.startswith(prefix + ".") and k not in self.used}

    def warn(self, prop: Property | None, key: str, message: str) -> None:
        self.warnings.append(Problem(prop.line if prop else None, key, message))

    def error(self, prop: Property | None, key: str, message: str) -> None:
        self.errors.append(Problem(prop.line if prop else None, key, message))

    def value(self, prop: Property) -> str:
        """The property's value with Flume config-filter references written as rayflume's."""
        def replace(m: re.Match) -> str:
            name, key = m.group(1), m.group(3)
            kind = self.filters.get(name)
            if kind == "env":
                return "${env:" + key + "}"
            if kind is None:
                self.warn(prop, prop.key, f"${{{name}[...]}} names no config filter of agent {self.agent}; left as "
                                          f"written. Write ${{env:NAME}} or ${{file:PATH}} for rayflume to substitute")
            return m.group(0)

        return _FILTER_REF.sub(replace, prop.value)

    # -- agent ---------------------------------------------------------------------------------
    def names(self, key: str) -> list[str]:
        prop = self.take(key)
        return self.value(prop).split() if prop else []

    def config_filters(self) -> None:
        for name in self.names("configfilters"):
            type_prop = self.take(f"configfilters.{name}.type")
            kind = (type_prop.value.strip() if type_prop else "")
            if kind.lower() in ("env", "org.apache.flume.configfilter.environmentvariableconfigfilter"):
                self.filters[name] = "env"
            else:
                self.filters[name] = kind or "?"
                self.error(type_prop, self.full(f"configfilters.{name}.type"),
                           f"config filter type {kind or '(missing)'!r} has no equivalent: rayflume substitutes "
                           f"${{env:NAME}} and ${{file:PATH}} when it loads a topology; put the secret in an "
                           f"environment variable or a file and refer to it that way")
            for rest, prop in self.under(f"configfilters.{name}").items():
                self.used.add(f"configfilters.{name}.{rest}")
                if self.filters[name] == "env":
                    self.warn(prop, prop.key, "the env config filter takes no settings; not converted")

    def convert(self) -> dict:
        self.config_filters()
        data: dict = {"name": self.agent}
        listed = {section: self.names(section) for section, _ in SECTIONS}
        for section, kind in SECTIONS:
            data[section] = {}
            for name in listed[section]:
                data[section][name] = self.component(kind, f"{section}.{name}", name)
        groups = {}
        for group in self.names("sinkgroups"):
            groups[group] = self.sink_group(group)
        if groups:
            data["sink_groups"] = groups
        self.report_leftovers(listed)
        return data

    def report_leftovers(self, listed: dict) -> None:
        lists = {"sources": "sources", "channels": "channels", "sinks": "sinks", "sinkgroups": "sinkgroups"}
        for key, prop in sorted(self.own.items(), key=lambda kv: kv[1].line):
            if key in self.used:
                continue
            parts = key.split(".")
            if parts[0] in lists and len(parts) > 2:
                self.warn(prop, prop.key, f"{parts[0][:-1]} '{parts[1]}' is not listed in {self.full(parts[0])}, so "
                                          f"Flume ignores it; not converted. Add it to the list to run it")
            else:
                self.warn(prop, prop.key, "unknown agent property; not converted. Check the spelling against the "
                                          "Flume User Guide")

    # -- components ----------------------------------------------------------------------------
    def component(self, kind: str, prefix: str, name: str) -> dict:
        type_prop = self.take(f"{prefix}.type")
        if type_prop is None:
            self.error(None, self.full(prefix), f"the {kind} has no `type`; add {self.full(prefix)}.type")
            out = {}
        else:
            out = self.typed(kind, prefix, type_prop, path=prefix)
        if kind == "source":
            self.source_structure(prefix, out)
        elif kind == "sink":
            channel = self.take(f"{prefix}.channel")
            if channel is not None:
                out["channel"] = self.value(channel).strip()
                self.origin[f"{prefix}.channel"] = channel
        self.apply(kind, prefix, out, prefix)
        return out

    def typed(self, kind: str, prefix: str, type_prop: Property, path: str) -> dict:
        """``{type: rayflume type, implied keys}`` for the Flume type of ``type_prop``, with the
        mapping to use remembered for :meth:`apply`."""
        flume_name = self.value(type_prop).strip()
        found = table.mapping_for(kind, flume_name)
        self.origin[f"{path}.type"] = type_prop
        if found is None:
            reason = table.unsupported_reason(kind, flume_name)
            if reason:
                self.error(type_prop, type_prop.key, f"Flume's {flume_name} {kind} has no rayflume equivalent: "
                                                     f"{reason}")
            else:
                known = sorted({m.flume for m in table.ALL if m.kind == kind})
                self.error(type_prop, type_prop.key, f"unknown {kind} type {flume_name!r}: neither one of Flume's "
                                                     f"that rayflume has ({', '.join(known)}) nor a rayflume type "
                                                     f"({', '.join(registry.known_types(kind))})")
            self._mappings[path] = None
            return {"type": flume_name}
        self._mappings[path] = found
        return {"type": found.rayflume_type, **found.implied}

    def apply(self, kind: str, prefix: str, out: dict, path: str) -> None:
        """Every remaining property under ``prefix`` through the mapping chosen by :meth:`typed`."""
        found = self._mappings.get(path)
        leftovers = self.under(prefix)
        for rest in leftovers:
            self.used.add(f"{prefix}.{rest}")
        if found is None:
            for rest, prop in leftovers.items():
                self.warn(prop, prop.key, f"not converted: its {kind} type is not converted (see the error on its "
                                          f"type)")
            return
        cls = registry.lookup(kind, found.rayflume_type)
        fields = getattr(cls, "model_fields", {})
        for rest, prop in sorted(leftovers.items(), key=lambda kv: kv[1].line):
            entry = found.find(rest)
            if entry is None and rest in fields and rest not in ("type", "channels", "channel"):
                entry = (table.Prop(rest, rest), [])  # rayflume's own key, written in the properties file
            if entry is None:
                self.warn(prop, prop.key, f"unknown property of Flume's {found.flume} {kind}; not converted. Check "
                                          f"the spelling (docs/flume-properties.md lists the {found.flume} {kind}'s "
                                          f"properties)")
                continue
            self.set_value(found, entry, prop, out, fields, path)
        for key, value, why in found.flume_defaults:
            if key not in out:
                out[key] = value
                self.notes.append(Problem(None, self.full(prefix),
                                          f"{key}: {value!r} written, Flume's default ({why})"))
        if found.finish is not None:
            try:
                found.finish(out, lambda message: self.warn(None, self.full(prefix), message))
            except table.Unusable as exc:
                self.error(None, self.full(prefix), str(exc))
        for key in found.scratch:
            out.pop(key, None)

    def set_value(self, found, entry, prop: Property, out: dict, fields: dict, path: str) -> None:
        spec, captures = entry
        if spec.key is None and spec.conv is table.AUTO:
            problem = Problem(prop.line, prop.key, f"no rayflume equivalent: {spec.why}")
            (self.errors if spec.error else self.warnings).append(problem)
            return
        raw = self.value(prop)
        keys = _fill(spec.key, captures) if spec.key else []
        field_info = fields.get(keys[0]) if keys else None
        try:
            if _RAYFLUME_REF.search(raw):
                if spec.conv not in (table.AUTO, table.AS_IS, table.KAFKA_CLIENT):
                    raise table.Unusable(f"a reference cannot be converted ({spec.conv.doc}); put the value in "
                                         f"rayflume's unit in the variable or file, or write it here")
                value = raw.strip()  # substituted, and typed by validation, when the topology is loaded
            else:
                value = spec.conv(raw, getattr(field_info, "annotation", None))
        except table.Unusable as exc:
            self.error(prop, prop.key, str(exc))
            return
        except ValueError as exc:
            self.error(prop, prop.key, f"{exc}; fix the value")
            return
        self.carried.add(prop.key)
        if not keys:
            return
        target = out
        for k in keys[:-1]:
            target = target.setdefault(k, {})
            if not isinstance(target, dict):
                self.error(prop, prop.key, f"conflicts with another property that set {'.'.join(keys[:-1])}")
                return
        if keys[-1] in target and target[keys[-1]] != value:
            self.carried.discard(prop.key)
            self.warn(prop, prop.key, f"sets {'.'.join(keys)} again (another Flume property also maps to it); this "
                                      f"value wins")
        target[keys[-1]] = value
        self.origin[f"{path}.{'.'.join(keys)}"] = prop

    def source_structure(self, prefix: str, out: dict) -> None:
        channels = self.take(f"{prefix}.channels")
        if channels is not None:
            out["channels"] = self.value(channels).split()
            self.origin[f"{prefix}.channels"] = channels
        selector_type = self.take(f"{prefix}.selector.type")
        if selector_type is not None or self.under(f"{prefix}.selector"):
            if selector_type is None:
                selector = {"type": "replicating"}
                self._mappings[f"{prefix}.selector"] = table.mapping_for("selector", "replicating")
            else:
                selector = self.typed("selector", f"{prefix}.selector", selector_type, f"{prefix}.selector")
            self.apply("selector", f"{prefix}.selector", selector, f"{prefix}.selector")
            out["selector"] = selector
        names = self.take(f"{prefix}.interceptors")
        interceptors = []
        for i, name in enumerate(self.value(names).split() if names else []):
            iprefix = f"{prefix}.interceptors.{name}"
            type_prop = self.take(f"{iprefix}.type")
            path = f"{prefix}.interceptors[{i}]"
            if type_prop is None:
                self.error(names, names.key, f"interceptor {name} has no type; add {self.full(iprefix)}.type")
                continue
            interceptor = self.typed("interceptor", iprefix, type_prop, path)
            self.apply("interceptor", iprefix, interceptor, path)
            interceptors.append(interceptor)
        if interceptors:
            out["interceptors"] = interceptors
        for rest, prop in self.under(f"{prefix}.interceptors").items():
            self.used.add(f"{prefix}.interceptors.{rest}")
            self.warn(prop, prop.key, f"interceptor '{rest.split('.')[0]}' is not listed in "
                                      f"{self.full(prefix)}.interceptors, so Flume ignores it; not converted")

    def sink_group(self, group: str) -> dict:
        prefix = f"sinkgroups.{group}"
        sinks = self.take(f"{prefix}.sinks")
        out: dict = {}
        if sinks is None:
            self.error(None, self.full(prefix), f"the sink group lists no sinks; add {self.full(prefix)}.sinks = k1 k2")
        else:
            out["sinks"] = self.value(sinks).split()
            self.origin[f"sink_groups.{group}.sinks"] = sinks
        type_prop = self.take(f"{prefix}.processor.type")
        path = f"sink_groups.{group}.processor"
        if type_prop is None:
            processor = {"type": "default"}
            self._mappings[path] = table.mapping_for("processor", "default")
        else:
            processor = self.typed("processor", f"{prefix}.processor", type_prop, path)
        self.apply("processor", f"{prefix}.processor", processor, path)
        out["processor"] = processor
        for rest, prop in self.under(prefix).items():
            self.used.add(f"{prefix}.{rest}")
            self.warn(prop, prop.key, "unknown sink group property; not converted (a group has sinks and processor.*)")
        return out


def _fill(pattern: str, captures: list[str]) -> list[str]:
    """``"producer.*"`` with ``["security.protocol"]`` -> ``["producer", "security.protocol"]``."""
    out, captured = [], iter(captures)
    for part in pattern.split("."):
        out.append(next(captured) if part == "*" else part)
    return out


def convert_text(text: str, agent: str | None, source: str = "<properties>",
                 base_dir: str | None = None) -> FlumeConversion:
    """Convert agent ``agent`` of properties ``text``. Raises ConfigError when the agent is None
    or not in the file; otherwise every problem is in the result (see the module docstring).
    ``base_dir`` resolves relative ``${file:}`` paths while validating (default: the working
    directory)."""
    properties = parse_properties(text)
    if agent is None:
        raise no_agent_error(source, properties)
    agents = agents_in(properties)
    if agent not in agents:
        raise ConfigError([f"{source}: no agent named '{agent}' in this file; it configures "
                           f"{', '.join(agents) if agents else 'no agent'}. Pass one of them with --agent"])
    own: dict[str, Property] = {}
    duplicates: list[Problem] = []
    for prop in properties:
        if prop.key.startswith(agent + "."):
            key = prop.key[len(agent) + 1:]
            if key in own:
                duplicates.append(Problem(own[key].line, prop.key, f"set again at line {prop.line}; as in Flume, the "
                                                                   f"last value wins"))
            own[key] = prop
    converter = _Converter(agent, source, own)
    data = converter.convert()
    result = FlumeConversion(agent, source, data, duplicates + converter.warnings, converter.errors, converter.notes,
                             converter.carried)
    if not result.errors:
        result.errors.extend(_validation_problems(data, converter.origin, base_dir))
    return result


def _validation_problems(data: dict, origin: dict[str, Property], base_dir: str | None) -> list[Problem]:
    """Rayflume's validation of the converted topology, each problem placed at the property it
    came from where one is known."""
    from rayflume.topology import substitute_references, validate

    try:
        validate(substitute_references(data, base_dir=base_dir), source="converted topology")
    except ConfigError as exc:
        out = []
        for message in exc.errors:
            path = message.partition(": ")[0]
            prop = None
            p = path
            while p and prop is None:  # the property behind the path, or behind its component
                prop = origin.get(p) or origin.get(f"{p}.type")
                cut = max(p.rfind("."), p.rfind("["))
                p = p[:cut] if cut > 0 else ""
            out.append(Problem(prop.line if prop else None, "",
                               f"the converted topology is invalid: {message}; fix the property in the Flume file"))
        return out
    return []


def convert_file(path: str | os.PathLike, agent: str | None) -> FlumeConversion:
    """:func:`convert_text` of a file. Raises ConfigError when it cannot be read."""
    path = os.fspath(path)
    text = read_config_file(path, "the Flume configuration")
    return convert_text(text, agent, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def to_yaml(conversion: FlumeConversion) -> str:
    """The topology as YAML, headed by a comment naming its origin and every property that was not
    carried over (so the file itself records them)."""
    head = [f"# rayflume topology converted from agent '{conversion.agent}' of {conversion.source}",
            "# by `rayflume convert`. Flume properties not carried over:" if conversion.warnings
            else "# Every Flume property was carried over."]
    head += [f"#   {p.format(os.path.basename(conversion.source))}" for p in conversion.warnings]
    if conversion.notes:
        head.append("# Flume defaults written explicitly (rayflume's differ):")
        head += [f"#   {p.format(os.path.basename(conversion.source))}" for p in conversion.notes]
    body = yaml.safe_dump(conversion.data, sort_keys=False, default_flow_style=False, width=120)
    return "\n".join(head) + "\n" + body
