"""Telemetry floods for the ingest benchmark: light publisher processes that offer a set rate.

Each publisher is a process of its own (so the hub under test never shares an interpreter with
its load) holding one MQTT 5 connection over the broker's TLS socket, with the identity the
harness issued it, that publishes valid QoS 1 telemetry for a share of the devices: every
device has its own stream epoch and numbers its batches from 0, as an agent does.

The load stands in for devices that in real life are not on the hub's machine, so it must take
as little of that machine as it can. No paho here: payloads are pre-encoded JSON with the seq
and timestamps put in, PUBLISH packets are built with ``struct`` and written a window's worth
at a time, PUBACKs are read in bulk (:mod:`simulator.mqtt_wire`). A publisher keeps its own
window of unacknowledged publishes (no more than the broker's Receive Maximum) and offers
``rate`` messages a second, or as many as the broker takes when the rate is 0. The rate can be
changed while it runs (:meth:`Publishers.set_rate`), and what the broker has acknowledged so far
is readable at any time (:meth:`Publishers.acknowledged`), so a bench can hold the hub's
backlog steady.

What it reports is exact: the seqs the broker acknowledged (each one a hub must store exactly
once), those it refused (a PUBACK with a failure reason), and those sent on a connection that
broke before their PUBACK came (in doubt: the hub may or may not get them). A broken or refused
connection is an error in the report, never a count silently short.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import random
import select
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shared.messages import new_epoch
from shared.topics import Topics
from simulator.mqtt_wire import (
    DISCONNECT,
    PINGREQ,
    WireError,
    connect_packet,
    parse_connack,
    read_packets,
    reason_text,
    utf8_string,
    varint,
)

__all__ = ["FloodPlan", "FloodReport", "Publishers", "telemetry_payload"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FloodPlan:
    """What the publishers offer, in total over all of them."""

    devices: int = 100
    readings: int = 10  # rows per telemetry message
    channels: int = 8
    rate: float = 0.0  # messages per second in total; 0: as fast as the broker takes them
    processes: int = 1
    window: int = 1000  # unacknowledged publishes per connection (capped by the broker's)
    prefix: str = "edgeloop/v1"
    device_prefix: str = "flood"
    encoding: str = "json"  # or "msgpack" (shared/packed.py)

    def device_ids(self) -> list[str]:
        return [f"{self.device_prefix}-{i:05d}" for i in range(self.devices)]


@dataclass
class FloodReport:
    """What one publisher (or all, merged) sent and what the broker said about it.

    A device's seqs run from 0 to ``sent[d] - 1``; of those, ``refused[d]`` the broker
    refused and ``unconfirmed[d]`` were in flight when the connection broke. Every other one
    the broker acknowledged (:meth:`acked_seqs`)."""

    acked: dict[str, int] = field(default_factory=dict)  # device -> messages acknowledged
    epochs: dict[str, str] = field(default_factory=dict)
    readings_per_message: int = 0
    errors: list[str] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    refused: dict[str, list[int]] = field(default_factory=dict)
    unconfirmed: dict[str, list[int]] = field(default_factory=dict)
    cpu_s: float = 0.0  # the publisher processes' CPU time, user + system

    @property
    def messages(self) -> int:
        return sum(self.acked.values())

    @property
    def readings(self) -> int:
        return self.messages * self.readings_per_message

    @property
    def in_doubt(self) -> int:
        return sum(len(v) for v in self.unconfirmed.values())

    def acked_seqs(self, device_id: str) -> list[int]:
        skip = set(self.refused.get(device_id, ())) | set(self.unconfirmed.get(device_id, ()))
        return [s for s in range(self.sent.get(device_id, 0)) if s not in skip]

    def merge(self, other: FloodReport) -> None:
        self.acked.update(other.acked)
        self.epochs.update(other.epochs)
        self.sent.update(other.sent)
        self.refused.update(other.refused)
        self.unconfirmed.update(other.unconfirmed)
        self.readings_per_message = other.readings_per_message or self.readings_per_message
        self.errors.extend(other.errors)
        self.cpu_s += other.cpu_s


_ENCODER = msgspec.json.Encoder()
_MSGPACK = msgspec.msgpack.Encoder()
_SEQ_KEY = _MSGPACK.encode("seq")


def telemetry_payload(device_id: str, epoch: str, seq: int, channels: list[str],
                      ts: list[float], values: list[list[float]]) -> bytes:
    """A TelemetryBatch payload (schema v2, JSON) built without the struct's checks (the
    hub's decoder checks it strictly; a broken payload shows up there as a dead letter)."""
    return _ENCODER.encode({"v": 2, "device_id": device_id, "epoch": epoch, "seq": seq,
                            "floor": 0, "channels": channels, "ts": ts, "values": values})


