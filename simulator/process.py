"""Child processes the simulator starts (the broker, the hub): stopping them and reading logs.

Standard library only: the broker launcher uses it in the minimal edge venv too.
"""

from __future__ import annotations

import logging
import signal
import subprocess
from pathlib import Path

__all__ = ["log_tail", "terminate"]

log = logging.getLogger(__name__)


def terminate(proc: subprocess.Popen[bytes], timeout: float, what: str) -> int:
    """SIGTERM (as systemd would, so state is saved), wait, SIGKILL if it must; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs of SIGTERM; killing it", what, timeout)
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


def log_tail(path: Path, n: int) -> str:
    """The last ``n`` lines of a log file, or "" when it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
