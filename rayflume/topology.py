"""Topology files: YAML -> validated, typed :class:`Topology`.

A topology is one or more tiers. A file with ``sources``/``channels``/``sinks`` at the top level
is a single tier (named ``""``); a file with ``tiers:`` groups them per tier, each with a
placement (``per_node`` on matching nodes, or ``replicas: N`` spread over matching nodes).

Validation collects every problem with its path before failing (``sources.tail.channels[1]:
unknown channel 'disk'``), in passes: each component against its typed config, then each tier's
graph (unknown, unused or undrained channels, sinks in two groups, batch sizes above a channel's
transaction capacity, duplicate names), then the tier graph (hops to unknown tiers, cycles).
Nothing starts until all pass.

Validation checks schema and graph only: it never looks at the machine it runs on (installed
commands, directories, libraries, certificate files), because a topology is validated on the
laptop that deploys it and in the controller, while its components run on other nodes. Those
checks run in each component's own actor, on its node, at start, where a failure is that
component's status error and is retried. :func:`local_environment_warnings` runs the same checks
on this machine, for ``rayflume validate`` to show as warnings.

YAML is read with ``yaml.safe_load`` semantics only, and duplicate keys are an error rather
than silently overwritten. The loader also records the line of every mapping key and list item,
so each problem in a file or text names its line (``sources.tail.channels: ... (line 7)``).
Messages are written for a Flume user's first mistakes: unknown keys suggest the declared key
meant (``transactionCapacity`` -> ``transaction_capacity``), type errors say what was expected and
what was given.

What a Flume user brings along is accepted as it is:

- a Flume properties file, given the agent to run (``load_topology(path, agent="a1")``, Flume's
  ``-n a1``), is converted by :mod:`rayflume.flume_conf.convert`; without an agent it is refused
  with directions naming the agents in the file;
- Flume's type names (``TAILDIR``, ``seq``, ``org.apache.flume.sink.hdfs.HDFSEventSink``) stand for
  rayflume's (see :mod:`rayflume.registry`); a component's config carries rayflume's name;
- name lists may be written Flume's way, space-separated (``channels: c1 c2``), in a source's
  ``channels``, a selector's channel lists and a sink group's ``sinks``;
- a component of one's own is named like a Flume class name, by import path
  (``type: my_components:NumberedSourceConfig``), by a ``rayflume.components`` entry point of an
  installed distribution, or (from Python) by the config class itself; see
  :mod:`rayflume.registry` for what the class must be. Its module reaches the cluster through the
  topology's ``runtime_env`` (``working_dir``, ``py_modules``, ``pip``, ``env_vars``; relative
  paths are relative to the topology file), applied to its controller and every component actor;
  when validating, a module not importable as is is also looked for in the runtime_env's local
  directories, so a topology validates where it is deployed from as it will run;
- ``${env:NAME}`` and ``${file:PATH}`` in any value are substituted when a file or text is loaded
  (:func:`substitute_references`), except in the keys a component reads itself on its node (the http
  source's tokens, ``metrics.token``): those stay as written, so a secret never enters the stored
  topology.
"""
from __future__ import annotations

import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from rayflume import registry
from rayflume.errors import ConfigError, read_config_file

SECTIONS = {"sources": "source", "channels": "channel", "sinks": "sink"}
TIER_KEYS = {"sources", "channels", "sinks", "sink_groups"}
TOP_LEVEL_KEYS = {"name", "metrics", "tiers", "runtime_env", "alerts", "volume"} | TIER_KEYS
# The fields of Ray's runtime environment a topology may set for its actors (see _validate_runtime_env).
RUNTIME_ENV_KEYS = ("working_dir", "py_modules", "pip", "env_vars")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
COUNTER_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
DEFAULT_METRICS_PORT = 41414
LABEL_KEY = "tier"  # `label: agent` means the node label tier=agent


@dataclass
class SinkGroup:
    name: str
    sinks: list[str]
    processor: Any  # a ProcessorConfig
    raw_processor: dict


@dataclass
class Placement:
    """Where a tier's instances run.

    ``mode`` is ``per_node`` (one instance on every alive node matching the selector, like a
    daemon set), ``replicas`` (``replicas`` instances spread over matching nodes), or ``single``
    (a single-tier topology: one instance, placed by Ray).
    """

    mode: str = "single"
    replicas: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    resource: str | None = None

    def matches(self, node: dict) -> bool:
        """Whether a ``ray.nodes()`` entry can host this tier."""
        labels = node.get("Labels") or {}
        if any(labels.get(k) != v for k, v in self.labels.items()):
            return False
        if self.resource and not (node.get("Resources") or {}).get(self.resource):
            return False
        return True

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.labels.items()]
        if self.resource:
            parts.append(f"resource {self.resource}")
        return " and ".join(parts) if parts else "any node"


@dataclass
class Tier:
    """One tier's components. ``raw`` keeps each component's YAML mapping, which is what actors
    receive (they rebuild the typed config on their side)."""

    name: str
    placement: Placement = field(default_factory=Placement)
    sources: dict[str, Any] = field(default_factory=dict)
    channels: dict[str, Any] = field(default_factory=dict)
    sinks: dict[str, Any] = field(default_factory=dict)
    sink_groups: dict[str, SinkGroup] = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    def groups(self) -> dict[str, list[str]]:
        """Every sink runner: explicit groups, plus one implicit group per ungrouped sink."""
        out = {g.name: list(g.sinks) for g in self.sink_groups.values()}
        grouped = {s for g in self.sink_groups.values() for s in g.sinks}
        for sink in self.sinks:
            if sink not in grouped:
                out[sink] = [sink]
        return out

    def hops(self) -> dict[str, str]:
        """``{sink name: target tier}`` for this tier's ``rayflume`` sinks."""
        return {n: c.tier for n, c in self.sinks.items() if getattr(c, "tier", None)}


