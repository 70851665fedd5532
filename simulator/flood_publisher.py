"""One flood publisher: a process holding one MQTT 5 connection, publishing for its devices.

It writes QoS 1 PUBLISH packets a window's worth at a time, reads the PUBACKs in bulk, and
counts per device what the broker acknowledged, refused or left in doubt (:mod:`simulator.flood`
starts and stops these processes).
"""

from __future__ import annotations

import random
import select
import socket
import ssl
import struct
import time
from typing import Any

from shared.topics import Topics
from simulator.flood_plan import FloodPlan, FloodReport
from simulator.flood_stream import DeviceStream
from simulator.mqtt_wire import (
    DISCONNECT,
    PINGREQ,
    WireError,
    connect_packet,
    parse_connack,
    read_packets,
    reason_text,
    varint,
)

__all__ = ["publisher_main"]

_MID = struct.Struct("!H")
_TICK_S = 0.004  # a publisher's round: take PUBACKs, publish, sleep
_MAX_WRITE = 256  # PUBLISH packets per write at most
_IO_TIMEOUT_S = 30.0  # a write the broker does not take within this means a dead connection
_ack_structs: dict[int, struct.Struct] = {}


def _acks_struct(n: int) -> struct.Struct:
    found = _ack_structs.get(n)
    if found is None:
        found = _ack_structs[n] = struct.Struct("!" + "2xH" * n)
    return found


