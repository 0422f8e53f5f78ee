"""examples/notebook.ipynb, executed end to end in a real Jupyter kernel (nbclient), with its outputs
checked: the frame has a row for every component, the plot is an image (and a PNG file), the tap
returned events, and dropping the views with an interceptor halves the throughput."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # a Jupyter kernel with a Ray of its own, about 30 s (-m slow)

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"


def text_of(cell) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def test_the_example_notebook_runs_end_to_end(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel runs in tmp_path (the notebook writes pipeline.png there) and starts a Ray of its own.
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    printed = "\n".join(text_of(cell) for cell in code)

    assert "components: ['mem', 'out', 'web']" in printed
    assert int(re.search(r"history rows: (\d+)", printed).group(1)) >= 9  # 3 components, 3 samples or more
    plot_cell = next(cell for cell in code if "handle.plot(" in cell.source)
    assert any("image/png" in out.get("data", {}) for out in plot_cell.outputs), "the plot is shown"
    assert (tmp_path / "pipeline.png").stat().st_size > 10_000
    assert "tapped events: 5" in printed
    tap_cell = next(cell for cell in code if 'handle.tap("out", 5)' in cell.source)
    assert any("action=" in out.get("data", {}).get("text/plain", "") for out in tap_cell.outputs)

    before, after, ratio = re.search(r"delivered per second: ([\d,]+) before, ([\d,]+) after \(([\d.]+) of before\)",
                                     printed).groups()
    assert int(before.replace(",", "")) > 0
    assert 0.25 < float(ratio) < 0.8, f"half of the events are views: {before} before, {after} after"
    assert "views tapped after the change: 0" in printed
    assert re.search(r"stopped: \d+ events delivered", printed)
