"""The hub's inbound queue hands the worker a batch once it is full (in messages or in bytes) or
the batch wait is over, and at once when an urgent message (an anomaly) joins it. One thread
puts, the test's thread takes; no broker."""

from __future__ import annotations

import threading

from cloud_hub.mqtt.inbox import Inbox


class Message:
    def __init__(self, n: int, qos: int = 1, size: int = 10) -> None:
        self.n = n
        self.payload = b"x" * size
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


def test_a_batch_is_full_at_its_byte_bound_and_a_bigger_message_comes_alone() -> None:
    inbox = Inbox(max_messages=100, max_bytes=1 << 20)
    result: list[list[Message]] = []
    taking = threading.Event()

    def take() -> None:
        taking.set()
        # A wait far longer than the test: only reaching the byte bound can end it early.
        result.append(inbox.take(50, max_bytes=250, wait_s=600.0, first_timeout=5.0))

    worker = threading.Thread(target=take, daemon=True)
    worker.start()
    assert taking.wait(5.0)
    for n in range(1, 4):  # 300 bytes held: more than one batch's 250
        inbox.put(Message(n, size=100))
    worker.join(30.0)
    assert not worker.is_alive(), "reaching the byte bound did not hand the batch over"
    assert [m.n for m in result[0]] == [1, 2], "no more than 250 bytes in the batch"
    assert inbox.last_take_full
    assert inbox.qsize() == 1 and inbox.bytes == 100

    inbox.put(Message(4, size=1000))
    assert [m.n for m in inbox.take(50, max_bytes=250, wait_s=0.0, first_timeout=1.0)] == [3]
    assert [m.n for m in inbox.take(50, max_bytes=250, wait_s=0.0, first_timeout=1.0)] == [4], \
        "a message bigger than the bound is taken, alone"
    assert inbox.bytes == 0
    inbox.put(Message(5))
    assert [m.n for m in inbox.take(50, max_bytes=250, wait_s=0.0, first_timeout=1.0)] == [5]
    assert not inbox.last_take_full, "a batch cut short by its wait is not full"
