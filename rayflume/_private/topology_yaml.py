"""Topology text -> mapping: YAML read with ``yaml.safe_load`` semantics, the line of every key and
list item recorded, duplicate keys refused; and a Flume properties file told apart from YAML and,
given its agent, converted (:mod:`rayflume.flume_conf.convert`).

The paths recorded (:func:`format_path`) are the ones every problem starts with, so
:func:`rayflume._private.topology_messages.with_line` can give each problem its line. Nothing here
validates the mapping: that is :func:`rayflume.topology.validate`.
"""
from __future__ import annotations

import re

import yaml

from rayflume._private.topology_messages import describe_value
from rayflume.errors import ConfigError

_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"


def format_path(parts) -> str:
    """``("sources", "tail", "channels", 1)`` -> ``sources.tail.channels[1]``: the form every
    error message starts with."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _scan_nodes(root) -> tuple[dict[str, int], list[str]]:
    """Walk a composed YAML document before it is constructed.

    Returns ``{path: 1-based line}`` for every mapping key and list item, and one
    ``line N: duplicate key 'k'`` per string key written twice in a mapping (keys brought in by a
    ``<<`` merge may be overridden and are not duplicates). Each node is walked once, so shared
    anchors cost nothing extra: a path reached through an alias has no line of its own and is
    reported at the alias.
    """
    lines: dict[str, int] = {}
    duplicates: list[str] = []
    walked: set[int] = set()

    def walk(node, path):
        if id(node) in walked:
            return
        walked.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen, merges = set(), []
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    merges.append(value_node)
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                line = key_node.start_mark.line + 1
                if key_node.tag == _STR_TAG and key_node.value in seen:
                    duplicates.append(f"line {line}: duplicate key '{key_node.value}'")
                seen.add(key_node.value)
                lines.setdefault(format_path(path + (key_node.value,)), line)
                walk(value_node, path + (key_node.value,))
            for merged in merges:
                # `<<: *base` or `<<: [*a, *b]`: the merged keys belong to this mapping
                for m in (merged.value if isinstance(merged, yaml.SequenceNode) else [merged]):
                    walk(m, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines.setdefault(format_path(path + (i,)), item.start_mark.line + 1)
                walk(item, path + (i,))

    walk(root, ())
    return lines, duplicates


# A Flume agent configuration: Java properties whose keys start with `<agent>.sources` etc.
_PROPERTY_LINE = re.compile(r"^[\w-]+(\.[\w-]+)+\s*=")
_AGENT_PROPERTY = re.compile(r"^[\w-]+\.(sources|channels|sinks|sinkgroups)(\.|\s*=)")


def looks_like_flume_properties(text: str) -> bool:
    """Whether ``text`` is a Flume properties file (``a1.sources = r1``) rather than YAML: most of
    its non-comment lines are dotted ``key = value`` lines and one names an agent's components."""
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("#", "!"))]
    props = [ln for ln in lines if _PROPERTY_LINE.match(ln)]
    return 2 * len(props) > len(lines) and any(_AGENT_PROPERTY.match(ln) for ln in props)


def is_flume_properties(text: str, source: str = "") -> bool:
    """Whether a topology file is a Flume properties file: by its ``.properties`` name or its text."""
    return source.lower().endswith(".properties") or looks_like_flume_properties(text)


def from_flume_properties(text: str, source: str, agent: str | None, warnings: list[str] | None,
                           base_dir: str | None) -> dict:
    """Agent ``agent`` of a Flume properties file as a topology mapping (references unsubstituted).
    Raises ConfigError for a missing agent and for every conversion error; the properties not
    carried over go to ``warnings`` (one line each)."""
    from rayflume.flume_conf.convert import convert_text

    conversion = convert_text(text, agent, source=source, base_dir=base_dir)
    if conversion.errors:
        raise ConfigError(conversion.error_lines(), topology=agent)
    if warnings is not None:
        warnings.extend(conversion.warning_lines())
        warnings.extend(f"note: {line}" for line in conversion.note_lines())
    return conversion.data


def _yaml_error(source: str, exc: yaml.YAMLError) -> ConfigError:
    """One readable problem for a YAML syntax error: where, what, and the enclosing construct."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        problem += f" ({context} that starts at line {context_mark.line + 1}, column {context_mark.column + 1})"
    if "'\\t'" in problem:
        problem += "; YAML indents with spaces, not tabs"
    return ConfigError([f"{source}: invalid YAML{where}: {problem}; fix the file's syntax"])


def parse_yaml_with_lines(text: str, source: str = "<topology>") -> tuple[dict, dict[str, int]]:
    """Parse topology text with ``yaml.safe_load`` semantics.

    Returns the mapping and ``{path: line}`` for its keys and list items (see :func:`format_path`).
    Raises ConfigError with a single problem for a Flume properties file (see
    :func:`rayflume.topology.load_topology` for those), invalid YAML (with line and column), duplicate keys (one
    problem each), or a document that is not a mapping.
    """
    if is_flume_properties(text, source):
        from rayflume.flume_conf.convert import no_agent_error
        from rayflume.flume_conf.properties import parse_properties

        raise no_agent_error(source, parse_properties(text))
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        # Scan before constructing: construction flattens `<<` merges into the mapping nodes.
        lines, duplicates = _scan_nodes(node)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from None
    finally:
        loader.dispose()
    if duplicates:
        raise ConfigError([f"{source}: {d}; names must be unique" for d in duplicates])
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: a topology is a YAML mapping with name, sources, channels and "
                           f"sinks; got {describe_value(data)}"])
    return data, lines


def parse_yaml(text: str, source: str = "<topology>") -> dict:
    """Parse topology text into a mapping; see :func:`parse_yaml_with_lines` for the errors."""
    return parse_yaml_with_lines(text, source)[0]
