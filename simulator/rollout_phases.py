"""Where a rollout's time went on the devices: each device's steps, summarised over the fleet.

A fleet-scale device (:mod:`simulator.scale_device`) keeps a timeline of its reported states and
of when each desired, manifest and chunk was read from its socket, on one clock
(``time.monotonic()``, the same in every process of the machine). Per device:

- ``desired``: the rollout's start → ``downloading`` reported (the hub's desired reached the
  device and its core handled it): ``desired_delivery`` (start → read from the socket: the
  hub's publish and the broker) and ``desired_handled`` (read → handled);
- ``manifest_wait``: ``downloading`` → the manifest read from the socket (the subscribe's way
  to the broker, the retained manifest's way back, the worker's wait to read the socket);
- ``manifest_check``: read → checked (the wait for the device's tick and for a turn of the
  update step budget, the signature check; the manifest's ``downloading`` report stamps it);
- ``chunks_wait``: manifest checked → the last chunk read (subscribes, broker, socket reads);
- ``chunks_handled``: the last chunk read → ``verifying`` reported (the wait for the tick);
- ``download``: ``downloading`` → ``verifying`` (all of the four above but ``desired``);
- ``verify``: ``verifying`` → ``shadow`` (size, sha256, signature, the interpreter's build; with
  a step budget, the wait for a turn);
- ``shadow_swap``: ``shadow`` → ``active`` (the shadow windows, then the swap);
- ``total``: the rollout's start → ``active``.

Each is summarised as min / p50 / p99 / max seconds over the devices that went through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["STEPS", "device_steps", "summarise_steps"]

# (name, from mark, to mark); "start" is the rollout's start. The first stamp of each mark counts.
STEPS: tuple[tuple[str, str, str], ...] = (
    ("desired", "start", "downloading"),
    ("desired_delivery", "start", "desired_read"),
    ("desired_handled", "desired_read", "downloading"),
    ("manifest_wait", "downloading", "manifest_read"),
    ("manifest_check", "manifest_read", "downloading@last"),
    ("chunks_wait", "downloading@last", "chunk_read@last"),
    ("chunks_handled", "chunk_read@last", "verifying"),
    ("download", "downloading", "verifying"),
    ("verify", "verifying", "shadow"),
    ("shadow_swap", "shadow", "active"),
    ("total", "start", "active"),
)


def device_steps(line: Sequence[tuple[str, float]], started: float) -> dict[str, float]:
    """One device's step durations (seconds) from its timeline; a step whose marks are not both
    there is left out. ``mark@last``: that mark's last stamp (a model's last chunk)."""
    first: dict[str, float] = {"start": started}
    last: dict[str, float] = {}
    for mark, t in line:
        first.setdefault(mark, t)
        last[mark] = t

    def at(mark: str) -> float | None:
        if mark.endswith("@last"):
            return last.get(mark[:-len("@last")])
        return first.get(mark)

    out: dict[str, float] = {}
    for name, begin, end in STEPS:
        a, b = at(begin), at(end)
        if a is not None and b is not None:
            out[name] = b - a
    return out


def summarise_steps(timeline: Mapping[str, Sequence[tuple[str, float]]],
                    started: float) -> dict[str, dict[str, float]]:
    """min / p50 / p99 / max seconds of each step over the devices (see the module docstring)."""
    per_step: dict[str, list[float]] = {name: [] for name, _, _ in STEPS}
    for line in timeline.values():
        for name, seconds in device_steps(line, started).items():
            per_step[name].append(seconds)
    out: dict[str, dict[str, float]] = {}
    for name, values in per_step.items():
        if values:
            low, p50, p99, top = np.percentile(values, [0, 50, 99, 100])
            out[name] = {"min": round(float(low), 3), "p50": round(float(p50), 3),
                         "p99": round(float(p99), 3),
                         "max": round(float(top), 3), "devices": len(values)}
    return out