_STEP = 0.125  # seconds between readings: exact in binary, so timestamps encode short


class _Stream:
    """One device's stream: its epoch, its next seq and its payload pieces, encoded once.

    A payload is ``head + seq + middle + ts + values-block + "}"``: the same JSON that
    :func:`telemetry_payload` makes, with only the seq and the timestamps encoded per
    message (the values cycle through a few blocks encoded at the start)."""

    __slots__ = ("_ts", "blocks", "device_id", "epoch", "head", "middle", "packed", "readings",
                 "seq", "t0", "topic")

    def __init__(self, device_id: str, plan: FloodPlan, topic: str, rng: random.Random,
                 t0: float) -> None:
        self.device_id = device_id
        self.epoch = new_epoch()
        self.seq = 0
        self.t0 = t0
        self.readings = plan.readings
        self.topic = utf8_string(topic)
        channels = [f"ch{c}" for c in range(plan.channels)]
        self.packed = plan.encoding == "msgpack"
        if self.packed:
            self._pack_pieces(plan, channels, rng)
            return
        whole = telemetry_payload(device_id, self.epoch, 0, channels, [0.0], [[0.0]])
        head, _, rest = whole.partition(b'"seq":0')
        self.head = head + b'"seq":'
        middle, _, _ = rest.partition(b'"ts":')
        self.middle = middle + b'"ts":'
        self.blocks = [b',"values":' + _ENCODER.encode(
            [[round(rng.gauss(20.0, 5.0), 3) for _ in range(plan.channels)]
             for _ in range(plan.readings)]) + b"}" for _ in range(4)]

    def _pack_pieces(self, plan: FloodPlan, channels: list[str], rng: random.Random) -> None:
        """The MessagePack form: a map of eight fields whose seq and ts are encoded per
        message; ``values`` (float64 bytes) cycles through a few blocks encoded here."""
        enc = _MSGPACK.encode
        self.head = b"\x88" + b"".join(enc(k) + enc(v) for k, v in (
            ("v", 2), ("device_id", self.device_id), ("epoch", self.epoch), ("floor", 0),
            ("channels", channels)))
        self.middle = enc("ts")
        self.blocks = [enc("values") + enc(struct.pack(
            f"<{plan.readings * plan.channels}d",
            *(round(rng.gauss(20.0, 5.0), 3) for _ in range(plan.readings * plan.channels))))
            for _ in range(4)]
        self._ts = struct.Struct(f"<{plan.readings}d")

    def next_payload(self) -> bytes:
        seq = self.seq
        self.seq = seq + 1
        start = self.t0 + seq * self.readings * _STEP
        if self.packed:
            enc = _MSGPACK.encode
            return b"".join((self.head, _SEQ_KEY, enc(seq), self.middle, enc(self._ts.pack(
                *[start + _STEP * k for k in range(self.readings)])), self.blocks[seq & 3]))
        ts = _ENCODER.encode([start + _STEP * k for k in range(self.readings)])
        return b"%s%d%s%s%s" % (self.head, seq, self.middle, ts, self.blocks[seq & 3])


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
        self.streams = [_Stream(d, plan, topics.telemetry(d), rng, t0) for d in devices]
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


