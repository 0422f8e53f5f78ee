"""The ``taildir`` position file: where it is by default, and what it holds both ways.

The file is JSON, ``{"format": 1, "source": <name>, "files": [...]}`` with one entry per tracked
identity (``dev, ino, pos, path, group, fp_len, fp``; ``pos`` is the acknowledged position). It is
replaced atomically (:func:`~rayflume.sources._files.storage.write_json_atomic`: temp file, fsync,
rename, fsync of the directory), so a crash at any instant leaves a whole old or new version.
Reading it back keeps every well-formed entry and reports each malformed one (that file is then
tailed as if never seen); a file that does not parse at all is the source's to move aside.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable

from rayflume.sources._files.storage import write_json_atomic
from rayflume.sources.taildir.tracked import _EMPTY_FP, _Tracked

POSITION_FORMAT = 1


def default_position_file(name: str, topology: str = "") -> str:
    base = os.path.join(os.path.expanduser("~"), ".rayflume", "taildir")
    return os.path.join(base, topology, f"{name}.json") if topology else os.path.join(base, f"{name}.json")


def stored_positions(data, path: str, report: Callable[[str], None]) -> dict:
    """``{(dev, ino): {pos, path, group, fp_len, fp}}`` from the parsed position file at ``path``
    (None: there is none); a malformed entry is reported and left out."""
    if data is None:
        return {}
    entries = data.get("files", []) if isinstance(data, dict) else data
    out = {}
    for e in entries if isinstance(entries, list) else []:
        try:
            key = (int(e["dev"]), int(e["ino"]))
            out[key] = {"pos": int(e["pos"]), "path": str(e["path"]), "group": str(e.get("group", "")),
                        "fp_len": int(e.get("fp_len", 0)), "fp": str(e.get("fp", _EMPTY_FP))}
        except (KeyError, TypeError, ValueError):
            report(f"position file {path}: ignoring a malformed entry {e!r}")
    return out


def write_positions(path: str, source: str, files: Iterable[_Tracked]) -> None:
    """Replace the position file at ``path`` with the acknowledged positions of ``files``; OSError
    when that failed (the old version is then still whole)."""
    doc = {"format": POSITION_FORMAT, "source": source,
           "files": [t.entry() for t in sorted(files, key=lambda t: t.key)]}
    write_json_atomic(path, doc)