@dataclass
class Topology:
    """A validated topology: its tiers (one, named ``""``, for a single-tier file) and settings."""

    name: str
    tiers: dict[str, Tier] = field(default_factory=dict)
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = DEFAULT_METRICS_PORT
    # the bearer token as written (a literal, or ``${env:NAME}``) or the file holding it: read by the
    # controller on its node (see rayflume._private.metrics.resolve_token); never in a repr
    metrics_token: str | None = field(default=None, repr=False)
    metrics_token_file: str | None = None
    # metrics.export: the counters exported to Prometheus (endpoint and Ray metrics); None: all
    metrics_export: tuple[str, ...] | None = None
    # volume: {header, max_values}: the header whose values the hourly volume store counts
    volume_header: str | None = None
    volume_max_values: int = 200
    # Ray's runtime environment for the controller and every component actor (user code shipped
    # with working_dir / py_modules, pip packages, env_vars); None: Ray's default environment
    runtime_env: dict | None = None
    # the ``alerts`` section (rayflume._private.alerts.AlertsConfig); None: no alerts
    alerts: object = None
    raw: dict = field(default_factory=dict)

    @property
    def tiered(self) -> bool:
        return "" not in self.tiers

    def _single(self) -> Tier:
        if self.tiered:
            raise AttributeError(f"topology '{self.name}' has tiers; use topology.tiers[name]")
        return self.tiers[""]

    # single-tier conveniences
    sources = property(lambda self: self._single().sources)
    channels = property(lambda self: self._single().channels)
    sinks = property(lambda self: self._single().sinks)
    sink_groups = property(lambda self: self._single().sink_groups)

    def groups(self) -> dict[str, list[str]]:
        return self._single().groups()


# -- YAML ------------------------------------------------------------------------------------------
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


def _from_flume_properties(text: str, source: str, agent: str | None, warnings: list[str] | None,
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


# -- ${env:NAME} and ${file:PATH} -------------------------------------------------------------------
REFERENCE_RE = re.compile(r"\$\{(env|file):([^}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _resolve_reference(kind: str, target: str, base_dir: str | None) -> str:
    """The text ``${kind:target}`` stands for, read here. Raises ValueError saying what to do."""
    if kind == "env":
        if not _ENV_NAME.match(target):
            raise ValueError(f"${{env:{target}}}: {target!r} is not an environment variable name (letters, digits "
                             f"and '_', not starting with a digit)")
        if target not in os.environ:
            raise ValueError(f"${{env:{target}}}: the environment variable {target} is not set where the topology "
                             f"is loaded; export it, or write the value itself")
        return os.environ[target]
    path = os.path.expanduser(target.strip())
    if base_dir and not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, ValueError) as exc:
        raise ValueError(f"${{file:{target}}}: cannot read {path!r} "
                         f"({getattr(exc, 'strerror', None) or type(exc).__name__}); create the file or fix the "
                         f"path (a relative path is relative to the topology file)") from None


def substitute_references(data, base_dir: str | None = None, errors: list[str] | None = None):
    """A copy of a topology mapping with every ``${env:NAME}`` and ``${file:PATH}`` (anywhere in a
    string value) replaced by what it refers to on this machine, except in the keys a component
    resolves itself on its node (:func:`rayflume.registry.self_resolved_keys`, and
    ``metrics.token``), which stay as written. A ``${file:}`` path is relative to ``base_dir``.

    Problems are added to ``errors`` as ``path: message``; without ``errors``, they raise
    ConfigError. ``data`` is not modified."""
    problems: list[str] = [] if errors is None else errors

    def resolve(value, path):
        if isinstance(value, str):
            if "${" not in value:
                return value

            def one(m):
                try:
                    return _resolve_reference(m.group(1), m.group(2), base_dir)
                except ValueError as exc:
                    problems.append(f"{path}: {exc}")
                    return m.group(0)

            return REFERENCE_RE.sub(one, value)
        if isinstance(value, dict):
            return {k: resolve(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    def component(kind, raw, path):
        if not isinstance(raw, dict):
            return resolve(raw, path)
        type_name = raw.get("type")
        kept = set(registry.self_resolved_keys(kind, type_name)) if isinstance(type_name, (str, type)) else set()
        return {k: (v if k in kept else resolve(v, f"{path}.{k}")) for k, v in raw.items()}

    def tier(tier_data, prefix):
        if not isinstance(tier_data, dict):
            return resolve(tier_data, prefix.rstrip("."))
        out = {}
        for key, value in tier_data.items():
            kind = SECTIONS.get(key)
            if kind and isinstance(value, dict):
                out[key] = {n: component(kind, raw, f"{prefix}{key}.{n}") for n, raw in value.items()}
            else:
                out[key] = resolve(value, f"{prefix}{key}")
        return out

    if not isinstance(data, dict):
        return data
    out = tier({k: v for k, v in data.items() if k not in ("tiers", "metrics")}, "")
    if isinstance(data.get("tiers"), dict):
        out["tiers"] = {t: tier(d, f"tiers.{t}.") for t, d in data["tiers"].items()}
    elif "tiers" in data:
        out["tiers"] = data["tiers"]
    if "metrics" in data:
        metrics = data["metrics"]
        out["metrics"] = ({k: (v if k == "token" else resolve(v, f"metrics.{k}")) for k, v in metrics.items()}
                          if isinstance(metrics, dict) else metrics)
    out = {k: out[k] for k in data}  # the user's order
    if problems and errors is None:
        raise ConfigError(problems)
    return out


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
    :func:`load_topology` for those), invalid YAML (with line and column), duplicate keys (one
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


def load_topology(path: str | os.PathLike, agent: str | None = None, warnings: list[str] | None = None,
                  runtime_env: dict | None = None) -> Topology:
    """Read and validate a topology file: YAML, or agent ``agent`` of a Flume properties file
    (converted; the properties it could not carry over are appended to ``warnings``). References
    (``${env:NAME}``, ``${file:PATH}``, relative to the file's directory) are substituted here, on
    this machine. ``runtime_env`` is laid over the file's (see :func:`with_runtime_env`). Raises
    ConfigError listing every problem, each with its line in the file where the path can be found
    there."""
    path = os.fspath(path)
    text = read_config_file(path, "the topology file")
    return _load_text(text, path, agent, warnings, os.path.dirname(os.path.abspath(path)), runtime_env)


def loads_topology(text: str, agent: str | None = None, warnings: list[str] | None = None) -> Topology:
    """Validate topology text (YAML, or with ``agent`` a Flume properties text); problems name
    their line in ``text``. See :func:`load_topology`."""
    return _load_text(text, "<topology>", agent, warnings, None)


def _load_text(text: str, source: str, agent: str | None, warnings: list[str] | None,
               base_dir: str | None, runtime_env: dict | None = None) -> Topology:
    if agent is not None and is_flume_properties(text, source):
        data, lines = _from_flume_properties(text, source, agent, warnings, base_dir), {}
    else:
        if agent is not None:
            raise ConfigError([f"{source}: --agent names an agent of a Flume properties file, and this is a "
                               f"rayflume topology (YAML); remove --agent"])
        data, lines = parse_yaml_with_lines(text, source=source)
    errors: list[str] = []
    data = with_runtime_env(code_paths_from(data, base_dir), runtime_env)
    with registry.code_dirs(runtime_env_code_dirs(data.get("runtime_env"))):
        data = substitute_references(data, base_dir=base_dir, errors=errors)
    if errors:
        name = data.get("name") if isinstance(data.get("name"), str) else None
        raise ConfigError([_with_line(e, lines) for e in errors], topology=name or source)
    return validate(data, source=source, lines=lines)


# -- messages --------------------------------------------------------------------------------------
def describe_value(value) -> str:
    """How a message names what the user wrote: ``the string 'mem'``, ``the number 5``..."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _snake(name: str) -> str:
    """Flume's spelling in rayflume's: ``transactionCapacity`` -> ``transaction_capacity``,
    ``hdfs.rollCount`` -> ``hdfs_roll_count``, ``SSLEnabled`` -> ``ssl_enabled``."""
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s)
    return re.sub(r"[.\-\s]+", "_", s).lower()


def suggest_key(key, known) -> str | None:
    """The declared key the user most likely meant by the unknown ``key``, or None.

    Flume's naming is tried first: camelCase to snake_case, with a ``hdfs.``-style prefix dropped,
    and durations (``rollInterval``, ``maxPenaltyMs``) in seconds ending in ``_s``, sizes ending in
    ``_bytes``; then close spellings (``chanels`` -> ``channels``).
    """
    known = [k for k in known if isinstance(k, str)]
    if not isinstance(key, str) or not known:
        return None
    forms = []
    for variant in (key, key.split(".", 1)[-1]):
        snake = _snake(variant)
        base = re.sub(r"_(ms|millis|secs?|seconds)$", "", snake)
        forms += [snake, base + "_s", snake + "_bytes", base]
    for form in forms:
        if form in known and form != key:
            return form
    for form in (_snake(key), key):
        close = difflib.get_close_matches(form, known, n=1, cutoff=0.75)
        if close:
            return close[0]
    return None


def unknown_key(key, known, what: str = "known keys") -> str:
    """The message for an unknown ``key``: a suggestion when one is close, else the keys known."""
    hint = suggest_key(key, known)
    if hint:
        seconds = " (in seconds)" if hint.endswith("_s") and not str(key).endswith("_s") else ""
        return f"unknown key; did you mean `{hint}`{seconds}?"
    return f"unknown key; {what}: {', '.join(sorted(str(k) for k in known))}"


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


def _did_you_mean(name, names) -> str:
    """``; did you mean 'x'?`` naming the one of ``names`` closest to a misspelt ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), [n for n in names if isinstance(n, str)], n=1, cutoff=0.75)
    return f"; did you mean '{close[0]}'?" if close else ""


def _with_line(error: str, lines: dict[str, int]) -> str:
    """``path: message`` with `` (line N)`` appended: the line of the path, or of its nearest
    ancestor in the file (a missing key's component). Unchanged when no line is known."""
    path, sep, message = error.partition(": ")
    p = path
    while sep and p:
        if p in lines:
            return f"{path}: {message} (line {lines[p]})"
        cut = max(p.rfind("."), p.rfind("["))
        p = p[:cut] if cut > 0 else ""
    return error


# -- component validation --------------------------------------------------------------------------
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
                          f"{hint}{_did_you_mean(type_name, known)}")
            return None
    except ValidationError as exc:
        errors.extend(_pydantic_errors(path, exc, cls.model_fields if cls is not None else {}))
        return None
    except (ValueError, TypeError, ImportError) as exc:
        errors.append(f"{path}: {exc}")
        return None
    return config


