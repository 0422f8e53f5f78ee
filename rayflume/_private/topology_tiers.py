"""A topology's tiers (:class:`~rayflume.topology.Tier`): each tier's components, built by
:mod:`rayflume._private.topology_components`, its sink groups and, in a file with ``tiers:``, its
placement (``per_node``, or ``replicas: N``, on nodes matching a label or resource).

A tier's graph and the hops between tiers are checked by :mod:`rayflume._private.topology_graph`.
Flume's space-separated name lists (``channels: c1 c2``) are split first (:func:`split_name_lists`).
A source or sink without an explicit ``batch_size`` is fitted to its channels'
``transaction_capacity`` here, in its typed config and in ``Tier.raw`` (what actors receive).
"""
from __future__ import annotations

from rayflume._private.topology_components import build_config, with_nested
from rayflume._private.topology_graph import validate_graph, validate_hops
from rayflume._private.topology_messages import describe_value, did_you_mean, unknown_key
from rayflume._private.topology_model import (
    LABEL_KEY,
    NAME_RE,
    SECTIONS,
    TIER_KEYS,
    Placement,
    SinkGroup,
    Tier,
    Topology,
)


def validate_components(data: dict, topo: Topology, errors: list[str]) -> None:
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
        validate_hops(topo, errors)
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


def split_name_lists(data: dict) -> dict:
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
                config = with_nested(config, path, errors)
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
    # A section that is not a mapping was reported above; the checks below see it as empty.
    data = {**data, **{section: {} for section in SECTIONS if not isinstance(data.get(section) or {}, dict)}}
    _validate_groups(data, tier, prefix, errors)
    validate_graph(data, tier, prefix, errors)
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
                errors.append(f"{path}.sinks[{i}]: unknown sink '{s}'{did_you_mean(s, data.get('sinks') or {})}")
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
