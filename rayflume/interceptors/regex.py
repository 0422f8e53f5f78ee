"""Flume's regex interceptors, vectorised: ``regex_filter``, ``regex_extractor``, ``search_replace``.

All three run ``pyarrow.compute`` regex kernels over the whole batch. Arrow's engine is RE2, not
Java's: patterns are checked when the config is validated, and a pattern RE2 cannot run is
reported with what to change (RE2 has no look-arounds ``(?=`` ``(?!`` ``(?<=`` ``(?<!``, no
back-references ``\\1``, no possessive quantifiers ``*+`` or atomic groups ``(?>``, no Java
classes like ``\\p{Alpha}`` (use ``[[:alpha:]]``), no ``\\Z`` (use ``\\z`` or ``$``), and at most
1000 repetitions in ``{n,m}``). Everything else Flume users write (classes, anchors, ``(?i)``,
named groups ``(?<name>...)``, lazy quantifiers) works.

Bodies are matched as UTF-8 text, as Flume does (``new String(body, UTF-8)``): a body that is
not valid UTF-8 is decoded with replacement characters for matching (only such batches take a
per-event decoding path). Matching is a search anywhere in the body (Java ``Matcher.find()``);
anchor with ``^...$`` for a whole-body match.

* ``regex_filter`` (``regex`` ``.*``, ``exclude_events`` false): keeps the events whose body
  matches (or, with ``exclude_events``, drops them).
* ``regex_extractor`` (``regex``, ``serializers``): the capturing groups of the first match
  become headers, group *i* through serializer *i* (``{name, type, pattern}``); an event that
  does not match is unchanged. ``type: default`` copies the text (Flume's pass-through);
  ``type: millis`` (Flume's ``RegexExtractorInterceptorMillisSerializer``) parses it with
  ``pattern`` into epoch milliseconds. ``pattern`` is a Joda/Java ``SimpleDateFormat`` pattern as
  in Flume (``yyyy-MM-dd HH:mm:ss``, ``dd/MMM/yyyy:HH:mm:ss Z``, ``SSS`` for milliseconds; letters
  y M d H h m s S a Z E D and quoted text are supported), or, if it contains ``%``, a C
  ``strptime`` format (``%Y-%m-%d %H:%M:%S``). Times without a zone are in ``timezone`` (an IANA
  name or ``+HH:MM``; default: the agent's local zone, as Flume's JVM default). A value that does
  not parse sets no header. Parsing is vectorised with ``pyarrow.compute.strptime``; patterns
  with fractions of a second are parsed once per distinct value in Python.
* ``search_replace`` (``search_pattern``, ``replace_string``, ``charset`` UTF-8): replaces every
  match in the body (Java ``Matcher.replaceAll``). ``replace_string`` uses Java's syntax:
  ``$1`` or ``${name}`` for a group (groups 0-9), ``\\$`` and ``\\\\`` for literal ``$`` and
  ``\\``. With ``charset`` UTF-8 bodies are text (invalid bytes become U+FFFD, as in Flume);
  ISO-8859-1 and US-ASCII match byte by byte when the pattern and replacement are ASCII; other
  cases decode and re-encode per event (slower). Unlike Java, RE2 does not replace an empty match
  that directly follows a match (``a*`` -> ``-`` turns ``baaac`` into ``-b-c-``, Java gives
  ``-b--c-``).

Runtime objects hold no mutable state once built, so one instance may be used from several
threads.
"""
from __future__ import annotations

import codecs
import datetime as _dt
import os
import re
import time
import zoneinfo

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rayflume.config_base import InterceptorConfig
from rayflume.event import EventBatch
from rayflume.interceptors.base import Interceptor
from rayflume.interceptors.headers import set_header
from rayflume.registry import register

_HINTS = (
    ("(?=", "look-ahead (?=...) is not supported by RE2"),
    ("(?!", "negative look-ahead (?!...) is not supported by RE2"),
    ("(?<=", "look-behind (?<=...) is not supported by RE2"),
    ("(?<!", "negative look-behind (?<!...) is not supported by RE2"),
    ("(?>", "atomic groups (?>...) are not supported by RE2"),
    ("*+", "possessive quantifiers (*+, ++, ?+) are not supported by RE2; use * or +"),
    ("++", "possessive quantifiers (*+, ++, ?+) are not supported by RE2; use * or +"),
    ("?+", "possessive quantifiers (*+, ++, ?+) are not supported by RE2; use * or +"),
    ("\\p{", "Java character classes such as \\p{Alpha} are not supported; use POSIX ones such as [[:alpha:]]"),
    ("\\Z", "\\Z is not supported by RE2; use \\z or $"),
    ("\\G", "\\G is not supported by RE2"),
    ("\\h", "\\h is not supported by RE2; use [ \\t]"),
    ("\\k<", "named back-references \\k<name> are not supported by RE2"),
    ("repetition size", "RE2 allows at most 1000 repetitions in {n,m}"),
)