def _publisher_main(plan: FloodPlan, devices: list[str], connect: dict[str, Any],
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


class Publishers:
    """``plan.processes`` publisher processes: ``start()``, ``set_rate()``, ``stop()``."""

    def __init__(self, plan: FloodPlan, connect: dict[str, Any] | list[dict[str, Any]]) -> None:
        self.plan = plan
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        devices = plan.device_ids()
        n = max(1, plan.processes)
        self._n = n
        shares = [devices[i::n] for i in range(n)]
        connects = connect if isinstance(connect, list) else [
            {**connect, "client_id": f"{connect.get('client_id', 'flood')}-{i}"}
            for i in range(n)]
        self._pipes: list[Any] = []
        self._started: list[Any] = []
        self._rates = [ctx.Value("d", plan.rate / n, lock=False) for _ in range(n)]
        # Per process: [acknowledged, sent] so far, written by it a few times a second.
        self._progress = [ctx.Array("q", 2, lock=False) for _ in range(n)]
        self._reports: list[FloodReport | None] = [None] * n
        self.procs: list[mp.process.BaseProcess] = []
        for i, share in enumerate(shares):
            receive, send = ctx.Pipe(duplex=False)
            started = ctx.Event()
            proc = ctx.Process(
                target=_publisher_main, name=f"flood-{i}", daemon=True,
                args=(plan, share, connects[i], self._rates[i], self._progress[i], self._stop,
                      started, send, i))
            self._pipes.append(receive)
            self._started.append(started)
            self.procs.append(proc)

    def start(self, timeout: float = 60.0) -> None:
        """Start every publisher; raises RuntimeError (with the publisher's reason, e.g. the
        broker refusing its credential) when one does not get connected."""
        for proc in self.procs:
            proc.start()
        deadline = time.monotonic() + timeout
        for i, (started, proc) in enumerate(zip(self._started, self.procs, strict=True)):
            while not started.wait(0.1):
                if not proc.is_alive() or time.monotonic() > deadline:
                    why = self._take_report(i, 2.0)
                    reason = "; ".join(why.errors) if why else "no reason given"
                    self.stop()
                    raise RuntimeError(f"publisher {proc.name} did not start: {reason}")

    def set_rate(self, rate: float) -> None:
        """Offer ``rate`` messages a second in total from now on (0: as fast as acknowledged)."""
        for value in self._rates:
            value.value = rate / self._n

    def acknowledged(self) -> int:
        """Publishes the broker has acknowledged so far, all publishers (a few tenths of a
        second behind)."""
        return sum(self.acknowledged_each())

    def acknowledged_each(self) -> list[int]:
        """As :meth:`acknowledged`, per publisher process (each has its share of the
        devices): on a loaded machine one may start publishing well after the others."""
        return [int(p[0]) for p in self._progress]

    def sent(self) -> int:
        """Publishes sent so far, acknowledged or not (as :meth:`acknowledged`, behind)."""
        return sum(int(p[1]) for p in self._progress)

    def _take_report(self, i: int, timeout: float) -> FloodReport | None:
        if self._reports[i] is None and self._pipes[i].poll(timeout):
            self._reports[i] = self._pipes[i].recv()
        return self._reports[i]

    def stop(self, timeout: float = 180.0) -> FloodReport:
        """Stop publishing; returns what the broker acknowledged, all publishers merged."""
        self._stop.set()
        merged = FloodReport(readings_per_message=self.plan.readings)
        for i, proc in enumerate(self.procs):
            if proc.pid is None:
                continue
            report = self._take_report(i, timeout)
            if report is not None:
                merged.merge(report)
            else:
                merged.errors.append(f"publisher {proc.name} sent no report")
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        return merged

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]