class _Publisher:
    """One connection's publishing loop (runs in a publisher process)."""

    def __init__(self, plan: FloodPlan, devices: list[str], connect: dict[str, Any],
                 index: int) -> None:
        topics = Topics(plan.prefix)
        rng = random.Random(index)
        t0 = float(int(time.time()) - 86_400)
        self.plan = plan
        self.index = index
        self.connect = connect
        self.streams = [DeviceStream(d, plan, topics.telemetry(d), rng, t0) for d in devices]
        self.window = max(1, plan.window)
        self.keepalive = 60
        self.sock: Any = None
        self.errors: list[str] = []
        # Message id -> (stream index, seq) of the publishes in flight; -1: free.
        self.mid_stream = [-1] * 65536
        self.mid_seq = [0] * 65536
        self.next_mid = 1
        self.cursor = 0  # the next publish goes to streams[cursor % len(streams)]
        self.inflight = 0
        self.acked = [0] * len(self.streams)
        self.acked_total = 0
        self.refused: dict[int, list[int]] = {}
        self.buf = bytearray()
        self.last_sent = time.monotonic()
        self.broken = False

    # -- connection ------------------------------------------------------------------------
    def open(self) -> None:
        c = self.connect
        raw = socket.create_connection((c["host"], c["port"]), timeout=30)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if c.get("ca_file"):
            from shared.tls import client_context

            sock: Any = client_context(c["ca_file"]).wrap_socket(raw, server_hostname=c["host"])
        else:
            sock = raw
        sock.settimeout(_IO_TIMEOUT_S)
        self.sock = sock
        sock.sendall(connect_packet(c.get("client_id", ""), username=c.get("username"),
                                    password=c.get("password"), keepalive=self.keepalive))
        props = parse_connack(*self._read_one())
        receive_maximum = props.get(0x21)
        if isinstance(receive_maximum, int):
            self.window = min(self.window, receive_maximum)
        server_keepalive = props.get(0x13)
        if isinstance(server_keepalive, int) and server_keepalive:
            self.keepalive = server_keepalive

    def _read_one(self) -> tuple[int, bytes]:
        while True:
            packets, used = read_packets(self.buf, limit=1)
            if packets:
                del self.buf[:used]
                return packets[0]
            data = self.sock.recv(65536)
            if not data:
                raise WireError("the broker closed the connection before CONNACK")
            self.buf += data

    def close(self) -> None:
        if self.sock is None:
            return
        try:
            if not self.broken:
                self.sock.sendall(DISCONNECT)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.sock = None

    # -- publishing ------------------------------------------------------------------------
    def publish(self, n: int) -> None:
        """``n`` PUBLISH packets, round-robin over the streams, in one write."""
        parts: list[bytes] = []
        streams, mid_stream, mid_seq = self.streams, self.mid_stream, self.mid_seq
        count = len(streams)
        pack_mid = _MID.pack
        mid = self.next_mid
        k = self.cursor
        for _ in range(n):
            si = k % count
            k += 1
            s = streams[si]
            seq = s.seq
            payload = s.next_payload()
            if mid_stream[mid] != -1:  # cannot happen while the window is < 65,535
                raise WireError(f"message id {mid} reused while in flight")
            mid_stream[mid] = si
            mid_seq[mid] = seq
            topic = s.topic
            parts.append(b"\x32" + varint(len(topic) + 3 + len(payload)) + topic
                         + pack_mid(mid) + b"\x00")
            parts.append(payload)
            mid = mid + 1 if mid < 65535 else 1
        self.cursor = k
        self.next_mid = mid
        self.inflight += n
        self.sock.sendall(b"".join(parts))
        self.last_sent = time.monotonic()

    def read_available(self) -> None:
        """Take whatever the broker has sent, without waiting: every TLS record is read (the
        broker sends each PUBACK on its own), then the PUBACKs are parsed in one pass."""
        sock = self.sock
        buf = self.buf
        sock.settimeout(0.0)
        try:
            while True:
                data = sock.recv(262144)
                if not data:
                    raise WireError("the broker closed the connection")
                buf += data
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        finally:
            sock.settimeout(_IO_TIMEOUT_S)
        if buf:
            self._take(buf)

    def _take(self, buf: bytearray) -> None:
        n = len(buf) >> 2
        if n and buf[0:4 * n:4] == b"\x40" * n and buf[1:4 * n:4] == b"\x02" * n:
            # The usual case: nothing but successful PUBACKs (a partial one may trail).
            self._acked(_acks_struct(n).unpack_from(buf))
            del buf[:4 * n]
            if not buf:
                return
        packets, used = read_packets(buf)
        del buf[:used]
        for first, body in packets:
            kind = first & 0xF0
            if kind == 0x40:
                mid = (body[0] << 8) | body[1]
                code = body[2] if len(body) > 2 else 0
                if code >= 0x80:
                    self._refused(mid, code)
                else:
                    self._acked((mid,))
            elif kind == 0xD0:  # PINGRESP
                continue
            elif kind == 0xE0:
                code = body[0] if body else 0
                raise WireError(f"the broker disconnected this publisher: {reason_text(code)}")
            else:
                raise WireError(f"unexpected packet type 0x{first:02x} from the broker")

    def _acked(self, mids: tuple[int, ...] | tuple[Any, ...]) -> None:
        mid_stream, acked = self.mid_stream, self.acked
        for mid in mids:
            si = mid_stream[mid]
            if si < 0:
                raise WireError(f"PUBACK for message id {mid}, which is not in flight")
            mid_stream[mid] = -1
            acked[si] += 1
        self.inflight -= len(mids)
        self.acked_total += len(mids)

    def _refused(self, mid: int, code: int) -> None:
        si = self.mid_stream[mid]
        if si < 0:
            raise WireError(f"PUBACK for message id {mid}, which is not in flight")
        self.mid_stream[mid] = -1
        self.inflight -= 1
        refused = self.refused.setdefault(si, [])
        if not refused and len(self.refused) <= 3:
            self.errors.append(f"publisher {self.index}: the broker refused a publish to "
                               f"{self.streams[si].device_id}: {reason_text(code)}")
        refused.append(self.mid_seq[mid])

    def run(self, rate_value: Any, stop: Any, progress: Any, drain_s: float = 120.0) -> None:
        """Publish until ``stop`` is set (at ``rate_value`` msg/s, 0: as fast as acknowledged),
        then wait for the last PUBACKs; a broken connection ends it with an error noted."""
        try:
            self._loop(rate_value, stop, progress)
            deadline = time.monotonic() + drain_s
            while self.inflight and time.monotonic() < deadline:
                self._wait(0.05)
                self._keepalive()
            if self.inflight:
                self.errors.append(f"publisher {self.index}: {self.inflight} publish(es) not "
                                   f"acknowledged within {drain_s:.0f} s")
        except (OSError, WireError) as exc:
            self.broken = True
            self.errors.append(f"publisher {self.index}: connection lost ({exc}) with "
                               f"{self.acked_total} acknowledged and {self.inflight} in flight")
        self._progress(progress)

    def _progress(self, shared: Any) -> None:
        shared[0] = self.acked_total
        shared[1] = sum(s.seq for s in self.streams)

    def _wait(self, timeout: float) -> None:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if ready or getattr(self.sock, "pending", lambda: 0)():
            self.read_available()

    def _loop(self, rate_value: Any, stop: Any, progress: Any) -> None:
        """Rounds of: take the PUBACKs that came, publish what the window and the rate allow
        in one write, sleep a tick. Waking per round, not per PUBACK, is what keeps the CPU
        per message low; the window must cover a tick's worth of publishes."""
        rate = -1.0
        base_t, base_n, sent = time.monotonic(), 0, 0
        next_check = 0.0
        while True:
            now = time.monotonic()
            if now >= next_check:  # the shared values, a few times a second
                if stop.is_set():
                    return
                self._progress(progress)
                new_rate = float(rate_value.value)
                if new_rate != rate:
                    rate, base_t, base_n = new_rate, now, sent
                self._keepalive()
                next_check = now + 0.1
            self.read_available()
            n = self.window - self.inflight
            if rate > 0:
                due = int((now - base_t) * rate) - (sent - base_n)
                if due > rate:  # behind by over a second (a stall): no burst to catch up
                    base_t, base_n, due = now, sent, 0
                n = min(n, due)
            while n > 0:
                part = min(n, _MAX_WRITE)
                self.publish(part)
                sent += part
                n -= part
            # Paced slowly, a round every 4 ms would cost more than the messages: sleep
            # until about 16 are due (at most 50 ms, so pacing stays smooth).
            time.sleep(_TICK_S if rate <= 0 else min(0.05, max(_TICK_S, 16.0 / rate)))

    def _keepalive(self) -> None:
        if time.monotonic() - self.last_sent > self.keepalive / 2:
            self.sock.sendall(PINGREQ)
            self.last_sent = time.monotonic()

    def report(self) -> FloodReport:
        streams = self.streams
        report = FloodReport(
            acked={s.device_id: self.acked[i] for i, s in enumerate(streams)},
            epochs={s.device_id: s.epoch for s in streams},
            sent={s.device_id: s.seq for s in streams},
            readings_per_message=self.plan.readings,
            errors=list(self.errors))
        for si, seqs in self.refused.items():
            report.refused[streams[si].device_id] = sorted(seqs)
        for mid, si in enumerate(self.mid_stream):
            if si >= 0:
                report.unconfirmed.setdefault(streams[si].device_id, []).append(
                    self.mid_seq[mid])
        for seqs in report.unconfirmed.values():
            seqs.sort()
        return report


def publisher_main(plan: FloodPlan, devices: list[str], connect: dict[str, Any],
                   rate_value: Any, progress: Any, stop: Any, started: Any, out: Any,
                   index: int) -> None:
    """The body of one publisher process: publish until ``stop`` is set, then wait for the
    last acknowledgements and send a :class:`FloodReport` on ``out``."""
    import os

    publisher = _Publisher(plan, devices, connect, index)
    try:
        publisher.open()
    except (OSError, WireError) as exc:
        report = publisher.report()
        report.errors.append(f"publisher {index}: could not connect to "
                             f"{connect['host']}:{connect['port']}: {exc}")
        publisher.close()
        out.send(report)
        return
    started.set()
    publisher.run(rate_value, stop, progress)
    publisher.close()
    report = publisher.report()
    times = os.times()
    report.cpu_s = times.user + times.system
    out.send(report)