def _with_nested(config, path: str, errors: list[str]):
    """Resolve a source's interceptor and selector mappings into typed configs."""
    interceptors = []
    for i, raw in enumerate(config.interceptors):
        built = build_config("interceptor", raw, f"{path}.interceptors[{i}]", errors)
        if built is not None:
            interceptors.append(built)
    selector = build_config("selector", config.selector, f"{path}.selector", errors)
    return config.model_copy(update={"interceptors": interceptors, "selector": selector})


def local_environment_warnings(topo: Topology) -> list[str]:
    """What this machine lacks for the topology's components, as ``path: problem`` messages
    (``sources.tail: exec source: `command`: 'foo' is not installed on this node ...``); empty
    when nothing is missing.

    These are the checks of each component config's ``check()`` (commands, directories,
    libraries, certificate and token files), run here. They are warnings, not errors: the
    components run them again on their own nodes at start, and a topology whose paths exist only
    on those nodes is valid. Reads the local file system and environment; changes nothing.
    """
    out: list[str] = runtime_env_warnings(topo.runtime_env)
    for tier_name, tier in topo.tiers.items():
        prefix = f"tiers.{tier_name}." if tier_name else ""
        for section in ("sources", "channels", "sinks"):
            for comp_name, config in getattr(tier, section).items():
                check = getattr(config, "check", None)
                if callable(check):
                    out.extend(f"{prefix}{section}.{comp_name}: {msg}" for msg in check())
    return out


