"""The wire types are decoded from several threads at once (an agent's worker and updater, the
simulator's agents in one process, the hub's ingest and API): msgspec must be safe when two
threads decode a type for the first time together.

msgspec 0.22 cached a struct's type information on the class before it had filled it in, and
building the rest calls Python, where the GIL can pass to another thread; that thread then
decoded with a half-built entry and the process died of a segmentation fault (seen once in
the test suite: two agents of the attack scenario parsing their first manifest together).
0.23 publishes the entry only once it is whole. This runs the race in a child process, so a
crash fails this test instead of killing the test run.
"""

from __future__ import annotations

import subprocess
import sys

_RACE = r"""
import sys, threading
from typing import Annotated
import msgspec

sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible
payload = b'{"a": {"x": 1, "y": [1.0, 2.0]}, "b": "s", "c": [{"x": 2, "y": []}]}'
decoded = 0
lock = threading.Lock()
for i in range(300):  # each round a new type, decoded for the first time by 6 threads at once
    inner = msgspec.defstruct(f"Inner{i}", [("x", Annotated[int, msgspec.Meta(ge=0)]),
                                            ("y", list[float])], frozen=True)
    outer = msgspec.defstruct(f"Outer{i}", [
        ("a", inner), ("b", Annotated[str, msgspec.Meta(max_length=9)]),
        ("c", list[inner])], frozen=True)
    barrier = threading.Barrier(6)

    def work(cls=outer):
        global decoded
        barrier.wait()
        if msgspec.json.decode(payload, type=cls).c[0].x == 2:
            with lock:
                decoded += 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
print(decoded)
"""


def test_types_decoded_for_the_first_time_by_several_threads_at_once() -> None:
    done = subprocess.run([sys.executable, "-c", _RACE], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, (
        f"the child died (exit status {done.returncode}; -11 is a segmentation fault): "
        f"{done.stderr[-2000:]}")
    assert done.stdout.split() == [str(300 * 6)], done.stdout
