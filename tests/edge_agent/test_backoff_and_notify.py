"""Reconnect back-off with full jitter, sd_notify datagrams and JSON log lines, each on its own."""

from __future__ import annotations

import json
import logging
import random
import socket
from pathlib import Path

import pytest

from edge_agent.comms.backoff import Backoff
from edge_agent.daemon.logs import JsonFormatter
from edge_agent.daemon.sdnotify import notify, watchdog_interval


def test_backoff_delays_are_full_jitter_within_a_doubling_window() -> None:
    backoff = Backoff(1.0, 8.0, rng=random.Random(1))
    windows, delays = [], []
    for _ in range(6):
        windows.append(backoff.window())
        delays.append(backoff.next_delay())
    assert windows == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert all(0.0 <= d <= w for d, w in zip(delays, windows, strict=True))
    backoff.reset()
    assert backoff.window() == 1.0


def test_backoff_spreads_a_fleet_over_the_window() -> None:
    rng = random.Random(7)
    first = [Backoff(5.0, 60.0, rng=rng).next_delay() for _ in range(1000)]
    per_second = [sum(1 for d in first if s <= d < s + 1) for s in range(5)]
    assert min(per_second) > 150, "roughly uniform over 0..5 s, not a burst"


def test_backoff_refuses_a_window_that_makes_no_sense() -> None:
    with pytest.raises(ValueError, match="0 < initial <= maximum"):
        Backoff(5.0, 1.0)


def test_notify_sends_one_datagram_to_the_socket(tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        assert notify("READY=1", {"NOTIFY_SOCKET": address})
        assert sock.recv(100) == b"READY=1"
    assert notify("READY=1", {}) is False, "outside systemd it is a no-op"


def test_watchdog_interval_is_half_the_timeout() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None


def test_json_log_lines_carry_level_logger_message_and_extras() -> None:
    record = logging.LogRecord("edge_agent.x", logging.WARNING, __file__, 1, "bad row %d", (7,),
                               None)
    record.device_id = "pump-1"
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "WARNING" and line["logger"] == "edge_agent.x"
    assert line["message"] == "bad row 7" and line["device_id"] == "pump-1"
