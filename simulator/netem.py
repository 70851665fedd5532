"""A TCP proxy between one device and the broker, to break its network on purpose.

``cut()`` closes the device's open connections and refuses new ones (the device is offline:
its agent keeps measuring and buffering in its outbox), ``restore()`` lets it back in, and
``delay_s`` holds every chunk that long in each direction (a slow link). One thread per proxy
drives all its connections through a selector.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

__all__ = ["LinkProxy"]

log = logging.getLogger(__name__)
_CHUNK = 65536


@dataclass
class _Pipe:
    """One accepted connection: the device side and the broker side."""

    device: socket.socket
    broker: socket.socket
    pending: dict[socket.socket, bytearray] = field(default_factory=dict)


class LinkProxy:
    """Listens on a free loopback port and forwards to ``target`` until :meth:`close`."""

    def __init__(self, target_host: str, target_port: int, *, name: str = "proxy") -> None:
        self.target = (target_host, target_port)
        self.name = name
        self.delay_s = 0.0
        self.cuts = 0
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.host, self.port = "127.0.0.1", int(self._listener.getsockname()[1])
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._pipes: dict[socket.socket, _Pipe] = {}
        self._delayed: list[tuple[float, int, socket.socket, bytes]] = []
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._run, name=f"netem-{name}", daemon=True)
        self._thread.start()

    # -- chaos controls --------------------------------------------------------------------
    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    def cut(self) -> None:
        """Drop every open connection now and refuse new ones until :meth:`restore`."""
        self._cut.set()
        self.cuts += 1
        with self._lock:
            for pipe in list({id(p): p for p in self._pipes.values()}.values()):
                self._close_pipe(pipe)
        log.info("%s: cut", self.name)

    def held(self) -> int:
        """Chunks held back by ``delay_s`` right now."""
        return len(self._delayed)

    def restore(self) -> None:
        self._cut.clear()
        log.info("%s: restored", self.name)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        with self._lock:
            for pipe in list({id(p): p for p in self._pipes.values()}.values()):
                self._close_pipe(pipe)
        self._sel.close()
        self._listener.close()

    # -- the forwarding loop -------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = 0.05
            if self._delayed:
                timeout = max(0.0, min(timeout, self._delayed[0][0] - time.monotonic()))
            for key, _mask in self._sel.select(timeout):
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    self._forward(sock)
            self._release_delayed()

    def _accept(self) -> None:
        try:
            device, _ = self._listener.accept()
        except OSError:
            return
        if self._cut.is_set():
            device.close()  # offline: the connection attempt fails
            return
        try:
            broker = socket.create_connection(self.target, timeout=2.0)
        except OSError as exc:
            log.info("%s: broker unreachable: %s", self.name, exc)
            device.close()
            return
        for s in (device, broker):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe = _Pipe(device, broker)
        with self._lock:
            self._pipes[device] = pipe
            self._pipes[broker] = pipe
            self._sel.register(device, selectors.EVENT_READ, None)
            self._sel.register(broker, selectors.EVENT_READ, None)

    def _forward(self, sock: socket.socket) -> None:
        with self._lock:
            pipe = self._pipes.get(sock)
        if pipe is None:
            return
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            with self._lock:
                self._close_pipe(pipe)
            return
        peer = pipe.broker if sock is pipe.device else pipe.device
        if self.delay_s > 0:
            heapq.heappush(self._delayed,
                           (time.monotonic() + self.delay_s, next(self._order), peer, data))
        else:
            self._send(pipe, peer, data)

    def _release_delayed(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, peer, data = heapq.heappop(self._delayed)
            with self._lock:
                pipe = self._pipes.get(peer)
            if pipe is not None:
                self._send(pipe, peer, data)

    def _send(self, pipe: _Pipe, peer: socket.socket, data: bytes) -> None:
        try:
            peer.setblocking(True)  # loopback: a short blocking send keeps ordering simple
            peer.settimeout(2.0)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            with self._lock:
                self._close_pipe(pipe)

    def _close_pipe(self, pipe: _Pipe) -> None:
        for s in (pipe.device, pipe.broker):
            self._pipes.pop(s, None)
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            try:
                s.close()
            except OSError:
                pass
