"""The chaos proxy forwards bytes, cuts a device off and lets it back, delays on request."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from simulator.netem import LinkProxy


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        server.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


def _roundtrip(port: int, payload: bytes) -> bytes:
    """Send and read the echo; b"" when the connection is closed or reset instead."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        got = b""
        try:
            s.sendall(payload)
            while len(got) < len(payload):
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            return b""
        return got


def test_proxy_forwards_both_ways(echo_server: tuple[str, int]) -> None:
    proxy = LinkProxy(*echo_server)
    try:
        assert _roundtrip(proxy.port, b"hello broker") == b"hello broker"
    finally:
        proxy.close()


def test_cut_drops_open_connections_and_refuses_new_ones(echo_server: tuple[str, int]) -> None:
    proxy = LinkProxy(*echo_server)
    try:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        proxy.cut()
        assert s.recv(1) == b""  # the device sees its connection closed
        s.close()
        assert _roundtrip(proxy.port, b"y") == b""
        proxy.restore()
        assert _roundtrip(proxy.port, b"back") == b"back"
        assert proxy.cuts == 1
    finally:
        proxy.close()


def test_delay_holds_data_back_then_delivers_it(echo_server: tuple[str, int]) -> None:
    proxy = LinkProxy(*echo_server)
    proxy.delay_s = 0.3
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(b"slow")
            deadline = time.monotonic() + 5
            while proxy.held() == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert proxy.held() > 0, "the proxy never held the data back"
            assert s.recv(4) == b"slow"
    finally:
        proxy.close()