def validate(data: dict, source: str = "<topology>", lines: dict[str, int] | None = None) -> Topology:
    """Validate a parsed topology mapping. Raises ConfigError listing every problem as
    ``path: message``, with `` (line N)`` appended where ``lines`` (from
    :func:`parse_yaml_with_lines`) know the path. ``data`` is not modified.

    Schema and graph only: nothing on this machine is checked (see the module docstring and
    :func:`local_environment_warnings`), so the result is the same on every machine.

    A source or sink whose ``batch_size`` is not set takes at most the smallest
    ``transaction_capacity`` of its channels; the effective value is in its typed config and in
    ``Tier.raw`` (what actors receive).
    """
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: a topology is a mapping with name, sources, channels and sinks; "
                           f"got {describe_value(data)}"])
    name = data.get("name")
    if name is None:
        errors.append("name: required key is missing; give the topology a name")
        name = ""
    elif not isinstance(name, str) or not NAME_RE.match(name):
        errors.append(f"name: {name!r} is not a valid name; use letters, digits, '_', '-' and '.'")
        name = str(name)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            errors.append(f"{key}: {unknown_key(key, TOP_LEVEL_KEYS, 'a topology has')}")
    data = _split_name_lists(data)
    topo = Topology(name=name, raw=data)
    with registry.code_dirs(runtime_env_code_dirs(data.get("runtime_env"))):
        _validate_components(data, topo, errors)
    _validate_metrics(data, topo, errors)
    _validate_volume(data, topo, errors)
    _validate_runtime_env(data, topo, errors)
    from rayflume._private.alerts import (  # here: alerts imports observe, which imports metrics
        check_components,
        parse_alerts,
    )
    topo.alerts = parse_alerts(data.get("alerts"), errors)
    check_components(topo.alerts, topo.tiers, errors)
    if errors:
        raise ConfigError([_with_line(e, lines or {}) for e in errors], topology=name or source)
    return topo


def _validate_components(data: dict, topo: Topology, errors: list[str]) -> None:
    """Every tier's components and graph, and the hops between tiers, into ``topo``."""
    if "tiers" in data:
        for key in sorted(TIER_KEYS & set(data)):
            errors.append(f"{key}: with tiers, components go under a tier (tiers.<tier>.{key})")
        tiers = data.get("tiers")
        if not isinstance(tiers, dict) or not tiers:
            errors.append("tiers: expected a mapping of tier names to {placement, sources, channels, sinks}")
            tiers = {}
        for tier_name, tier_data in tiers.items():
            prefix = f"tiers.{tier_name}."
            if not isinstance(tier_name, str) or not NAME_RE.match(tier_name):
                errors.append(f"tiers.{tier_name}: invalid tier name; use letters, digits, '_', '-' and '.'")
                continue
            if not isinstance(tier_data, dict):
                errors.append(f"tiers.{tier_name}: expected a mapping with placement, sources, channels, sinks")
                continue
            known = TIER_KEYS | {"placement"}
            for key in sorted(set(tier_data) - known, key=str):
                errors.append(f"{prefix}{key}: {unknown_key(key, known, 'a tier has')}")
            tier = _validate_tier(tier_name, tier_data, prefix, errors)
            tier.placement = _validate_placement(tier_data.get("placement"), f"{prefix}placement", errors)
            topo.tiers[tier_name] = tier
        _validate_hops(topo, errors)
    else:
        topo.tiers[""] = _validate_tier("", data, "", errors)
        for tier_sink, cfg in topo.tiers[""].sinks.items():
            if getattr(cfg, "tier", None):
                errors.append(f"sinks.{tier_sink}.tier: a rayflume sink sends to another tier; it needs a "
                              f"topology with tiers")


def _names(value):
    """Flume's space-separated names (``c1 c2``) as a list; anything else as it is."""
    return value.split() if isinstance(value, str) else value


def _split_tier_lists(tier: dict) -> dict:
    if not isinstance(tier, dict):
        return tier
    out = dict(tier)
    sources = tier.get("sources")
    if isinstance(sources, dict):
        out["sources"] = {}
        for name, raw in sources.items():
            if isinstance(raw, dict):
                raw = dict(raw)
                if "channels" in raw:
                    raw["channels"] = _names(raw["channels"])
                selector = raw.get("selector")
                if isinstance(selector, dict):
                    selector = dict(selector)
                    for key in ("default", "optional", "mapping"):
                        value = selector.get(key)
                        if isinstance(value, dict):
                            selector[key] = {k: _names(v) for k, v in value.items()}
                        elif key in selector:
                            selector[key] = _names(value)
                    raw["selector"] = selector
            out["sources"][name] = raw
    groups = tier.get("sink_groups")
    if isinstance(groups, dict):
        out["sink_groups"] = {g: ({**raw, "sinks": _names(raw["sinks"])} if isinstance(raw, dict) and "sinks" in raw
                                  else raw) for g, raw in groups.items()}
    return out


def _split_name_lists(data: dict) -> dict:
    """A copy of ``data`` with Flume's space-separated name lists written as lists: a source's
    ``channels``, its selector's ``default``/``optional``/``mapping`` channel lists, a sink group's
    ``sinks``. Component names cannot contain spaces, so nothing else is meant by them."""
    if "tiers" in data and isinstance(data.get("tiers"), dict):
        return {**data, "tiers": {t: _split_tier_lists(d) for t, d in data["tiers"].items()}}
    return _split_tier_lists(data)


def _validate_tier(tier_name: str, data: dict, prefix: str, errors: list[str]) -> Tier:
    # Tier.raw holds copies of the sections: _fit_batch_sizes writes effective values there, and
    # the caller's mapping (the topology's raw, compared on redeploy) stays as written.
    tier = Tier(name=tier_name, raw={k: dict(data[k]) if isinstance(data.get(k), dict) else {}
                                     for k in TIER_KEYS})
    for section, kind in SECTIONS.items():
        entries = data.get(section) or {}
        if not isinstance(entries, dict):
            errors.append(f"{prefix}{section}: expected a mapping of {kind} names to their settings, e.g. "
                          f"{{name: {{type: ...}}}}; got {describe_value(entries)}")
            continue
        for comp_name, raw in entries.items():
            path = f"{prefix}{section}.{comp_name}"
            if not isinstance(comp_name, str) or not NAME_RE.match(comp_name):
                errors.append(f"{path}: invalid name; use letters, digits, '_', '-' and '.'")
                continue
            config = build_config(kind, raw, path, errors)
            if config is not None and kind == "source":
                config = _with_nested(config, path, errors)
            if config is not None:
                getattr(tier, section)[comp_name] = config
    # A channel that others can fill (a Kafka topic) or that is a destination itself (null,
    # Kafka) lets a tier have no source or no sink.
    optional = {"sources": any(not c.needs_source for c in tier.channels.values()),
                "sinks": any(not c.needs_sink for c in tier.channels.values())}
    for section, kind in SECTIONS.items():
        if not data.get(section) and not optional.get(section):
            errors.append(f"{prefix}{section}: at least one {kind} is required")
    _fit_batch_sizes(tier)
    _validate_groups(data, tier, prefix, errors)
    _validate_graph(data, tier, prefix, errors)
    return tier


