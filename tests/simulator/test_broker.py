"""The test/demo broker keeps its state across a graceful restart, wherever its workdir is."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import paho.mqtt.client as mqtt

from shared.topics import TopicAccess
from simulator.broker import Broker

TOPIC = "edgeloop/v1/test/retained"


def _client(broker: Broker, name: str) -> tuple[mqtt.Client, threading.Event]:
    connected = threading.Event()
    access = TopicAccess(publish=(TOPIC,), subscribe=(TOPIC,))
    client = broker.client(broker.add_client(name, access), protocol=mqtt.MQTTv311)
    client.on_connect = lambda *_args: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert connected.wait(10), "the broker accepted the connection"
    return client, connected


def test_retained_message_survives_a_restart_with_workdir_in_a_private_folder(
    tmp_path: Path,
) -> None:
    # pytest's tmp_path sits in a 0700 folder the mosquitto user cannot enter: the case where
    # every save used to fail with "Permission denied" and a restart came back empty.
    broker = Broker(workdir=tmp_path / "mosquitto").start()
    try:
        writer, _ = _client(broker, "writer")
        writer.publish(TOPIC, b"kept", qos=1, retain=True).wait_for_publish(10)
        writer.disconnect()
        writer.loop_stop()
        broker.stop()
        assert "Permission denied" not in broker.log_tail(200)
        assert list(broker.data_dir.glob("mosquitto.db")), "the broker saved its state"
        broker.start()

        received: queue.Queue[bytes] = queue.Queue()
        reader, _ = _client(broker, "reader")
        reader.on_message = lambda _c, _u, m: received.put(m.payload)
        reader.subscribe(TOPIC, qos=1)
        assert received.get(timeout=10) == b"kept"
        reader.disconnect()
        reader.loop_stop()
    finally:
        broker.close()
    assert not broker.data_dir.exists(), "close() removes the saved state"
