"""TLS for the hub's MQTT connection over memory BIOs, reading the socket in large blocks.

mosquitto writes every PUBLISH as a TLS record of its own, and an ``ssl.SSLSocket`` hands back
one record per ``recv``, which OpenSSL reads from the socket in two system calls (the 5-byte
record header, then the body: strace of a hub under a telemetry flood,
docs/ingest-measurements.md). At 10,000 messages a second that is 20,000 system calls and
10,000 trips through the TLS layer from Python. :class:`BufferedTLS` reads whatever the
socket holds (up to :data:`RAW_CHUNK` bytes) in one call into an ``ssl.MemoryBIO``, decrypts
every complete record in it at once, and hands out the plaintext in large pieces.

It is as much of a socket as paho 2.x uses: ``recv``, ``send``, ``pending``, ``fileno``,
``setblocking``, ``settimeout`` and ``close``. ``send`` takes all the plaintext it is given
and writes the records it makes as far as the socket takes them; what the socket did not take
waits in :attr:`BufferedTLS.unsent` until :meth:`BufferedTLS.flush` (the hub's client asks
to write while anything waits there).
"""

from __future__ import annotations

import socket
import ssl

__all__ = ["RAW_CHUNK", "BufferedTLS"]

RAW_CHUNK = 1 << 18  # bytes asked of the socket per read
_RECORD = 1 << 16  # plaintext asked of OpenSSL per call (it gives at most one record)


class BufferedTLS:
    """A client TLS connection on ``sock`` through ``tls`` (an ``ssl.SSLObject``)."""

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO) -> None:
        self._sock = sock
        self._tls = tls
        self._incoming = incoming
        self._outgoing = outgoing
        self._plain = bytearray()  # decrypted, not yet handed out
        self._eof = False  # the peer closed (TCP or TLS close_notify)
        self.unsent = bytearray()  # records made by send that the socket has not taken

    @classmethod
    def connect(cls, sock: socket.socket, context: ssl.SSLContext,
                server_hostname: str | None) -> BufferedTLS:
        """The handshake on the connected ``sock``, blocking within its timeout. The socket
        is closed when the handshake fails (a broker still starting, a certificate refused)."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=False,
                               server_hostname=server_hostname)
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        sock.sendall(outgoing.read())
                    data = sock.recv(RAW_CHUNK)
                    if not data:
                        raise ssl.SSLEOFError("the broker closed the connection during "
                                              "the TLS handshake") from None
                    incoming.write(data)
            if outgoing.pending:
                sock.sendall(outgoing.read())
        except BaseException:
            sock.close()
            raise
        return cls(sock, tls, incoming, outgoing)

    # ---- what paho calls -------------------------------------------------------------

    def fileno(self) -> int:
        return self._sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def settimeout(self, value: float | None) -> None:
        self._sock.settimeout(value)

    def pending(self) -> int:
        """Plaintext already decrypted and waiting: paho reads it without waiting on the
        socket."""
        return len(self._plain)

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes of plaintext; b"" once the broker has closed and all is
        read; BlockingIOError when nothing is ready (a part of a record may be)."""
        if len(self._plain) < bufsize and not self._eof:
            self._fill()
        if not self._plain:
            if self._eof:
                return b""
            raise BlockingIOError("no complete TLS record yet")
        data = bytes(self._plain[:bufsize])
        del self._plain[:bufsize]
        return data

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt all of ``data`` and write as much as the socket takes; BlockingIOError,
        with nothing taken, while records from an earlier call still wait."""
        if self.unsent and not self.flush():
            raise BlockingIOError("earlier TLS records still wait for the socket")
        taken = self._tls.write(data)
        self.unsent += self._outgoing.read()
        self.flush()
        return taken

    def flush(self) -> bool:
        """Write what waits in :attr:`unsent` as far as the socket takes it; True when all
        of it went."""
        while self.unsent:
            try:
                sent = self._sock.send(self.unsent)
            except BlockingIOError:
                return False
            del self.unsent[:sent]
        return True

    def close(self) -> None:
        """Say close_notify if the socket takes it at once, then close the socket."""
        try:
            self._tls.unwrap()
        except (ssl.SSLError, ValueError):
            pass
        try:
            if self._outgoing.pending:
                self._sock.send(self._outgoing.read())
        except OSError:
            pass
        self._sock.close()

    # ---- inside ----------------------------------------------------------------------

    def _fill(self) -> None:
        """One read of the socket, then every complete record decrypted into ``_plain``."""
        try:
            data = self._sock.recv(RAW_CHUNK)
        except BlockingIOError:
            data = None
        if data == b"":
            self._eof = True
        elif data:
            self._incoming.write(data)
        plain = self._plain
        tls = self._tls
        try:
            while True:
                chunk = tls.read(_RECORD)
                if not chunk:  # close_notify (CPython's read gives b"" for it)
                    self._eof = True
                    break
                plain += chunk
        except ssl.SSLWantReadError:
            pass
        if self._outgoing.pending:  # what TLS 1.3 answers on its own (a key update)
            self.unsent += self._outgoing.read()
            self.flush()