def _fit_batch_sizes(tier: Tier) -> None:
    """Give each source and sink whose ``batch_size`` the user did not set at most the smallest
    ``transaction_capacity`` of its channels, in its typed config and in ``tier.raw``.

    Flume's first example (a netcat source, whose default batch is 1000, into a memory channel of
    transaction capacity 100) is then valid as written. A ``batch_size`` set explicitly is left
    as it is, so a conflict there is still reported by the graph check.
    """
    for section in ("sources", "sinks"):
        configs = getattr(tier, section)
        for name, cfg in configs.items():
            if "batch_size" in cfg.model_fields_set or not isinstance(getattr(cfg, "batch_size", None), int):
                continue
            channels = cfg.channels if section == "sources" else [cfg.channel]
            caps = [tier.channels[ch].transaction_capacity for ch in channels if ch in tier.channels]
            if caps and min(caps) < cfg.batch_size:
                configs[name] = cfg.model_copy(update={"batch_size": min(caps)})
                # Actors rebuild their config from this mapping, so the effective value goes here.
                tier.raw[section][name] = {**tier.raw[section][name], "batch_size": min(caps)}


def _validate_placement(raw, path: str, errors: list[str]) -> Placement:
    if raw is None:
        return Placement(mode="replicas", replicas=1)
    if not isinstance(raw, dict):
        errors.append(f"{path}: expected {{per_node: {{label: X}}}} or {{replicas: N, label: X}}; got "
                      f"{describe_value(raw)}")
        return Placement()
    known = ("per_node", "replicas", "label", "labels", "resource")
    for key in sorted(set(raw) - set(known), key=str):
        errors.append(f"{path}.{key}: {unknown_key(key, known, 'placement has')}")
    if isinstance(raw.get("per_node"), dict):
        selector_keys = ("label", "labels", "resource")
        for key in sorted(set(raw["per_node"]) - set(selector_keys), key=str):
            errors.append(f"{path}.per_node.{key}: {unknown_key(key, selector_keys, 'per_node has')}")
    if ("per_node" in raw) == ("replicas" in raw):
        errors.append(f"{path}: give exactly one of per_node or replicas")
        return Placement()
    if "per_node" in raw:
        selector, where = (raw["per_node"] if isinstance(raw["per_node"], dict) else {}), f"{path}.per_node"
        placement = Placement(mode="per_node")
    else:
        replicas = raw["replicas"]
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            errors.append(f"{path}.replicas: must be a whole number of at least 1")
            replicas = 1
        selector, where = raw, path
        placement = Placement(mode="replicas", replicas=replicas)
    label, labels, resource = selector.get("label"), selector.get("labels") or {}, selector.get("resource")
    if label is not None:
        labels = {LABEL_KEY: str(label), **labels}
    if not isinstance(labels, dict):
        errors.append(f"{where}.labels: expected a mapping of node label keys to values")
        labels = {}
    placement.labels = {str(k): str(v) for k, v in labels.items()}
    placement.resource = resource
    return placement


def _validate_hops(topo: Topology, errors: list[str]) -> None:
    """Every rayflume sink targets a known other tier with a rayflume source; no cycles."""
    edges: dict[str, set[str]] = {t: set() for t in topo.tiers}
    for tier_name, tier in topo.tiers.items():
        for sink_name, target in tier.hops().items():
            path = f"tiers.{tier_name}.sinks.{sink_name}.tier"
            if target not in topo.tiers:
                errors.append(f"{path}: unknown tier '{target}'{_did_you_mean(target, topo.tiers)}; tiers: "
                              f"{', '.join(sorted(topo.tiers))}")
                continue
            if target == tier_name:
                errors.append(f"{path}: a tier cannot send to itself")
                continue
            receivers = [n for n, c in topo.tiers[target].sources.items() if getattr(c, "receives_hops", False)]
            wanted = getattr(tier.sinks[sink_name], "source", None)
            if not receivers:
                errors.append(f"{path}: tier '{target}' has no rayflume source to receive from this sink; add "
                              f"one (type: rayflume)")
            elif wanted and wanted not in receivers:
                errors.append(f"tiers.{tier_name}.sinks.{sink_name}.source: tier '{target}' has no rayflume "
                              f"source named '{wanted}'; it has {', '.join(receivers)}")
            elif not wanted and len(receivers) > 1:
                errors.append(f"tiers.{tier_name}.sinks.{sink_name}.source: tier '{target}' has several rayflume "
                              f"sources ({', '.join(receivers)}); name one")
            edges[tier_name].add(target)
    # cycles: depth-first search over the tier graph
    state: dict[str, int] = {}

    def visit(t, trail):
        state[t] = 1
        for nxt in sorted(edges.get(t, ())):
            if state.get(nxt) == 1:
                errors.append(f"tiers: the hops form a cycle: {' -> '.join(trail + [nxt])}")
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[t] = 2

    for t in sorted(edges):
        if t not in state:
            visit(t, [t])


def _validate_groups(data: dict, topo: Tier, prefix: str, errors: list[str]) -> None:
    groups = data.get("sink_groups") or {}
    if not isinstance(groups, dict):
        errors.append(f"{prefix}sink_groups: expected a mapping of group names to {{sinks, processor}}")
        return
    owner: dict[str, str] = {}
    for gname, raw in groups.items():
        path = f"{prefix}sink_groups.{gname}"
        if not isinstance(raw, dict):
            errors.append(f"{path}: expected a mapping with 'sinks' and 'processor'; got {describe_value(raw)}")
            continue
        for key in sorted(set(raw) - {"sinks", "processor"}, key=str):
            errors.append(f"{path}.{key}: {unknown_key(key, ('sinks', 'processor'), 'a sink group has')}")
        sinks = raw.get("sinks")
        if sinks is None:
            errors.append(f"{path}: missing required key `sinks`: the list of the group's sink names")
            continue
        if not isinstance(sinks, list) or not sinks:
            example = sinks if isinstance(sinks, str) else "k1, k2"
            errors.append(f"{path}.sinks: expected a non-empty list of sink names, e.g. [{example}]; got "
                          f"{describe_value(sinks)}")
            continue
        for i, s in enumerate(sinks):
            if s not in (data.get("sinks") or {}):
                errors.append(f"{path}.sinks[{i}]: unknown sink '{s}'{_did_you_mean(s, data.get('sinks') or {})}")
            elif s in owner:
                errors.append(f"{path}.sinks[{i}]: sink '{s}' is already in group '{owner[s]}'; a sink "
                              f"belongs to at most one group")
            else:
                owner[s] = gname
        raw_proc = raw.get("processor") or {"type": "failover" if len(sinks) > 1 else "default"}
        proc = build_config("processor", raw_proc, f"{path}.processor", errors)
        if proc is None:
            continue
        for s in sorted(proc.sinks_named() - set(sinks)):
            errors.append(f"{path}.processor: names sink '{s}', which is not in the group's sinks")
        if proc.type == "default" and len(sinks) != 1:
            errors.append(f"{path}.processor.type: 'default' drives exactly one sink; use failover or "
                          f"load_balance for {len(sinks)} sinks")
        topo.sink_groups[gname] = SinkGroup(gname, list(sinks), proc, raw_proc)


