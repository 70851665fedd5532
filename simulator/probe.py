"""An MQTT v5 client that records what the broker answered (CONNACK, PUBACK reasons, being
disconnected): how the attack scenario tells that the broker refused something."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from paho.mqtt.client import Client, MQTTMessage

from simulator.broker import Broker, Credential

__all__ = ["Probe", "wait_until"]


class Probe:
    """One attacker's MQTT v5 connection and what the broker answered."""

    def __init__(self, broker: Broker, credential: Credential | None, *,
                 client_id: str | None = None) -> None:
        self.connack: str | None = None
        self._answered = threading.Event()
        self.dropped = threading.Event()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._acks: dict[int, str] = {}
        self._acked = threading.Condition()
        self.client: Client = broker.client(credential, client_id=client_id)
        self.client.reconnect_delay_set(600, 600)  # a refused attacker does not retry here
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_ack
        self.client.on_message = self._on_message
        self.client.connect_async(broker.host, broker.port)
        self.client.loop_start()
        if not self._answered.wait(15):
            self.connack = "no answer"

    @property
    def connected(self) -> bool:
        return self.connack == "Success" and not self.dropped.is_set()

    def _on_connect(self, _c: Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connack = str(rc)
        self._answered.set()

    def _on_disconnect(self, _c: Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        with self._acked:  # a publish waiting for its PUBACK learns at once that none comes
            self.dropped.set()
            self._acked.notify_all()

    def _on_message(self, _c: Client, _u: Any, m: MQTTMessage) -> None:
        self.messages.put((m.topic, bytes(m.payload)))

    def _on_ack(self, _c: Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._acked:
            self._acks[mid] = str(rc)
            self._acked.notify_all()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                timeout: float = 10.0) -> str:
        """The broker's answer to a QoS 1 publish: its PUBACK reason, or what happened. A
        dropped connection ends the wait (this client does not reconnect, so no PUBACK comes)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._acked:
            self._acked.wait_for(lambda: info.mid in self._acks or self.dropped.is_set(), timeout)
            if info.mid in self._acks:
                return self._acks[info.mid]
        return "disconnected by the broker" if self.dropped.is_set() else "no PUBACK"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()



def wait_until(condition: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.25)
