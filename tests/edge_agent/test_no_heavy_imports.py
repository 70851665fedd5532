"""The agent never loads TensorFlow, Keras, FastAPI or SQLModel, even while it runs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from simulator.broker import Broker

REPO = Path(__file__).resolve().parents[2]
# pydantic and cryptography too: each would cost the daemon several MB of its 60 MB budget.
HEAVY = ["tensorflow", "keras", "fastapi", "sqlmodel", "pydantic", "cryptography"]


@pytest.mark.integration
def test_importing_and_starting_the_agent_loads_no_heavy_module(
    broker: Broker, tmp_path: Path
) -> None:
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n" + "".join(f"{i * 0.1},{i * 0.2}\n" for i in range(50)))
    script = textwrap.dedent(f"""
        import json, sys, time
        import edge_agent.cli, edge_agent.agent, edge_agent.daemon.runner
        from edge_agent.agent import Agent
        from edge_agent.config import config_from_dict
        from edge_agent.inference.runtime import available_runtime
        config = config_from_dict({{
            "device_id": "light-1", "state_dir": {str(tmp_path / "state")!r},
            "mqtt": {broker.agent_mqtt(broker.add_device("light-1"))!r},
            "source": {{"type": "csv", "options": {{"path": {str(csv)!r},
                                                     "replay_speed": 0}}}},
        }})
        agent = Agent(config)
        agent.start()
        deadline = time.monotonic() + 20
        while agent.status()["readings"] < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        runtime = available_runtime()
        readings = agent.status()["readings"]
        agent.stop(timeout=5)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print(json.dumps({{"heavy": heavy, "readings": readings, "runtime": runtime}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["readings"] == 50, "the agent really ran"
    assert report["runtime"] in ("ai_edge_litert", "tflite_runtime")
    assert report["heavy"] == []


def test_the_cli_loads_numpy_only_after_run_has_capped_its_blas_threads() -> None:
    # numpy starts OpenBLAS's thread pool when it loads: `edge-agent run` sets
    # OPENBLAS_NUM_THREADS=1 first, which only works if importing the CLI loads no numpy.
    script = textwrap.dedent("""
        import os, sys
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.pop(name, None)
        import edge_agent.cli
        assert "numpy" not in sys.modules, "importing edge_agent.cli loaded numpy"
        from edge_agent.daemon.memory import limit_native_threads
        limit_native_threads()
        import numpy
        print(len(os.listdir("/proc/self/task")))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "1", "numpy started a BLAS thread"