def _validate_metrics(data: dict, topo: Topology, errors: list[str]) -> None:
    """``metrics: {host (or bind), port, token or token_file}``. The token's value is never put in a
    message."""
    from rayflume._private.metrics import ENV_REF

    metrics = data.get("metrics")
    if metrics is None:
        return
    known = ("host", "bind", "port", "token", "token_file", "export")
    if not isinstance(metrics, dict):
        errors.append(f"metrics: expected a mapping with 'host' and 'port' (port null disables the endpoint), "
                      f"and optionally 'token' or 'token_file'; got {describe_value(metrics)}")
        return
    unknown = sorted(set(metrics) - set(known), key=str)
    for key in unknown:
        errors.append(f"metrics.{key}: {unknown_key(key, known, 'metrics has')}")
    if unknown:
        return
    if "host" in metrics and "bind" in metrics:
        errors.append("metrics.bind: `bind` is another name for `host`; give one of them, not both")
    key = "bind" if "bind" in metrics else "host"
    host = metrics.get(key, topo.metrics_host)
    if not isinstance(host, str) or not host.strip():
        errors.append(f"metrics.{key}: expected the address to listen on, e.g. 127.0.0.1 (this machine only) or "
                      f"0.0.0.0 (every interface); got {describe_value(host)}")
    else:
        topo.metrics_host = host.strip()
    port = metrics.get("port", topo.metrics_port)
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535):
        errors.append(f"metrics.port: {port!r} is not a port number (0 picks a free port, null disables)")
    topo.metrics_port = port
    if "export" in metrics:
        export = metrics["export"]
        if not isinstance(export, list) or not export:
            errors.append(f"metrics.export: expected a non-empty list of counter names to export, e.g. "
                          f"[EventReceivedCount, EventAcceptedCount, ChannelSize, EventDrainSuccessCount]; "
                          f"leave it out to export every counter; got {describe_value(export)}")
        else:
            bad = [i for i, c in enumerate(export) if not isinstance(c, str) or not COUNTER_RE.match(c)]
            for i in bad:
                errors.append(f"metrics.export[{i}]: expected a counter name such as EventReceivedCount; got "
                              f"{describe_value(export[i])}")
            if not bad:
                topo.metrics_export = tuple(dict.fromkeys(export))
    token, token_file = metrics.get("token"), metrics.get("token_file")
    if token is not None and token_file is not None:
        errors.append("metrics.token: give `token` or `token_file`, not both (token_file keeps the secret out of "
                      "the topology file)")
    elif token is not None:
        ref = ENV_REF.match(token.strip()) if isinstance(token, str) else None
        if not isinstance(token, str) or not token.strip():
            if isinstance(token, (int, float)) and not isinstance(token, bool):
                what = "a number (quote it to make it a string)"  # not echoed: it is a secret
            else:
                what = "an empty string" if isinstance(token, str) else describe_value(token)
            errors.append(f"metrics.token: expected the bearer token as a string, or ${{env:NAME}} to read it from "
                          f"the environment variable NAME where the controller runs; got {what}")
        elif ref is None and "${" in token:
            errors.append("metrics.token: write ${env:NAME} (NAME: letters, digits and '_', not starting with a "
                          "digit) to read the token from an environment variable; anything else is taken as the "
                          "token itself and must not contain '${'")
        else:
            topo.metrics_token = token.strip()
    elif token_file is not None:
        if not isinstance(token_file, str) or not token_file.strip():
            errors.append(f"metrics.token_file: expected the path of a file holding the token; got "
                          f"{describe_value(token_file)}")
        elif not os.path.isabs(token_file.strip()):
            errors.append(f"metrics.token_file: {token_file!r} is relative; give an absolute path (the controller "
                          f"reads it on its node, from a working directory of Ray's choosing)")
        else:
            topo.metrics_token_file = token_file.strip()


# Counters every built-in component of a kind reports (plus what the controller adds): a
# metrics.export name close to one of these but not one of them is likely misspelt.
COMMON_COUNTERS = ("EventReceivedCount", "EventAcceptedCount", "AppendBatchReceivedCount",
                   "AppendBatchAcceptedCount", "ChannelWriteFail", "EventReadFail", "GenericProcessingFail",
                   "OptionalChannelWriteFail", "EventDroppedByInterceptorCount", "EventRejectedCount",
                   "ConnectionCreatedCount", "ConnectionClosedCount", "ConnectionFailedCount", "BatchEmptyCount",
                   "BatchUnderflowCount", "BatchCompleteCount", "EventDrainAttemptCount", "EventDrainSuccessCount",
                   "EventWriteFail", "ChannelReadFail", "RollbackCount", "DuplicateDeliveryCount", "ChannelSize",
                   "ChannelCapacity", "ChannelFillPercentage", "EventPutAttemptCount", "EventPutSuccessCount",
                   "EventTakeAttemptCount", "EventTakeSuccessCount", "Restarts", "Unhealthy", "ChannelLost",
                   "StartTime", "StopTime", "Paused")


def metrics_export_warnings(topo: Topology) -> list[str]:
    """``metrics.export[i]: ...`` for each exported name that is not a common counter but close to
    one (a likely misspelling, which would export nothing). Not errors: components, custom ones
    above all, report counters of their own, and any name is accepted."""
    out = []
    for i, name in enumerate(topo.metrics_export or ()):
        if name not in COMMON_COUNTERS:
            hint = _did_you_mean(name, COMMON_COUNTERS)
            if hint:
                out.append(f"metrics.export[{i}]: no built-in component reports {name!r}{hint} (a name no "
                           f"component reports exports nothing)")
    return out


