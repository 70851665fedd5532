"""The daemon's memory measures: malloc arenas, start-up pages, the figures it reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.daemon.memory import limit_malloc_arenas, memory_figures
from tests.edge_agent.support import fixture_bytes

REPO = Path(__file__).resolve().parents[2]


def test_arena_cap_is_applied_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas(2) is True  # Debian's glibc: mallopt() accepted the cap


_ARENAS_CHILD = r"""
import json, sys, threading, time
from edge_agent.daemon.memory import limit_malloc_arenas, malloc_arenas
capped = sys.argv[1] == "cap" and limit_malloc_arenas()
def allocate():
    blocks = [bytearray(1000) for _ in range(2000)]
    time.sleep(0.2)  # the threads hold their blocks at the same time
threads = [threading.Thread(target=allocate) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"capped": capped, "arenas": malloc_arenas()}))
"""


@pytest.mark.parametrize("mode", ["cap", "none"])
def test_malloc_arenas_reads_back_the_cap_when_threads_allocate(mode: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run([sys.executable, "-c", _ARENAS_CHILD, mode], capture_output=True,
                          text=True, timeout=60, check=False, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if mode == "cap":
        assert out == {"capped": True, "arenas": 1}
    else:
        assert out["arenas"] > 1  # glibc's default: threads that allocate get arenas of their own


def test_operator_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas(2) is True


_RELEASE_CHILD = r"""
import json, sys
import numpy as np
from edge_agent.daemon.memory import memory_figures, release_startup_pages
from edge_agent.inference.runtime import TfliteModel
model = TfliteModel(open(sys.argv[1], "rb").read())
x = np.linspace(-1, 1, 16, dtype=np.float32)
before_y = model.reconstruct(x)
before = memory_figures()
released = release_startup_pages()
after = memory_figures()
after_y = model.reconstruct(x)  # the unmapped library pages come back on use
print(json.dumps({"released": released, "before": before.__dict__, "after": after.__dict__,
                  "same": bool((before_y == after_y).all())}))
"""


def test_releasing_startup_pages_shrinks_the_file_backed_part_and_changes_nothing_else(
    tmp_path: Path,
) -> None:
    model = tmp_path / "model.tflite"
    model.write_bytes(fixture_bytes("ae_float32_w8c2.tflite"))
    done = subprocess.run([sys.executable, "-c", _RELEASE_CHILD, str(model)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["same"]
    assert out["released"] > 1_000_000  # numpy's and the runtime's start-up pages at least
    assert out["after"]["file"] < out["before"]["file"]
    assert out["after"]["anonymous"] <= out["before"]["anonymous"] + 1_000_000


def test_memory_figures_add_up() -> None:
    figures = memory_figures()
    assert figures is not None
    assert 0 < figures.anonymous <= figures.rss
    assert figures.file == figures.rss - figures.anonymous
    assert 0 < figures.pss <= figures.rss


_DEFERRED_CHILD = r"""
import json, sys
import edge_agent.comms.mqtt  # imports paho, which imports urllib.request
loaded_with_paho = sorted(m for m in ("http.client", "email", "email.parser") if m in sys.modules)
import urllib.request
from urllib.request import Request  # the stand-in loads the real module on first use
proxies = urllib.request.getproxies()
print(json.dumps({"loaded_with_paho": loaded_with_paho, "proxies": isinstance(proxies, dict),
                  "request": Request.__module__,
                  "real": type(sys.modules["urllib.request"]).__name__,
                  "http_client_after_use": "http.client" in sys.modules}))
"""


def test_paho_loads_without_urllib_request_which_still_works_when_used() -> None:
    done = subprocess.run([sys.executable, "-c", _DEFERRED_CHILD], capture_output=True,
                          text=True, timeout=60, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["loaded_with_paho"] == []  # http.client and email stay out of the daemon
    assert out["proxies"] and out["request"] == "urllib.request"
    assert out["real"] == "module" and out["http_client_after_use"]


_QUANTILE_CHILD = r"""
import json, sys
import numpy as np
with_numpy = "numpy.ma" in sys.modules  # numpy 1.x loads it with numpy; 2.x only on use
from edge_agent.detect.records import quantiles
values = np.random.default_rng(1).lognormal(size=999)
ours = quantiles(values, (0.0, 0.5, 0.99, 1.0))
print(json.dumps({"ours": ours, "loaded_numpy_ma": "numpy.ma" in sys.modules and not with_numpy,
                  "reference": np.quantile(values, [0.0, 0.5, 0.99, 1.0]).tolist()}))
"""


def test_latency_quantiles_equal_numpys_without_loading_numpy_ma() -> None:
    done = subprocess.run([sys.executable, "-c", _QUANTILE_CHILD], capture_output=True,
                          text=True, timeout=60, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["loaded_numpy_ma"] is False  # checked before np.quantile ran for the reference
    assert out["ours"] == out["reference"]