def check_re2(component: str, key: str, pattern: str) -> str:
    """``pattern`` if RE2 (Arrow's regex engine) compiles it; else a ValueError saying why."""
    try:
        pc.match_substring_regex(pa.array([""], pa.string()), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        text = str(exc)
        hints = []
        for needle, hint in _HINTS:
            if (needle in pattern or needle in text) and hint not in hints:
                hints.append(hint)
        if re.search(r"invalid escape sequence: \\[1-9]", text) or re.search(r"(?<!\\)\\[1-9]", pattern):
            hints.append("back-references such as \\1 are not supported by RE2")
        advice = ("; ".join(hints) + ". Arrow's regex engine is RE2: rewrite the pattern without that construct"
                  if hints else "fix the pattern (Arrow's regex engine is RE2)")
        raise ValueError(f"interceptor '{component}': `{key}` {pattern!r} is not a valid RE2 regular expression "
                         f"({text.replace('Invalid regular expression: ', '')}); {advice}") from None
    return pattern


def body_text(body: pa.Array) -> pa.Array:
    """The bodies as UTF-8 strings (zero-copy when valid; otherwise decoded with replacement)."""
    try:
        return body.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([None if b is None else b.decode("utf-8", "replace") for b in body.to_pylist()], pa.string())


def capture_groups(pattern: str) -> tuple[str, list[str | None]]:
    """``pattern`` with every capturing group named ``g1``, ``g2``, ... (Arrow's extract_regex
    needs names), and the original name of each group (None when it had none)."""
    out = []
    names: list[str | None] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            if pattern.startswith("\\Q", i):
                end = pattern.find("\\E", i + 2)
                end = n if end < 0 else end + 2
                out.append(pattern[i:end])
                i = end
                continue
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if c == "[" and pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                if end >= 0:
                    out.append(pattern[i:end + 2])
                    i = end + 2
                    continue
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            # a ']' right after '[' or '[^' is a literal
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):
                out.append("]")
                i += 1
            continue
        if c == "(":
            m = re.match(r"\(\?P?<([A-Za-z_][A-Za-z0-9_]*)>", pattern[i:])
            if m is not None:
                names.append(m.group(1))
                out.append(f"(?P<g{len(names)}>")
                i += m.end()
                continue
            if not pattern.startswith("(?", i):
                names.append(None)
                out.append(f"(?P<g{len(names)}>")
                i += 1
                continue
        out.append(c)
        i += 1
    return "".join(out), names


def java_replacement(replacement: str, group_names: list[str | None], component: str = "search_replace") -> str:
    """Java ``Matcher.replaceAll`` replacement syntax -> RE2's rewrite syntax."""
    out = []
    i, n = 0, len(replacement)
    while i < n:
        c = replacement[i]
        if c == "\\":
            if i + 1 >= n:
                raise ValueError(f"interceptor '{component}': `replace_string` ends with a lone backslash; "
                                 f"write \\\\ for a literal backslash")
            nxt = replacement[i + 1]
            out.append("\\\\" if nxt == "\\" else nxt)
            i += 2
            continue
        if c == "$":
            if i + 1 < n and replacement[i + 1].isdigit():
                group = int(replacement[i + 1])
                i += 2
            elif replacement.startswith("${", i):
                end = replacement.find("}", i)
                name = replacement[i + 2:end] if end > 0 else ""
                if name not in group_names:
                    raise ValueError(f"interceptor '{component}': `replace_string` refers to group ${{{name}}}, "
                                     f"which `search_pattern` does not define")
                group = group_names.index(name) + 1
                i = end + 1
            else:
                raise ValueError(f"interceptor '{component}': `replace_string` has a '$' that is not a group "
                                 f"reference; write \\$ for a literal dollar sign")
            if group > len(group_names):
                raise ValueError(f"interceptor '{component}': `replace_string` refers to group {group} but "
                                 f"`search_pattern` has {len(group_names)} group(s)")
            if group > 9:
                raise ValueError(f"interceptor '{component}': `replace_string` refers to group {group}; RE2 "
                                 f"replacements reach groups 0-9 only")
            out.append(f"\\{group}")
            continue
        out.append(c)
        i += 1
    return "".join(out)


