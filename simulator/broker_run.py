"""``simulator broker``: the harness broker (:class:`simulator.broker.Broker`, the one tests and
the demo use) in the foreground, for running the parts by hand.

Started by hand, ``mosquitto -p 1883`` on a taken port prints "Address already in use", goes on
listening on the other address family only, and the hub and the agents silently talk to the
broker that was there first. Here a taken port is refused with its reason before mosquitto
starts, the listening socket is checked to belong to our mosquitto, and the address it took is
printed (``--port 0``: any free port).
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType

from simulator.broker import Broker, BrokerError

__all__ = ["PortTaken", "port_problem", "run_broker", "socket_owner"]


class PortTaken(BrokerError):
    """Something else listens on the port asked for."""


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (as mosquitto binds it), or None when free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mosquitto does
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def socket_owner(host: str, port: int) -> int | None:
    """The pid of the process listening on ``host:port`` (IPv4), from /proc; None if unknown."""
    wanted = f"{_hex_ip(host)}:{port:04X}"
    inode = None
    try:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
                inode = fields[9]
                break
    except OSError:
        return None
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if fd.readlink().as_posix() == target:
                    return int(proc.name)
        except OSError:
            continue
    return None


def _hex_ip(host: str) -> str:
    return socket.inet_aton(host)[::-1].hex().upper()


def start_checked(port: int) -> Broker:
    """A started harness broker on ``port`` (0: a free one) that is really ours."""
    broker = Broker(port=port or None)
    if port:
        problem = port_problem(broker.host, port)
        if problem is not None:
            broker.close()
            raise PortTaken(f"port {port} on {broker.host} is taken ({problem}); another broker "
                            f"is probably running there: stop it, or choose another port "
                            f"(--port 0 takes any free one)")
    try:
        broker.start()
    except BrokerError:
        broker.close()
        raise
    owner = socket_owner(broker.host, broker.port)
    if owner is not None and owner != broker.pid:
        broker.close()
        raise PortTaken(f"port {broker.port} on {broker.host} is held by process {owner}, "
                        f"not by the mosquitto just started")
    return broker


def run_broker(port: int) -> int:
    """Run until SIGINT/SIGTERM or until mosquitto exits; the process exit code."""
    try:
        broker = start_checked(port)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    print(f"mosquitto listening on {broker.host}:{broker.port} (pid {broker.pid}, config "
          f"{broker.conf_path}); Ctrl-C stops it", flush=True)
    try:
        while not stop.wait(0.5):
            if not broker.running:
                print(f"error: mosquitto exited: {broker.log_tail()}", file=sys.stderr)
                return 1
    finally:
        broker.close()
    return 0
