"""Detection quality on real benchmarks (SKAB, NAB) through the device's TFLite path.

``main(argv)`` is ``simulator evaluate``; heavy imports happen only when it runs.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str]) -> int:
    from simulator.evaluate.cli import main as run

    return run(argv)
