"""The Flume mapping table's interceptors: how each Flume interceptor type's properties become
rayflume keys (a regex_extractor's serializers become a list, in the order Flume lists them).
"""
from __future__ import annotations

from rayflume.flume_conf.tables.entries import AS_IS, LIST, ComponentMapping, Prop, Unusable


def _regex_extractor_serializers(mapping: dict, warn) -> None:
    """``serializers = s1 s2`` and ``serializers.s1.name`` ... -> a list of {name, type, pattern}."""
    names = mapping.pop("serializer_names", None)
    defined = mapping.pop("serializer_settings", {})
    if names is None:
        if defined:
            raise Unusable("serializers: the list of serializer names is missing (serializers = s1 s2)")
        return
    out = []
    for name in names:
        if name not in defined:
            raise Unusable(f"serializers.{name}: listed in serializers but has no serializers.{name}.name")
        out.append(defined.pop(name))
    for name in defined:
        warn(f"serializers.{name}.*: not in the serializers list, so Flume ignores it; not converted")
    mapping["serializers"] = out


INTERCEPTORS = (
    ComponentMapping("interceptor", "timestamp", "timestamp", (
        Prop("headerName", "header_name"), Prop("preserveExisting", "preserve_existing"))),
    ComponentMapping("interceptor", "host", "host", (
        Prop("hostHeader", "host_header"), Prop("useIP", "use_ip"), Prop("preserveExisting", "preserve_existing"))),
    ComponentMapping("interceptor", "static", "static", (
        Prop("key", "key"), Prop("value", "value"), Prop("preserveExisting", "preserve_existing"))),
    ComponentMapping("interceptor", "remove_header", "remove_header", (
        Prop("withName", "with_name"), Prop("fromList", "from_list"),
        Prop("fromListSeparator", "from_list_separator"), Prop("matching", "matching"))),
    ComponentMapping("interceptor", "org.apache.flume.sink.solr.morphline.UUIDInterceptor$Builder", "uuid", (
        Prop("headerName", "header_name"), Prop("preserveExisting", "preserve_existing"),
        Prop("prefix", "prefix"))),
    ComponentMapping("interceptor", "regex_filter", "regex_filter", (
        Prop("regex", "regex"), Prop("excludeEvents", "exclude_events"))),
    ComponentMapping("interceptor", "regex_extractor", "regex_extractor", (
        Prop("regex", "regex"),
        Prop("serializers", "serializer_names", LIST, why="the names; each becomes one entry of serializers"),
        Prop("serializers.*.name", "serializer_settings.*.name", AS_IS),
        Prop("serializers.*.type", "serializer_settings.*.type", AS_IS),
        Prop("serializers.*.pattern", "serializer_settings.*.pattern", AS_IS),
    ), finish=_regex_extractor_serializers, scratch=("serializer_names", "serializer_settings")),
    ComponentMapping("interceptor", "search_replace", "search_replace", (
        Prop("searchPattern", "search_pattern"), Prop("replaceString", "replace_string"),
        Prop("charset", "charset"))),
)
