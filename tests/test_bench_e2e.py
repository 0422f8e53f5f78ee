"""scripts/bench_e2e.py as a correctness test on a small file: taildir -> file channel (fsync per
commit) -> hdfs (local, text) delivers every numbered line once and in order, and the checker it
uses finds a lost, a repeated and a reordered line."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
sys.path.insert(0, SCRIPTS)
import bench_e2e  # noqa: E402

sys.path.remove(SCRIPTS)


def test_every_line_delivered_once_in_order(ray_local, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYFLUME_BENCH_CACHE", str(tmp_path / "cache"))
    r = bench_e2e.run_e2e(lines=30_000, batch=2_000, timeout_s=120)
    assert r["lines_delivered"] == 30_000  # run_e2e checked each number, once and in order
    assert r["mb_per_s"] > 0 and r["with_startup_mb_per_s"] < r["mb_per_s"]
    assert {"source/tail", "channel/disk", "controller"} <= set(r["peak_rss_mb"])
    assert all(mb > 30 for mb in r["peak_rss_mb"].values())
    assert r["peak_rss_ray_total_mb"] > sum(r["peak_rss_mb"].values())
    # pyarrow loads pandas (when installed) in each process on its first pa.array, ~37 MB each; the
    # agent's actors keep it out (rayflume._private.actors.keep_pandas_out_of_pyarrow)
    assert set(r["pandas_loaded"]) == {"source/tail", "channel/disk", "sinks/out"}, r["pandas_loaded"]
    if importlib.util.find_spec("pandas") is not None:
        assert not any(r["pandas_loaded"].values()), r["pandas_loaded"]
    # the log is cached: a second ask returns the same file
    assert bench_e2e.numbered_log(30_000) == bench_e2e.numbered_log(30_000)


def write_lines(directory, numbers, per_file: int) -> None:
    os.makedirs(directory, exist_ok=True)
    for k in range(0, len(numbers), per_file):
        path = os.path.join(directory, f"part{k:06d}")
        with open(path, "wb") as f:
            f.writelines(b"%010d line\n" % n for n in numbers[k:k + per_file])
        os.utime(path, ns=(k, k))  # files are taken in the order they were closed


@pytest.mark.parametrize("numbers, problem", [
    ([0, 1, 3, 4], "1 missing"),
    ([0, 1, 2, 2, 3, 4], "1 duplicates"),
    ([0, 2, 1, 3, 4], "in order: False"),
])
def test_the_checker_finds_loss_duplicates_and_disorder(tmp_path, numbers, problem):
    write_lines(tmp_path / "ok", list(range(5)), per_file=2)
    assert bench_e2e.check_delivered(str(tmp_path / "ok"), 5) == 5
    write_lines(tmp_path / "bad", numbers, per_file=2)
    with pytest.raises(AssertionError, match=problem):
        bench_e2e.check_delivered(str(tmp_path / "bad"), 5)
