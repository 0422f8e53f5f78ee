"""Check an installation the way a new user meets it: every module imports, every shipped
topology and every YAML block of the README validates through the CLI.

Run by .ci/run in a fresh virtualenv that has only what pyproject.toml declares, so an import
that pyproject.toml does not declare fails here. Exits non-zero, naming what failed.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_topologies(readme: Path) -> list[str]:
    """The README's ```yaml blocks that are whole topologies (they have a top-level name)."""
    blocks = re.findall(r"```yaml\n(.*?)```", readme.read_text(), flags=re.S)
    return [b for b in blocks if re.search(r"^name:", b, flags=re.M)]


def main() -> int:
    import rayflume

    failures = []
    modules = [m.name for m in pkgutil.walk_packages(rayflume.__path__, "rayflume.")]
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            failures.append(f"import {name}: {type(exc).__name__}: {exc}")
    print(f"imported {len(modules) - len(failures)} of {len(modules)} modules")

    files = sorted(str(p) for p in (ROOT / "topologies").glob("*.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(readme_topologies(ROOT / "README.md")):
            path = Path(tmp) / f"readme-{i}.yaml"
            path.write_text(text)
            files.append(str(path))
        for path in files:
            r = subprocess.run([sys.executable, "-m", "rayflume.cli", "validate", path],
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0 or "Traceback" in r.stderr:
                failures.append(f"rayflume validate {path} exited {r.returncode}:\n{r.stdout}{r.stderr}")
        print(f"validated {len(files)} topologies (topologies/*.yaml and the README's)")

    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
