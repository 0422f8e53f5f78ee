"""scripts/bench.py's command line: every pipeline the README's Speed table lists is accepted, and
`all` covers them all. Parsing only: no benchmark runs, no Ray starts, no broker."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def readme_pipelines() -> list[str]:
    """The pipeline names of the README's Speed table: the `name` opening each row's first cell."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = re.search(r"^## Speed\s*$(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README has no '## Speed' section"
    names = re.findall(r"^\|\s*`([^`]+)`", section.group(1), re.M)
    assert names, "no pipeline rows found in the README's Speed table"
    return names


README_PIPELINES = readme_pipelines()


@pytest.fixture(scope="module")
def bench():
    """scripts/bench.py as a module (importing it starts nothing)."""
    if SCRIPTS not in sys.path:
        sys.path.insert(0, SCRIPTS)
    module = sys.modules.get("bench")
    if module is None:
        spec = importlib.util.spec_from_file_location("bench", os.path.join(SCRIPTS, "bench.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = module
        spec.loader.exec_module(module)
    return module


def test_readme_table_is_parsed():
    assert {"memory", "kafka-sink"} <= set(README_PIPELINES)
    assert len(README_PIPELINES) == len(set(README_PIPELINES))


def test_help_runs_and_names_every_pipeline():
    r = subprocess.run([sys.executable, os.path.join(SCRIPTS, "bench.py"), "--help"], env=ENV, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout
    for name in [*README_PIPELINES, "all", "--quick"]:
        assert name in r.stdout, f"{name!r} missing from bench.py --help"


@pytest.mark.parametrize("name", README_PIPELINES)
@pytest.mark.parametrize("extra", [[], ["--quick"]], ids=["plain", "quick"])
def test_every_readme_pipeline_is_accepted(bench, name, extra):
    """`bench.py NAME` as the README documents it parses, all the way into the harness that runs
    NAME (no 'unrecognized arguments'), and runs NAME."""
    steps = bench.parse_args([name, *extra])
    assert len(steps) == 1
    assert name in steps[0].names
    assert bool(getattr(steps[0].args, "quick", False)) == bool(extra)
    if steps[0].module is not None:
        # the harness's own entry point takes what it parsed
        assert callable(getattr(bench.harness(steps[0].module), "measure", None))


@pytest.mark.parametrize("name", README_PIPELINES)
def test_pipeline_help(bench, name, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args([name, "--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_unknown_pipeline_is_refused(bench, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(["no-such-pipeline"])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [[], ["--quick"], ["--quick", "--seconds", "3"]])
def test_all_runs_every_readme_pipeline(bench, extra):
    steps = bench.parse_args(["all", *extra])
    names = [n for step in steps for n in step.names]
    assert sorted(names) == sorted(README_PIPELINES), "bench.py all must run every pipeline the README lists"
    for step in steps:
        assert bool(step.args.quick) == ("--quick" in extra)
        if "--seconds" in extra and hasattr(step.args, "seconds"):
            assert step.args.seconds == 3.0
