"""Loopback ports for the harness's servers (brokers, hubs) and for addresses nothing listens on.

Standard library only, so the minimal edge venv can use it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port"]

# The harness's servers (brokers, hubs) take ports from below the kernel's ephemeral range. A
# port that bind(0) handed out is free for the kernel to hand out again, to any process's bind(0)
# or outgoing connection, as soon as nothing listens on it: a broker stopped to test a restart
# could then find its own port taken ("Address already in use"), the more likely the busier the
# machine. A port outside that range is only ever taken by an explicit bind.
_HARNESS_PORTS = (20000, 32768)
_PORT_RNG = random.SystemRandom()  # not the global `random`: tests may seed that


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A loopback TCP port nothing listens on (below the ephemeral range where it can)."""
    low, high = _HARNESS_PORTS[0], min(_HARNESS_PORTS[1], _ephemeral_low())
    for _ in range(100 if high - low >= 1000 else 0):
        port = _PORT_RNG.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        found: int = s.getsockname()[1]
        return found