# -- dates -----------------------------------------------------------------------------------------

_JAVA_LETTERS = {"y": None, "M": None, "d": "%d", "H": "%H", "h": "%I", "m": "%M", "s": "%S", "S": "%f",
                 "a": "%p", "Z": "%z", "E": None, "D": "%j"}


def java_date_pattern(pattern: str) -> str:
    """A Joda/Java date pattern (``yyyy-MM-dd HH:mm:ss.SSS``) as a strptime format."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "'":
            if pattern.startswith("''", i):  # '' is a literal quote
                out.append("'")
                i += 2
                continue
            literal = []
            i += 1
            while True:
                if i >= n:
                    raise ValueError(f"unterminated quoted text in date pattern {pattern!r}")
                if pattern[i] == "'":
                    if pattern.startswith("''", i):
                        literal.append("'")
                        i += 2
                        continue
                    i += 1
                    break
                literal.append(pattern[i])
                i += 1
            out.append("".join(literal).replace("%", "%%"))
            continue
        if c.isalpha():
            j = i
            while j < n and pattern[j] == c:
                j += 1
            count = j - i
            if c not in _JAVA_LETTERS:
                raise ValueError(f"date pattern letter {c!r} in {pattern!r} is not supported; use y M d H h m s "
                                 f"S a Z E D, or a strptime format with %")
            if c == "y":
                out.append("%y" if count == 2 else "%Y")
            elif c == "M":
                out.append("%B" if count >= 4 else "%b" if count == 3 else "%m")
            elif c == "E":
                out.append("%A" if count >= 4 else "%a")
            else:
                out.append(_JAVA_LETTERS[c])
            i = j
            continue
        out.append("%%" if c == "%" else c)
        i += 1
    return "".join(out)


def local_zone() -> str:
    """The agent's time zone: an IANA name when it can be found, else a fixed ``+HH:MM``."""
    candidates = []
    if os.environ.get("TZ"):
        candidates.append(os.environ["TZ"].lstrip(":"))
    target = os.path.realpath("/etc/localtime")
    if "zoneinfo/" in target:
        candidates.append(target.split("zoneinfo/", 1)[1])
    for name in candidates:
        try:
            zoneinfo.ZoneInfo(name)
            return name
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            continue
    offset = -time.altzone if time.daylight and time.localtime().tm_isdst else -time.timezone
    if offset == 0:
        return "UTC"
    sign = "+" if offset >= 0 else "-"
    return f"{sign}{abs(offset) // 3600:02d}:{abs(offset) % 3600 // 60:02d}"


def _tzinfo(zone: str) -> _dt.tzinfo:
    m = re.fullmatch(r"([+-])(\d{2}):(\d{2})", zone)
    if m:
        delta = _dt.timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
        return _dt.timezone(delta if m.group(1) == "+" else -delta)
    return zoneinfo.ZoneInfo(zone)


