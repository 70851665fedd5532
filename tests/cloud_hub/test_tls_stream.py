"""The hub's TLS over memory BIOs (cloud_hub.mqtt.tls_stream): against a real TLS server on a
socket pair (partial writes, the peer's close, a refused certificate) and, through the hub's
own client, against the test's secure mosquitto (a flood of QoS 1 messages, some many records
long, all arriving whole and in order)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.identity.pki import CertificateAuthority
from cloud_hub.mqtt.client import MqttAuth, new_client
from cloud_hub.mqtt.lean import Received
from cloud_hub.mqtt.tls_stream import BufferedTLS
from shared.tls import client_context
from simulator.broker import Broker
from tests.cloud_hub.helpers import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    """A CA file clients trust, and a server context with a certificate for localhost."""
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create("tls stream test CA")
    server = ca.issue_server(["localhost"])
    (folder / "ca.crt").write_bytes(ca.cert_pem)
    (folder / "server.crt").write_bytes(server.cert_pem)
    (folder / "server.key").write_bytes(server.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.crt", folder / "server.key")
    return folder / "ca.crt", context


class _Server:
    """The far end of a socket pair as a TLS server, handshaking in a thread."""

    def __init__(self, raw: socket.socket, context: ssl.SSLContext) -> None:
        self.raw = raw
        self.tls: ssl.SSLSocket | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._handshake, args=(context,), daemon=True)
        self._thread.start()

    def _handshake(self, context: ssl.SSLContext) -> None:
        try:
            self.tls = context.wrap_socket(self.raw, server_side=True)
        except BaseException as exc:  # the client refused us: the test looks at it
            self.error = exc

    def join(self) -> ssl.SSLSocket | None:
        self._thread.join(10)
        return self.tls


@pytest.fixture
def pair(pki: tuple[Path, ssl.SSLContext]) -> Iterator[tuple[BufferedTLS, ssl.SSLSocket]]:
    ca_file, server_context = pki
    near, far = socket.socketpair()
    near.settimeout(10)
    server = _Server(far, server_context)
    client = BufferedTLS.connect(near, client_context(str(ca_file)), "localhost")
    tls = server.join()
    assert tls is not None, server.error
    client.setblocking(False)
    try:
        yield client, tls
    finally:
        client.close()
        tls.close()


def _read_all(client: BufferedTLS, want: int) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + 30
    while len(got) < want and time.monotonic() < deadline:
        try:
            data = client.recv(1 << 16)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        assert data, f"the connection closed after {len(got)} of {want} bytes"
        got += data
    return bytes(got)


def test_many_records_read_in_one_go_come_out_whole_and_in_order(
        pair: tuple[BufferedTLS, ssl.SSLSocket]) -> None:
    client, server = pair
    records = [bytes([i % 251]) * (1 + (i * 37) % 1500) for i in range(2000)]

    def send() -> None:
        for record in records:  # one TLS record each, as mosquitto writes a PUBLISH
            server.sendall(record)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    expected = b"".join(records)
    assert _read_all(client, len(expected)) == expected
    sender.join(30)
    assert client.pending() == 0
    with pytest.raises(BlockingIOError):
        client.recv(1 << 16)


def test_pending_counts_decrypted_bytes_not_yet_asked_for(
        pair: tuple[BufferedTLS, ssl.SSLSocket]) -> None:
    client, server = pair
    server.sendall(b"a" * 5000)
    wait_for(lambda: _peek(client, 100) == b"a" * 100, 30, "the first 100 bytes")
    assert client.pending() == 4900  # paho reads these without waiting on the socket
    assert client.recv(1 << 16) == b"a" * 4900


def _ended(client: BufferedTLS) -> bool:
    """True once recv reads as closed (b""), False while it would block."""
    try:
        return client.recv(100) == b""
    except BlockingIOError:
        return False


def _peek(client: BufferedTLS, n: int) -> bytes:
    try:
        return client.recv(n)
    except BlockingIOError:
        return b""


def test_what_the_socket_does_not_take_waits_and_goes_later_in_order(
        pair: tuple[BufferedTLS, ssl.SSLSocket]) -> None:
    client, server = pair
    first, second = b"x" * (8 << 20), b"y" * 1000
    assert client.send(first) == len(first)  # all of it taken as plaintext
    assert client.unsent, "8 MB should not fit the socket pair's buffers"
    with pytest.raises(BlockingIOError):
        client.send(second)  # nothing taken while earlier records wait
    received = bytearray()

    def drain() -> None:
        while len(received) < len(first) + len(second):
            received.extend(server.recv(1 << 16))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    wait_for(client.flush, 30, "the 8 MB to go out")
    assert client.send(second) == len(second)
    wait_for(client.flush, 30, "the last 1,000 bytes to go out")
    reader.join(30)
    assert bytes(received) == first + second


def test_the_peers_close_reads_as_the_end_after_what_it_sent(
        pair: tuple[BufferedTLS, ssl.SSLSocket]) -> None:
    client, server = pair
    server.sendall(b"last words")
    server.settimeout(10)
    # close_notify; the server's unwrap then waits for the client's, which its close sends
    closing = threading.Thread(target=server.unwrap, daemon=True)
    closing.start()
    assert _read_all(client, 10) == b"last words"
    wait_for(lambda: _ended(client), 30, "the end of the stream")
    assert client.recv(100) == b""  # and it stays the end
    client.close()
    closing.join(10)
    assert not closing.is_alive(), "the client's close did not answer the close_notify"


def test_a_cut_connection_reads_as_the_end(pair: tuple[BufferedTLS, ssl.SSLSocket]) -> None:
    """The TCP connection closes with no close_notify (a broker killed)."""
    client, server = pair
    server.sendall(b"partial")
    server.close()
    assert _read_all(client, 7) == b"partial"
    wait_for(lambda: _ended(client), 30, "the end of the stream")
    assert client.recv(100) == b""  # and it stays the end


def test_a_certificate_from_another_ca_is_refused_and_the_socket_closed(
        pki: tuple[Path, ssl.SSLContext], tmp_path: Path) -> None:
    _, server_context = pki
    other = tmp_path / "other-ca.crt"
    other.write_bytes(CertificateAuthority.create("someone else").cert_pem)
    near, far = socket.socketpair()
    near.settimeout(10)
    server = _Server(far, server_context)
    with pytest.raises(ssl.SSLCertVerificationError):
        BufferedTLS.connect(near, client_context(str(other)), "localhost")
    assert near.fileno() == -1  # no descriptor left behind by a failed handshake
    server.join()
    far.close()


def test_a_name_the_certificate_does_not_hold_is_refused(
        pki: tuple[Path, ssl.SSLContext]) -> None:
    ca_file, server_context = pki
    near, far = socket.socketpair()
    near.settimeout(10)
    server = _Server(far, server_context)
    with pytest.raises(ssl.SSLCertVerificationError, match="(?i)hostname"):
        BufferedTLS.connect(near, client_context(str(ca_file)), "broker.example")
    assert near.fileno() == -1
    server.join()
    far.close()


def test_the_hubs_client_reads_a_flood_from_the_secure_broker_whole_and_in_order(
        broker: Broker) -> None:
    """10,000 QoS 1 messages, a few of them 100 KB (several TLS records each), through the
    hub's own client on the secure broker: every one arrives once, whole, in order."""
    hub = broker.add_hub("edgeloop-hub")
    device = broker.add_device("tls-1")
    received: list[Received] = []
    client = new_client("edgeloop-hub", auth=MqttAuth(
        password=hub.password, tls=True, ca_file=str(broker.ca_file)))
    client.on_received = received.append
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe(broker.topics.all_devices("telemetry"), qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    sender = broker.client(device)
    try:
        assert subscribed.wait(30), "the hub's subscription was not acknowledged"
        assert isinstance(client.socket(), BufferedTLS)
        sender.connect(broker.host, broker.port)
        sender.loop_start()
        payloads = [(b"big" * 34_000 if i % 2500 == 7 else b"%06d" % i) + b"|" for i in
                    range(10_000)]
        infos = [sender.publish(broker.topics.telemetry("tls-1"), p, qos=1)
                 for p in payloads]
        wait_for(lambda: all(info.is_published() for info in infos), 120, "every PUBACK")
        wait_for(lambda: len(received) >= len(payloads), 120, "every message at the hub")
        assert [m.payload for m in received] == payloads
        assert {m.topic for m in received} == {broker.topics.telemetry("tls-1")}
    finally:
        sender.loop_stop()
        sender.disconnect()
        client.loop_stop()
        client.disconnect()
