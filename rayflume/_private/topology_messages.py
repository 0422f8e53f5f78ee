"""The wording of topology problems: how a value is named (:func:`describe_value`), which key was
meant by an unknown one (:func:`suggest_key`, Flume's camelCase spellings first), and the line of
the file a problem's path is on (:func:`with_line`).

Every validation module words its ``path: message`` problems with these, so that one mistake reads
the same wherever it is made. Pure functions of their arguments.
"""
from __future__ import annotations

import difflib
import re


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


def did_you_mean(name, names) -> str:
    """``; did you mean 'x'?`` naming the one of ``names`` closest to a misspelt ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), [n for n in names if isinstance(n, str)], n=1, cutoff=0.75)
    return f"; did you mean '{close[0]}'?" if close else ""


def with_line(error: str, lines: dict[str, int]) -> str:
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