class MillisParser:
    """Parses date text into epoch-millisecond strings, a batch at a time (null where it fails)."""

    def __init__(self, fmt: str, zone: str):
        self.fmt = fmt
        self.zone = zone
        self.has_zone = "%z" in fmt
        self.python_only = "%f" in fmt
        self._tz = _tzinfo(zone)

    def _one(self, text: str) -> int | None:
        try:
            value = _dt.datetime.strptime(text, self.fmt)
        except ValueError:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=self._tz)
        return int(value.replace(microsecond=0).timestamp()) * 1000 + value.microsecond // 1000

    def parse(self, values: pa.Array) -> pa.Array:
        if len(values) == 0:
            return pa.array([], pa.string())
        if not self.python_only:
            try:
                ts = pc.strptime(values, format=self.fmt, unit="ms", error_is_null=True)
                if not self.has_zone:
                    ts = pc.assume_timezone(ts, timezone=self.zone, ambiguous="earliest", nonexistent="earliest")
                return ts.cast(pa.int64()).cast(pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                pass  # a directive Arrow's strptime lacks: parse per distinct value below
        distinct = pc.unique(values).drop_null()
        parsed = pa.array([self._one(v) for v in distinct.to_pylist()], pa.int64()).cast(pa.string())
        return parsed.take(pc.index_in(values, value_set=distinct))


# -- regex_filter ----------------------------------------------------------------------------------

class RegexFilterInterceptor(Interceptor):
    """Keeps events whose body matches ``regex`` (drops them with ``exclude_events``)."""

    def __init__(self, regex: str = ".*", exclude_events: bool = False):
        self.regex = regex
        self.exclude_events = exclude_events
        self._matches_all = regex in (".*", "")

    def intercept(self, batch: EventBatch) -> EventBatch:
        if len(batch) == 0:
            return batch
        if self._matches_all:
            return batch.slice(0, 0) if self.exclude_events else batch
        matched = pc.fill_null(pc.match_substring_regex(body_text(batch.body), self.regex), False)
        if self.exclude_events:
            matched = pc.invert(matched)
        return batch.filter(matched)


@register("interceptor", "regex_filter")
class RegexFilterInterceptorConfig(InterceptorConfig):
    """``regex_filter``: keep (or with ``exclude_events`` drop) events whose body matches ``regex``."""

    regex: str = Field(".*", description="RE2 pattern searched in the body (UTF-8 text).")
    exclude_events: bool = Field(False, description="Drop the matching events instead of keeping them.")

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str) -> str:
        return check_re2("regex_filter", "regex", v)

    def build(self) -> RegexFilterInterceptor:
        return RegexFilterInterceptor(self.regex, self.exclude_events)


# -- regex_extractor -------------------------------------------------------------------------------

_PASS_THROUGH = ("default", "org.apache.flume.interceptor.RegexExtractorInterceptorPassThroughSerializer")
_MILLIS = ("millis", "org.apache.flume.interceptor.RegexExtractorInterceptorMillisSerializer")


class SerializerConfig(BaseModel):
    """One group -> header mapping of ``regex_extractor``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Header that receives the group.")
    type: str = Field("default", description="default (the text) or millis (epoch ms from `pattern`).")
    pattern: str | None = Field(None, description="millis: Joda/Java date pattern, or a strptime format with %.")
    timezone: str | None = Field(None, description="millis: zone of times without one (IANA name or +HH:MM); "
                                                   "default the agent's local zone.")

    @model_validator(mode="after")
    def _check(self):
        if self.type not in _PASS_THROUGH + _MILLIS:
            raise ValueError(f"interceptor 'regex_extractor': serializer {self.name!r}: `type` {self.type!r} is "
                             f"unknown; use default or millis")
        if self.type in _MILLIS:
            if not self.pattern:
                raise ValueError(f"interceptor 'regex_extractor': serializer {self.name!r} of type millis needs a "
                                 f"`pattern`, e.g. 'yyyy-MM-dd HH:mm:ss'")
            try:
                self.strptime_format()
            except ValueError as exc:
                raise ValueError(f"interceptor 'regex_extractor': serializer {self.name!r}: {exc}") from None
        elif self.pattern is not None:
            raise ValueError(f"interceptor 'regex_extractor': serializer {self.name!r}: `pattern` is only used "
                             f"with type millis")
        if self.timezone is not None:
            try:
                _tzinfo(self.timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"interceptor 'regex_extractor': serializer {self.name!r}: `timezone` "
                                 f"{self.timezone!r} is not an IANA zone name or +HH:MM offset") from None
        return self

    @property
    def millis(self) -> bool:
        return self.type in _MILLIS

    def strptime_format(self) -> str:
        return self.pattern if "%" in self.pattern else java_date_pattern(self.pattern)


class RegexExtractorInterceptor(Interceptor):
    """Sets headers from the capturing groups of the first match of ``regex`` in the body.

    ``serializers``: one ``(header name, MillisParser or None)`` per group, in group order.
    """

    def __init__(self, regex: str, serializers: list[tuple[str, MillisParser | None]]):
        self.regex = regex
        self.named_regex, _ = capture_groups(regex)
        self.serializers = list(serializers)

    def intercept(self, batch: EventBatch) -> EventBatch:
        if len(batch) == 0 or not self.serializers:
            return batch
        found = pc.extract_regex(body_text(batch.body), self.named_regex)
        for i, (header, parser) in enumerate(self.serializers):
            values = found.field(f"g{i + 1}")
            if found.null_count:
                # extract_regex leaves the fields of non-matching rows undefined: mask them.
                values = pc.if_else(found.is_valid(), values, pa.scalar(None, pa.string()))
            if parser is not None:
                values = parser.parse(values)
            if values.null_count == len(values):
                continue
            batch = set_header(batch, header, values)
        return batch


@register("interceptor", "regex_extractor")
class RegexExtractorInterceptorConfig(InterceptorConfig):
    """``regex_extractor``: the regex's groups become headers through ``serializers`` (one per group,
    in order: a list, or a mapping ``{s1: {...}, s2: {...}}`` in Flume's order)."""

    regex: str = Field(description="RE2 pattern searched in the body; its capturing groups feed the serializers.")
    serializers: list[SerializerConfig] = Field(description="One per capturing group: {name, type, pattern}.")

    @field_validator("serializers", mode="before")
    @classmethod
    def _mapping(cls, v):
        if isinstance(v, dict):
            return list(v.values())
        return v

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str) -> str:
        check_re2("regex_extractor", "regex", v)
        return v

    @model_validator(mode="after")
    def _groups(self):
        named, names = capture_groups(self.regex)
        check_re2("regex_extractor", "regex", named)
        if not self.serializers:
            raise ValueError("interceptor 'regex_extractor': `serializers` is empty; give one per capturing group")
        if len(self.serializers) > len(names):
            raise ValueError(f"interceptor 'regex_extractor': {len(self.serializers)} serializers but `regex` has "
                             f"{len(names)} capturing group(s); each serializer takes the group in its position")
        return self

    def build(self) -> RegexExtractorInterceptor:
        zone = None
        serializers = []
        for s in self.serializers:
            parser = None
            if s.millis:
                if s.timezone is None and zone is None:
                    zone = local_zone()
                parser = MillisParser(s.strptime_format(), s.timezone or zone)
            serializers.append((s.name, parser))
        return RegexExtractorInterceptor(self.regex, serializers)


