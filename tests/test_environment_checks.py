"""Validation checks schema and graph only; what a component needs from its machine (a command,
a directory, certificate and token files) is checked by the component on its own node at start,
where a failure is its status error and is retried. ``local_environment_warnings`` runs the same
checks on this machine, as warnings."""
from __future__ import annotations

import os

import pytest

from rayflume.registry import lookup
from rayflume.sources.base import SourceContext
from rayflume.topology import local_environment_warnings, validate
from tests.channel_contract import wait_until

MISSING_COMMAND = "no-such-command-rayflume-xyz"


def _topology(tmp_path, **sources) -> dict:
    return {"name": "env", "sources": sources, "channels": {"mem": {"type": "memory"}},
            "sinks": {"out": {"type": "file_roll", "channel": "mem", "directory": str(tmp_path / "out")}},
            "metrics": {"port": None}}


def test_validate_accepts_a_command_and_a_directory_missing_here_and_warns_about_both(tmp_path):
    spool = tmp_path / "not-yet" / "spool"
    topo = validate(_topology(
        tmp_path,
        tail={"type": "exec", "command": f"{MISSING_COMMAND} -F /var/log/app.log", "channels": ["mem"]},
        spool={"type": "spooldir", "spool_dir": str(spool), "channels": ["mem"]}))
    assert set(topo.sources) == {"tail", "spool"}
    warnings = local_environment_warnings(topo)
    assert len(warnings) == 2, warnings
    tail = next(w for w in warnings if w.startswith("sources.tail: "))
    assert MISSING_COMMAND in tail and "`command`" in tail and "PATH=" in tail
    spool_warning = next(w for w in warnings if w.startswith("sources.spool: "))
    assert str(spool) in spool_warning and "not a directory" in spool_warning

    spool.mkdir(parents=True)  # the same topology, with the directory here: only the command is left
    assert [w.split(":")[0] for w in local_environment_warnings(topo)] == ["sources.tail"]


def test_warnings_name_the_tier_and_cover_tls_and_token_files(tmp_path):
    topo = validate({"name": "tt", "tiers": {"edge": {
        "placement": {"replicas": 1},
        "sources": {
            "web": {"type": "http", "port": 0, "channels": ["mem"],
                    "auth_token_file": str(tmp_path / "token")},
            "logs": {"type": "syslog_tcp", "port": 0, "channels": ["mem"], "ssl": True,
                     "ssl_certfile": str(tmp_path / "cert.pem"), "ssl_keyfile": str(tmp_path / "key.pem")}},
        "channels": {"mem": {"type": "memory"}},
        "sinks": {"out": {"type": "null", "channel": "mem"}}}}})
    warnings = local_environment_warnings(topo)
    assert any(w.startswith("tiers.edge.sources.web: ") and "auth_token_file" in w for w in warnings), warnings
    assert any(w.startswith("tiers.edge.sources.logs: ") and "ssl_certfile" in w for w in warnings), warnings


def test_a_source_is_built_without_its_files_and_its_start_names_what_is_missing(tmp_path):
    """Building happens in the actor's constructor, which must not fail on the machine's state;
    start() (retried by the actor) reports the missing file and succeeds once it is there."""
    token = tmp_path / "token"
    config = lookup("source", "http").model_validate({"type": "http", "port": 0, "channels": ["c"],
                                                      "auth_token_file": str(token)})
    source = config.build("web")  # no file read here
    with pytest.raises(Exception, match=r"http source 'web': `auth_token_file` .* not readable on this node"):
        source.start(SourceContext("web"))
    token.write_text("s3cret\n")
    source.start(SourceContext("web"))
    try:
        assert source._tokens == {"default": b"s3cret"}
    finally:
        source.stop()

    tls = lookup("source", "syslog_tcp").model_validate(
        {"type": "syslog_tcp", "port": 0, "channels": ["c"], "ssl": True, "ssl_certfile": str(tmp_path / "c.pem")})
    with pytest.raises(Exception, match=r"syslog_tcp source 'logs': `ssl_certfile` .* not readable on this node"):
        tls.build("logs").start(SourceContext("logs"))


# -- on Ray ------------------------------------------------------------------------------------------

def test_missing_command_is_the_sources_status_and_a_late_spool_dir_starts(deployed, tmp_path):
    spool = tmp_path / "spool"
    handle = deployed(_topology(
        tmp_path,
        tail={"type": "exec", "command": f"{MISSING_COMMAND} --follow", "channels": ["mem"]},
        gen={"type": "sequence", "total_events": 50, "batch_size": 10, "channels": ["mem"]},
        spool={"type": "spooldir", "spool_dir": str(spool), "poll_delay_s": 0.1, "channels": ["mem"]}))
    out = tmp_path / "out"

    def source(name):
        return next(c for c in handle.status()["components"] if c["kind"] == "SOURCE" and c["name"] == name)

    def lines():
        return sorted(x for f in out.iterdir() for x in f.read_bytes().splitlines()) if out.is_dir() else []

    wait_until(lambda: (source("tail").get("error") or "") and (source("spool").get("error") or ""),
               timeout_s=60, interval_s=0.5, what="both sources to report why they cannot start")
    tail = source("tail")
    assert tail["state"] == "ALIVE" and tail["restarts"] == 0, tail  # the actor lives on
    assert "exec source 'tail'" in tail["error"] and MISSING_COMMAND in tail["error"], tail
    assert "not installed on this node" in tail["error"] and "PATH=" in tail["error"], tail
    spool_entry = source("spool")
    assert spool_entry["state"] == "ALIVE" and spool_entry["restarts"] == 0, spool_entry
    assert str(spool) in spool_entry["error"] and "not a directory on this node" in spool_entry["error"]

    # the rest of the pipeline runs meanwhile
    wait_until(lambda: len(lines()) == 50, timeout_s=60, interval_s=0.5, what="the sequence's events")
    assert lines() == sorted(str(i).encode() for i in range(50))

    # the directory appears (whole, with its file): a retry starts the source, which delivers the file
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "a.log").write_text("".join(f"spooled-{i}\n" for i in range(20)))
    os.rename(staging, spool)
    wait_until(lambda: len(lines()) == 70, timeout_s=120, interval_s=0.5, what="the spooled file's lines")
    assert sorted(x for x in lines() if x.startswith(b"spooled-")) == sorted(f"spooled-{i}".encode()
                                                                             for i in range(20))
    wait_until(lambda: not source("spool").get("error"), timeout_s=30, interval_s=0.5,
               what="the spooldir source's error to clear")
    assert source("spool")["restarts"] == 0
    assert MISSING_COMMAND in (source("tail").get("error") or "")  # still retried, still said
