"""Typed configuration of the ``taildir`` source, and its checks."""
from __future__ import annotations

import os
import re

from pydantic import Field, field_validator, model_validator

from rayflume.config_base import SourceConfig
from rayflume.registry import register
from rayflume.sources.taildir.source import TaildirSource


def _header_name(what: str, value: str) -> str:
    if not value:
        raise ValueError(f"taildir source: `{what}` must be a non-empty header name")
    return value


@register("source", "taildir")
class TaildirSourceConfig(SourceConfig):
    """``taildir`` (Flume's TAILDIR): tails the files of each file group, line by line, resuming
    from a position file after a restart without losing or re-reading acknowledged lines."""

    filegroups: dict[str, str] = Field(
        min_length=1, description="File group name -> absolute path whose last component is a regex "
                                  "matched against whole file names in that directory, e.g. "
                                  "'/var/log/app/.*\\.log'. The directory part is literal.")
    headers: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="File group name -> headers set on every event of that group.")
    position_file: str | None = Field(
        None, description="JSON file of acknowledged positions. None: "
                          "~/.rayflume/taildir/<topology>/<source name>.json. In a tier each instance "
                          "keeps its own, in the subdirectory <tier>/<instance> of the file's directory.")
    batch_size: int = Field(100, gt=0, description="Most lines in one batch.")
    skip_to_end: bool = Field(False, description="Start files present at start-up with no recorded "
                                                 "position at their end instead of their start.")
    byte_offset_header: bool = Field(False, description="Set header 'byteoffset' to each line's offset "
                                                        "in its file.")
    idle_timeout_s: float = Field(120.0, gt=0, description="Close a file after this long without new "
                                                           "data; a rotated-away file is finished then.")
    write_pos_interval_s: float = Field(
        0.0, ge=0, description="Write the position file at most this often. 0: on every "
                               "acknowledgement (a crash re-reads at most the batch in flight).")
    file_header: bool = Field(False, description="Set a header with the file's absolute path.")
    file_header_key: str = Field("file", description="The header `file_header` sets.")
    max_line_length_bytes: int = Field(1 << 20, gt=0, description="Longer lines are cut into pieces of "
                                                                  "this size (nothing is dropped).")
    read_ahead: bool = Field(True, description="Read and frame the next batch while the current one is "
                                               "delivered (positions still move only with acknowledgements).")

    @field_validator("filegroups")
    @classmethod
    def _groups(cls, groups: dict[str, str]) -> dict[str, str]:
        for name, spec in groups.items():
            where = f"taildir source: `filegroups.{name}`"
            if not name:
                raise ValueError("taildir source: `filegroups` has an empty group name")
            if not os.path.isabs(spec):
                raise ValueError(f"{where}: {spec!r} must be an absolute path like /var/log/app/.*\\.log")
            directory, regex = os.path.split(spec)
            if not regex:
                raise ValueError(f"{where}: {spec!r} ends with '/'; add a file name regex such as '.*'")
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(f"{where}: the file name part {regex!r} is not a valid regex ({exc})") from None
        return groups

    @field_validator("file_header_key")
    @classmethod
    def _file_header_key(cls, v: str) -> str:
        return _header_name("file_header_key", v)

    @model_validator(mode="after")
    def _headers_name_groups(self):
        unknown = sorted(set(self.headers) - set(self.filegroups))
        if unknown:
            raise ValueError(f"taildir source: `headers` names file group(s) {unknown} that are not in "
                             f"`filegroups` ({sorted(self.filegroups)}); fix the group name")
        return self

    def check(self) -> list[str]:
        if self.position_file is None:
            return []
        path = os.path.abspath(os.path.expanduser(self.position_file))
        parent = os.path.dirname(path)
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if os.path.isdir(path):
            return [f"taildir source: `position_file` {path} is a directory; name a file"]
        if parent and not os.access(parent, os.W_OK):
            return [f"taildir source: `position_file` {path}: {parent} is not writable; choose a writable "
                    f"location"]
        return []

    def build(self, name: str) -> TaildirSource:
        return TaildirSource(name, self)
