"""`simulator broker`: a broker started by hand refuses a taken port loudly, or says which port
it took, and the listener it reports is its own."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

import pytest

from simulator.broker import Broker
from simulator.broker_run import PortTaken, socket_owner, start_checked
from simulator.ports import free_port

pytestmark = pytest.mark.integration
COMMAND = [sys.executable, "-c", "import sys; from simulator.cli import main; sys.exit(main())",
           "broker"]


def test_a_taken_port_is_refused_naming_it() -> None:
    with socket.socket() as other:  # another "broker" already listens there
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        done = subprocess.run([*COMMAND, "--port", str(port)], capture_output=True, text=True,
                              timeout=60, check=False)
        with pytest.raises(PortTaken, match=f"port {port} on 127.0.0.1 is taken"):
            start_checked(port)
    assert done.returncode == 2
    assert f"error: port {port} on 127.0.0.1 is taken (Address already in use)" in done.stderr


def test_port_zero_says_which_port_it_took_and_stops_on_sigterm() -> None:
    with subprocess.Popen([*COMMAND, "--port", "0"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.match(r"mosquitto listening on 127\.0\.0\.1:(\d+) \(pid (\d+),", line)
            assert match, line
            port, pid = int(match.group(1)), int(match.group(2))
            assert socket_owner("127.0.0.1", port) == pid
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_the_harness_listener_belongs_to_its_mosquitto() -> None:
    with Broker() as broker:
        assert socket_owner(broker.host, broker.port) == broker.pid
    assert socket_owner("127.0.0.1", free_port()) is None