# -- search_replace --------------------------------------------------------------------------------

_BYTE_CHARSETS = ("latin-1", "iso8859-1", "ascii")


class SearchReplaceInterceptor(Interceptor):
    """Replaces every match of ``search_pattern`` in the body with ``replacement`` (RE2 syntax,
    already translated from Java's)."""

    def __init__(self, search_pattern: str, replacement: str, charset: str = "utf-8"):
        self.search_pattern = search_pattern
        self.replacement = replacement
        self.charset = codecs.lookup(charset).name
        # RE2 reads patterns and replacements as Latin-1 on binary input: exact only in ASCII.
        self._bytewise = (self.charset in _BYTE_CHARSETS and search_pattern.isascii() and replacement.isascii())

    def intercept(self, batch: EventBatch) -> EventBatch:
        if len(batch) == 0:
            return batch
        body = batch.body
        if self.charset == "utf-8":
            out = pc.replace_substring_regex(body_text(body), self.search_pattern, self.replacement)
        elif self._bytewise:
            # RE2 matches binary input byte by byte (Latin-1), which is exactly these charsets.
            out = pc.replace_substring_regex(body, self.search_pattern, self.replacement)
        else:
            text = pa.array([None if b is None else b.decode(self.charset, "replace") for b in body.to_pylist()],
                            pa.string())
            replaced = pc.replace_substring_regex(text, self.search_pattern, self.replacement)
            out = pa.array([None if t is None else t.encode(self.charset, "replace") for t in replaced.to_pylist()],
                           pa.binary())
        return batch.with_body(out.cast(pa.binary()) if out.type != pa.binary() else out)


@register("interceptor", "search_replace")
class SearchReplaceInterceptorConfig(InterceptorConfig):
    """``search_replace``: Java ``replaceAll`` on the body with an RE2 pattern."""

    search_pattern: str = Field(min_length=1, description="RE2 pattern to replace.")
    replace_string: str = Field("", description="Replacement; $1 / ${name} refer to groups (Java syntax).")
    charset: str = Field("UTF-8", description="Charset of the bodies.")

    @field_validator("search_pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return check_re2("search_replace", "search_pattern", v)

    @field_validator("charset")
    @classmethod
    def _charset(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"interceptor 'search_replace': `charset` {v!r} is unknown; use e.g. UTF-8 or "
                             f"ISO-8859-1") from None
        return v

    @model_validator(mode="after")
    def _replacement(self):
        self.rewrite()
        return self

    def rewrite(self) -> str:
        _, names = capture_groups(self.search_pattern)
        return java_replacement(self.replace_string, names)

    def build(self) -> SearchReplaceInterceptor:
        return SearchReplaceInterceptor(self.search_pattern, self.rewrite(), self.charset)
