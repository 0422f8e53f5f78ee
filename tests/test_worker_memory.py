"""The local Ray that rayflume starts gives its worker processes an allocator that hands freed
Arrow memory back to the system (rayflume._private.actor_base.local_ray_env), and leaves the
starting process's environment as it was."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rayflume._private.actor_base import WORKER_MEMORY_ENV, local_ray_env


def test_the_block_sets_the_defaults_and_restores_the_environment(monkeypatch):
    for key in WORKER_MEMORY_ENV:
        monkeypatch.delenv(key, raising=False)
    with local_ray_env():
        assert all(os.environ[k] == v for k, v in WORKER_MEMORY_ENV.items())
    assert not set(WORKER_MEMORY_ENV) & set(os.environ)


def test_a_value_the_user_set_is_kept(monkeypatch):
    key = next(iter(WORKER_MEMORY_ENV))
    monkeypatch.setenv(key, "250")
    with local_ray_env():
        assert os.environ[key] == "250"
    assert os.environ[key] == "250"


# Run in a fresh interpreter: ensure_ray must start the Ray (the test session's Ray is running).
SCRIPT = textwrap.dedent("""
    import json, os
    import ray
    from rayflume._private.actor_base import WORKER_MEMORY_ENV
    from rayflume.api import ensure_ray

    def anon_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) >> 10 for line in f if line.startswith("RssAnon"))

    @ray.remote(num_cpus=0)
    class Allocates:
        def run(self):
            import numpy as np
            import pyarrow as pa
            before = anon_mb()
            buffers = [pa.allocate_buffer(8 << 20) for _ in range(12)]
            for b in buffers:
                np.frombuffer(b, dtype=np.uint8)[:] = 1  # touch every page
            peak = anon_mb()
            del buffers, b
            return {"before": before, "peak": peak, "after": anon_mb(),
                    "env": {k: os.environ.get(k) for k in WORKER_MEMORY_ENV}}

    ensure_ray("local", num_cpus=1)
    try:
        out = ray.get(Allocates.remote().run.remote(), timeout=120)
        out["driver_env"] = {k: os.environ.get(k) for k in WORKER_MEMORY_ENV}
        print(json.dumps(out))
    finally:
        ray.shutdown()
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_of_the_local_ray_hand_freed_arrow_memory_back():
    env = {k: v for k, v in os.environ.items() if k not in WORKER_MEMORY_ENV}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["env"] == WORKER_MEMORY_ENV, out
    assert out["driver_env"] == {k: None for k in WORKER_MEMORY_ENV}, out
    # 96 MB were touched, then freed: with pyarrow's allocator defaults they stay resident
    assert out["peak"] - out["before"] >= 80, out
    assert out["after"] - out["before"] < 30, out
