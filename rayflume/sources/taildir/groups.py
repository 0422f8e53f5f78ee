"""The ``taildir`` source's file groups and what a look at their directories finds.

A group names the files matched by a regex (against the whole file name) in one literal
directory. :func:`list_matches` lists, by identity (device, inode), every regular file of the
groups: a file matched by several groups belongs to the first, and a directory that does not
exist (yet) is no error. :func:`find_identity` finds an identity again under any name in a
directory, as a file rotated away (``app.log`` -> ``app.log.1``) is. Neither opens nor reads a
file: what the source does with what they find is the source's.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class FileGroup:
    """Files named by ``pattern`` (a regex matched against the whole file name) in ``directory``."""

    name: str
    directory: str
    pattern: re.Pattern
    headers: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, spec: str, headers: dict | None = None) -> "FileGroup":
        directory, regex = os.path.split(spec)
        return cls(name, directory, re.compile(regex), dict(headers or {}))


def list_matches(groups: list[FileGroup], report: Callable[[str], None]) -> dict:
    """``{(dev, ino): (path, group, stat)}`` for every regular file matching a group; a file
    matching several groups belongs to the first. A directory that cannot be listed (other than
    one that does not exist) is reported and skipped."""
    found = {}
    for g in groups:
        try:
            names = sorted(os.listdir(g.directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            report(f"cannot list directory {g.directory} of file group '{g.name}': {exc}")
            continue
        for fname in names:
            if not g.pattern.fullmatch(fname):
                continue
            path = os.path.join(g.directory, fname)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            key = (st.st_dev, st.st_ino)
            if key not in found:
                found[key] = (path, g.name, st)
    return found


def find_identity(directory: str, key: tuple[int, int]) -> tuple[str, os.stat_result] | None:
    """``(path, stat)`` of the regular file of identity ``key`` under any name in ``directory``;
    None when there is none (or the directory cannot be listed)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for entry in entries:
        try:
            st = entry.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == key and stat.S_ISREG(st.st_mode):
            return entry.path, st
    return None
