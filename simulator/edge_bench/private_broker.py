"""What ``bench/edge_daemon.py``'s measurements share: a private mosquitto in a directory of its
own, a device's link settings on it, and a bounded wait on a condition."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from simulator.broker import Broker


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def private_broker() -> Broker:
    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-bench-mosquitto-"))
    os.chmod(workdir, 0o777)  # mosquitto drops to its own user and must write persistence here
    return Broker(workdir=workdir)


def device_login(broker: Broker, device_id: str) -> dict[str, Any]:
    """LinkSettings keys for ``device_id`` on ``broker`` (TLS and its own credential)."""
    section = broker.agent_mqtt(broker.add_device(device_id))
    section.pop("topic_prefix")
    return section
