"""Which quantization a device should run, for a model published with mode "auto" (issue 12).

The hub stores the runtime each agent's status reports (``devices.runtime``) and the device
view says which variant this rule prefers there (``runtime_prefers``); rollouts do not yet ship
per-device variants."""

from __future__ import annotations

from collections.abc import Iterable

from shared.messages import AgentRuntime

# Fastest first on a runtime whose XNNPACK delegate takes int8 (litert: int8 4.5 us against
# float32 per window, bench/edge.py) and on one whose delegate does not (tflite-runtime 2.14:
# int8 73.6 us on builtin kernels against float32 5.1 us).
_WITH_INT8 = ("int8", "float32")
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
