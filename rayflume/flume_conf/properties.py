"""Java properties files, read as ``java.util.Properties.load`` reads them, with line numbers.

Comment lines start with ``#`` or ``!``; a key ends at the first unescaped ``=``, ``:`` or
whitespace; a line ending in an odd number of backslashes continues on the next line; ``\\t``,
``\\n``, ``\\uXXXX`` and ``\\x`` (any other character, taken literally) are unescaped. Unlike Java,
trailing whitespace of a value is removed (Flume users never mean it, and it breaks numbers).
"""
from __future__ import annotations

from dataclasses import dataclass

_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


@dataclass(frozen=True)
class Property:
    key: str
    value: str
    line: int  # 1-based line where the property starts


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch != "\\" or i + 1 == len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "u" and len(text) >= i + 6:
            try:
                out.append(chr(int(text[i + 2:i + 6], 16)))
                i += 6
                continue
            except ValueError:
                pass  # not four hex digits: Java's loader would refuse it; keep the "u" literally
        out.append(_ESCAPES.get(nxt, nxt))
        i += 2
    return "".join(out)


def _logical_lines(text: str):
    """``(first line number, text)`` of each logical line: continuations joined, comments and
    blank lines left out."""
    pending, start = None, 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.lstrip(" \t\f")
        if pending is None:
            if not line or line[0] in "#!":
                continue
            start = number
            pending = ""
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            pending += line[:-1]
            continue
        yield start, pending + line
        pending = None
    if pending is not None:
        yield start, pending


def _split(line: str) -> tuple[str, str]:
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "=: \t\f":
            break
        i += 1
    key, rest = line[:i], line[i:]
    rest = rest.lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return _unescape(key), _unescape(rest).rstrip()


def parse_properties(text: str) -> list[Property]:
    """Every property of ``text`` in file order (a key written twice appears twice; in Java the
    last one wins)."""
    out = []
    for line_no, line in _logical_lines(text):
        key, value = _split(line)
        if key:
            out.append(Property(key, value, line_no))
    return out
