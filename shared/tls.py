"""The TLS context every edgeloop MQTT client uses (agent, hub, simulator).

paho leaves the socket open when a TLS handshake fails (a broker that is still starting, a link
cut mid-handshake): a client that retries for hours would leak one descriptor per attempt. The
sockets made here close themselves when their handshake fails.
"""

from __future__ import annotations

import ssl

__all__ = ["client_context"]


class _ClosingSSLSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verify the broker's certificate and host name against ``ca_file`` (the system CAs when
    None); TLS 1.2 at least."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslsocket_class = _ClosingSSLSocket
    return context