def _validate_volume(data: dict, topo: Topology, errors: list[str]) -> None:
    """``volume: {header: NAME, max_values: N}``: every source of every tier counts its accepted
    events per value of header NAME (after its interceptors), at most N values (1 to 10,000,
    default 200) per source, the rest as ``(other)``. Without it, volume is per source only."""
    volume = data.get("volume")
    if volume is None:
        return
    if not isinstance(volume, dict):
        errors.append(f"volume: expected a mapping such as {{header: category}}; got {describe_value(volume)}")
        return
    known = ("header", "max_values")
    for key in sorted(set(volume) - set(known), key=str):
        errors.append(f"volume.{key}: {unknown_key(key, known, 'volume has')}")
    header = volume.get("header")
    if header is not None:
        if not isinstance(header, str) or not header.strip():
            errors.append(f"volume.header: expected the name of the event header whose values are counted, e.g. "
                          f"category; got {describe_value(header)}")
        else:
            topo.volume_header = header.strip()
    max_values = volume.get("max_values", topo.volume_max_values)
    if not isinstance(max_values, int) or isinstance(max_values, bool) or not 1 <= max_values <= 10_000:
        errors.append(f"volume.max_values: expected a whole number from 1 to 10000 (header values counted per "
                      f"source; further values count as (other)); got {describe_value(max_values)}")
    else:
        topo.volume_max_values = max_values


def _is_local_path(value) -> bool:
    """Whether a runtime_env entry is a path on this machine (not a URI such as s3://b/code.zip)."""
    return isinstance(value, str) and bool(value.strip()) and "://" not in value


def merge_runtime_envs(topology_env: dict | None, deploy_env: dict | None) -> dict | None:
    """A topology's runtime_env with the deploying call's settings on top (``env_vars`` merged per
    variable, the call's winning; its other keys replace the topology's); None when neither has one."""
    if not topology_env and not deploy_env:
        return None
    merged = dict(topology_env or {})
    for key, value in (deploy_env or {}).items():
        merged[key] = {**merged.get(key, {}), **value} if key == "env_vars" else value
    return merged


def with_runtime_env(data, runtime_env: dict | None, base_dir: str | None = None):
    """A copy of the topology mapping ``data`` with ``runtime_env`` (a deploying call's, its local
    paths relative to ``base_dir``, default the current directory) laid over its own (see
    :func:`merge_runtime_envs`); ``data`` itself when ``runtime_env`` is empty."""
    if not runtime_env or not isinstance(data, dict):
        return data
    call_env = code_paths_from({"runtime_env": runtime_env}, base_dir or os.getcwd())["runtime_env"]
    return {**data, "runtime_env": merge_runtime_envs(data.get("runtime_env"), call_env)}


def runtime_env_code_dirs(runtime_env) -> list[str]:
    """The directories of this machine from which a topology's runtime_env ships Python code, as
    ``sys.path`` entries: ``working_dir`` itself, and the parent of each ``py_modules`` package
    directory or ``.py`` file. Entries that are URIs or that do not exist here are left out."""
    if not isinstance(runtime_env, dict):
        return []
    out = []
    working_dir = runtime_env.get("working_dir")
    if _is_local_path(working_dir) and os.path.isdir(os.path.expanduser(working_dir)):
        out.append(os.path.abspath(os.path.expanduser(working_dir)))
    modules = runtime_env.get("py_modules")
    for entry in modules if isinstance(modules, list) else []:
        if not _is_local_path(entry):
            continue
        local = os.path.abspath(os.path.expanduser(entry)).rstrip(os.sep)
        if os.path.isdir(local) or (local.endswith(".py") and os.path.isfile(local)):
            out.append(os.path.dirname(local))
    return list(dict.fromkeys(out))


def code_paths_from(data, base_dir: str | None):
    """A copy of a topology mapping whose runtime_env ``working_dir`` and ``py_modules`` local
    paths, when relative, are made relative to ``base_dir`` (the directory of the file it was read
    from; Ray would take them relative to wherever the deploying process runs)."""
    env = data.get("runtime_env") if isinstance(data, dict) else None
    if not base_dir or not isinstance(env, dict):
        return data

    def anchored(value):
        if not _is_local_path(value):
            return value
        value = os.path.expanduser(value)
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(base_dir, value))

    env = dict(env)
    if "working_dir" in env:
        env["working_dir"] = anchored(env["working_dir"])
    if isinstance(env.get("py_modules"), list):
        env["py_modules"] = [anchored(m) for m in env["py_modules"]]
    return {**data, "runtime_env": env}


