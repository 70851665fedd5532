"""Which quantization a device should run, for a model published with mode "auto" (issue 12).

The hub stores the runtime each agent's status reports (``devices.runtime``). A version trained
with mode "auto" keeps every variant of :data:`VARIANT_MODES` that passed the parity gate, each
signed with its own manifest; ``set_desired`` sends each device the one :func:`pick_for_device`
picks, and the device view says which and why."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from shared.messages import AgentRuntime

__all__ = [
    "NO_RUNTIME_REASON",
    "VARIANT_MODES",
    "DevicePick",
    "choose_variant",
    "pick_for_device",
    "runtime_of",
]

# The variants a version keeps beside its published one: those choose_variant can pick.
VARIANT_MODES = ("int8", "float32")

# Fastest first on a runtime whose XNNPACK delegate takes int8 (litert: int8 4.5 us against
# float32 per window, bench/edge.py) and on one whose delegate does not (tflite-runtime 2.14:
# int8 73.6 us on builtin kernels against float32 5.1 us).
_WITH_INT8 = ("int8", "float32")
# The reason a pick made without a runtime records: such picks are made again once the device's
# status names its runtime (cloud_hub.rollouts.desired.repick_variants).
NO_RUNTIME_REASON = "runtime not reported: the published variant, as before"
_WITHOUT_INT8 = ("float32", "int8")


def choose_variant(
    runtime: AgentRuntime | None, passed_parity: Iterable[str]
) -> tuple[str, str] | None:
    """(quantization, why) of the fastest variant that passed the parity gate for a device
    on ``runtime``, or None when no variant passed. A device that reported no runtime (an
    agent from before the field) gets int8, what the hub shipped to every device before."""
    passed = set(passed_parity)
    if runtime is None:
        order, why = _WITH_INT8, "runtime not reported: int8 as before"
    elif runtime.xnnpack_int8:
        order, why = _WITH_INT8, f"{runtime.package} {runtime.version}: XNNPACK runs int8"
    else:
        order, why = _WITHOUT_INT8, (
            f"{runtime.package} {runtime.version}: XNNPACK does not run int8, float32 is faster")
    for quantization in order:
        if quantization in passed:
            if quantization != order[0]:
                why += f"; {order[0]} failed parity"
            return quantization, why
    return None


@dataclass(frozen=True)
class DevicePick:
    """The variant a device is sent: ``quantization``, and ``variant`` as ``desired`` names it
    (None: the version's published variant, fetched at its plain topics, which agents of every
    build understand)."""

    quantization: str
    variant: str | None
    reason: str


def runtime_of(stored: dict[str, Any] | None) -> AgentRuntime | None:
    """The runtime a device row holds (``devices.runtime``), or None (unreported, unreadable)."""
    if stored is None:
        return None
    try:
        return msgspec.convert(stored, AgentRuntime)
    except msgspec.ValidationError:
        return None


def pick_for_device(runtime: AgentRuntime | None, *, published: str,
                    variants: Iterable[str]) -> DevicePick:
    """The variant of a version a device on ``runtime`` is sent. ``published`` is the version's
    own quantization, ``variants`` the others it keeps (all passed the parity gate).

    A device that reported no runtime gets the published variant without naming it: it may be
    an agent of an earlier build, which refuses a ``desired`` with a variant (int8 whenever
    "auto" found int8 fastest on the hub, as before)."""
    others = set(variants) - {published}
    if runtime is None or not others:
        why = NO_RUNTIME_REASON if runtime is None else "the only variant of this version"
        return DevicePick(quantization=published, variant=None, reason=why)
    choice = choose_variant(runtime, others | {published})
    assert choice is not None  # the published variant passed the gate
    quantization, why = choice
    return DevicePick(quantization=quantization,
                      variant=None if quantization == published else quantization, reason=why)
