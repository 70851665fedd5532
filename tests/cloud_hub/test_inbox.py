"""The hub's inbound queue hands the worker a batch once it is full or the batch wait is over,
and at once when an urgent message (an anomaly) joins it. One thread puts, the test's thread
takes; no broker."""

from __future__ import annotations

import threading

from cloud_hub.mqtt.inbox import Inbox


class Message:
    def __init__(self, n: int, qos: int = 1) -> None:
        self.n = n
        self.payload = b"x" * 10
        self.qos = qos


def test_a_batch_waits_for_the_batch_wait_when_nothing_urgent_comes() -> None:
    inbox = Inbox(max_messages=100, max_bytes=1 << 20)
    inbox.put(Message(1))
    taken = inbox.take(10, wait_s=0.05, first_timeout=1.0)
    assert [m.n for m in taken] == [1]
    assert inbox.qsize() == 0


def test_an_urgent_message_ends_the_batch_wait_and_joins_the_batch() -> None:
    inbox = Inbox(max_messages=100, max_bytes=1 << 20)
    inbox.put(Message(1))
    taking = threading.Event()
    result: list[list[Message]] = []

    def take() -> None:
        taking.set()
        # A wait far longer than the test: only the urgent message can end it early.
        result.append(inbox.take(10, wait_s=600.0, first_timeout=1.0))

    worker = threading.Thread(target=take)
    worker.start()
    assert taking.wait(5.0)
    inbox.put(Message(2))
    inbox.put(Message(3), urgent=True)
    worker.join(30.0)
    assert not worker.is_alive(), "the urgent message did not end the batch wait"
    assert [m.n for m in result[0]] == [1, 2, 3]


def test_urgency_does_not_outlive_its_batch() -> None:
    inbox = Inbox(max_messages=100, max_bytes=1 << 20)
    inbox.put(Message(1), urgent=True)
    assert [m.n for m in inbox.take(10, wait_s=600.0, first_timeout=1.0)] == [1]
    inbox.put(Message(2))
    taking = threading.Event()
    result: list[list[Message]] = []

    def take() -> None:
        taking.set()
        result.append(inbox.take(10, wait_s=600.0, first_timeout=1.0))

    worker = threading.Thread(target=take, daemon=True)
    worker.start()
    assert taking.wait(5.0)
    worker.join(0.5)
    assert worker.is_alive(), "a later batch waited for nothing"
    for n in range(3, 12):  # filling the batch (10) hands it over
        inbox.put(Message(n))
    worker.join(30.0)
    assert [m.n for m in result[0]] == list(range(2, 12))