def _validate_runtime_env(data: dict, topo: Topology, errors: list[str]) -> None:
    """``runtime_env: {working_dir, py_modules, pip, env_vars}``: Ray's runtime environment for the
    topology's controller and every component actor; how one's own components reach the nodes.
    Schema only: whether the paths exist is checked where the topology is deployed (the deploying
    process uploads them) and by :func:`local_environment_warnings`."""
    env = data.get("runtime_env")
    if env is None:
        return
    what_for = ("Ray's runtime environment for the topology's actors: working_dir (a directory of your code), "
                "py_modules (a list of package directories), pip (a list of packages) or env_vars (a mapping)")
    if not isinstance(env, dict):
        errors.append(f"runtime_env: expected a mapping with {what_for}; got {describe_value(env)}")
        return
    ok = True
    for key in sorted(set(env) - set(RUNTIME_ENV_KEYS), key=str):
        errors.append(f"runtime_env.{key}: {unknown_key(key, RUNTIME_ENV_KEYS, 'runtime_env has')}")
        ok = False
    working_dir = env.get("working_dir")
    if "working_dir" in env and (not isinstance(working_dir, str) or not working_dir.strip()):
        errors.append(f"runtime_env.working_dir: expected the path of a directory holding your modules (relative "
                      f"to the topology file), or a URI such as s3://bucket/code.zip; got "
                      f"{describe_value(working_dir)}")
        ok = False
    modules = env.get("py_modules")
    if "py_modules" in env:
        if not isinstance(modules, list) or not modules:
            example = modules if isinstance(modules, str) and modules.strip() else "./my_components"
            errors.append(f"runtime_env.py_modules: expected a non-empty list of package directories, .py files "
                          f"or URIs, e.g. [{example}]; got {describe_value(modules)}")
            ok = False
        else:
            for i, entry in enumerate(modules):
                if not isinstance(entry, str) or not entry.strip():
                    errors.append(f"runtime_env.py_modules[{i}]: expected the path of a package directory, a .py "
                                  f"file or a URI; got {describe_value(entry)}")
                    ok = False
    pip = env.get("pip")
    if "pip" in env:
        if isinstance(pip, list):
            for i, package in enumerate(pip):
                if not isinstance(package, str) or not package.strip():
                    errors.append(f"runtime_env.pip[{i}]: expected a requirement such as 'requests>=2'; got "
                                  f"{describe_value(package)}")
                    ok = False
        elif not (isinstance(pip, str) and pip.strip()) and not (isinstance(pip, dict) and "packages" in pip):
            errors.append(f"runtime_env.pip: expected a list of requirements, e.g. [requests>=2], the path of a "
                          f"requirements.txt, or a mapping with `packages`; got {describe_value(pip)}")
            ok = False
    env_vars = env.get("env_vars")
    if "env_vars" in env:
        if not isinstance(env_vars, dict):
            errors.append(f"runtime_env.env_vars: expected a mapping of variable names to string values, e.g. "
                          f"{{MY_SETTING: '1'}}; got {describe_value(env_vars)}")
            ok = False
        else:
            for var, value in env_vars.items():
                if not isinstance(var, str) or not _ENV_NAME.match(var):
                    errors.append(f"runtime_env.env_vars.{var}: not an environment variable name (letters, "
                                  f"digits and '_', not starting with a digit)")
                    ok = False
                elif not isinstance(value, str):
                    errors.append(f"runtime_env.env_vars.{var}: Ray takes string values only; quote it "
                                  f"({var}: \"{value}\"); got {describe_value(value)}")
                    ok = False
    if ok:
        topo.runtime_env = dict(env)


def runtime_env_warnings(runtime_env) -> list[str]:
    """Local paths of a topology's runtime_env that do not exist on this machine, from which the
    deploying process uploads them, as ``path: problem`` messages."""
    if not isinstance(runtime_env, dict):
        return []
    out = []
    working_dir = runtime_env.get("working_dir")
    if _is_local_path(working_dir) and not os.path.isdir(os.path.expanduser(working_dir)):
        out.append(f"runtime_env.working_dir: {working_dir!r} is not a directory on this machine; deploying from "
                   f"here would fail to upload it")
    modules = runtime_env.get("py_modules")
    for i, entry in enumerate(modules if isinstance(modules, list) else []):
        if _is_local_path(entry) and not os.path.exists(os.path.expanduser(entry)):
            out.append(f"runtime_env.py_modules[{i}]: {entry!r} does not exist on this machine; deploying from "
                       f"here would fail to upload it")
    return out


def _validate_graph(data: dict, topo: Tier, prefix: str, errors: list[str]) -> None:
    raw_sinks = data.get("sinks") or {}
    channel_names = set((data.get("channels") or {}))
    written, drained = set(), set()

    for sname, raw in (data.get("sources") or {}).items():
        # Channel references are checked from the raw mapping, so they are reported even when
        # the source's own keys had errors.
        listed = raw.get("channels") if isinstance(raw, dict) else None
        listed = [c for c in listed if isinstance(c, str)] if isinstance(listed, list) else []
        for i, ch in enumerate(listed):
            if ch not in channel_names:
                errors.append(f"{prefix}sources.{sname}.channels[{i}]: unknown channel '{ch}'"
                              f"{_did_you_mean(ch, channel_names)}")
            written.add(ch)
        if len(set(listed)) != len(listed):
            errors.append(f"{prefix}sources.{sname}.channels: a channel is listed twice")
        cfg = topo.sources.get(sname)
        if cfg is None:
            continue
        if cfg.selector is not None:
            for ch in sorted(cfg.selector.channels_named() - set(cfg.channels)):
                errors.append(f"{prefix}sources.{sname}.selector: names channel '{ch}', which is not in the "
                              f"source's channels")
        for ch in cfg.channels:
            chan = topo.channels.get(ch)
            if chan is not None and cfg.batch_size > chan.transaction_capacity:
                errors.append(f"{prefix}sources.{sname}.batch_size: {cfg.batch_size} exceeds transaction_capacity "
                              f"{chan.transaction_capacity} of channel '{ch}'; lower batch_size or raise "
                              f"transaction_capacity")
    for sname, raw in raw_sinks.items():
        ch = raw.get("channel") if isinstance(raw, dict) else None
        if ch is not None and ch not in channel_names:
            errors.append(f"{prefix}sinks.{sname}.channel: unknown channel '{ch}'{_did_you_mean(ch, channel_names)}")
        drained.add(ch)
        cfg = topo.sinks.get(sname)
        chan = topo.channels.get(ch)
        if cfg is not None and chan is not None and cfg.batch_size > chan.transaction_capacity:
            errors.append(f"{prefix}sinks.{sname}.batch_size: {cfg.batch_size} exceeds transaction_capacity "
                          f"{chan.transaction_capacity} of channel '{ch}'; lower batch_size or raise "
                          f"transaction_capacity")
    for ch in sorted(channel_names):
        cfg = topo.channels.get(ch)
        if ch not in written and ch not in drained and (cfg is None or cfg.needs_source):
            errors.append(f"{prefix}channels.{ch}: unused channel: no source writes to it and no sink drains it")
        elif ch not in drained and getattr(cfg, "needs_sink", True):
            errors.append(f"{prefix}channels.{ch}: no sink drains this channel; it would fill up and stop its "
                          f"sources. Add a sink with channel: {ch}")

    seen: dict[str, str] = {}
    for section in ("sources", "channels", "sinks", "sink_groups"):
        entries = data.get(section)
        for n in (entries if isinstance(entries, dict) else {}):
            if n in seen and seen[n] != section:
                errors.append(f"{prefix}{section}.{n}: the name '{n}' is also used in {seen[n]}; names must be "
                              f"unique across sources, channels, sinks and sink groups")
            seen.setdefault(n, section)
