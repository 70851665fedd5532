"""A bystander on the anomaly stream: when the broker delivered each device's anomaly.

The fleet bench (``simulator.scale``) runs this in a process of its own, so that the time it
notes is the broker's delivery and not a wait for the fleet process's interpreter lock. It
subscribes to every device's ``anomalies`` as any other system may (its own identity, read-only)
and writes one line per message on stdout: ``{"at": epoch seconds, "device_id", "epoch",
"seq"}``. It stops at end of stdin.

    EDGELOOP_WATCH_PASSWORD=… python -m simulator.anomaly_watch HOST PORT PREFIX USERNAME CA_FILE
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from shared.messages import AnomalyEvent, MessageError, decode
from shared.tls import client_context
from shared.topics import DeviceTopic, Topics

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    host, port, prefix, username, ca_file = argv
    password = os.environ.get("EDGELOOP_WATCH_PASSWORD")
    topics = Topics(prefix)
    out = sys.stdout
    lock = threading.Lock()

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        at = time.time()
        try:
            event = decode(AnomalyEvent, bytes(message.payload))
        except MessageError as exc:
            log.warning("anomaly watch: bad message on %s: %s", message.topic, exc)
            return
        with lock:
            out.write(json.dumps({"at": at, "device_id": event.device_id, "epoch": event.epoch,
                                  "seq": event.seq}) + "\n")
            out.flush()

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any,
                   properties: Any) -> None:
        if reason.is_failure:
            log.error("anomaly watch: the broker refused the connection: %s", reason)
            return
        client.subscribe(topics.all_devices(DeviceTopic.ANOMALIES), qos=1)
        with lock:
            out.write(json.dumps({"subscribed": True}) + "\n")
            out.flush()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=username,
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.username_pw_set(username, password)
    if ca_file:
        client.tls_set_context(client_context(ca_file))
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect(host, int(port))
    client.loop_start()
    try:
        for _ in sys.stdin:
            pass
    finally:
        client.loop_stop()
        client.disconnect()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main(sys.argv[1:]))
