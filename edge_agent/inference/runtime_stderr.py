"""Lines TFLite prints on the C stderr (fd 2), which no Python setting silences, filtered out
while it works (an interpreter made here, a model converted on the hub), and every other line
passed on."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["filtered_stderr", "quiet_runtime_stderr"]

# The runtime's native logger prints this to the C stderr when it creates its default delegate
# (once per process). It is not a log record, the runtime exports no way to raise its log
# level, and TF_CPP_MIN_LOG_LEVEL does not reach it: only a file-descriptor filter removes it.
_RUNTIME_CHATTER = re.compile(rb"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$")
_stderr_lock = threading.Lock()
# The file fd 2 points at meanwhile: one per process (a bare descriptor of an unlinked file, so
# nothing is left to close at exit), emptied after each use. A new temporary file per
# interpreter was a tenth of a fleet worker's time while 500 devices loaded a model (py-spy: the
# open of an unnamed file in the temporary folder).
_stderr_sink: int | None = None


def _stderr_sink_fd() -> int:
    global _stderr_sink
    if _stderr_sink is None:
        fd, path = tempfile.mkstemp(prefix="edgeloop-stderr-")
        os.unlink(path)
        _stderr_sink = fd
    return _stderr_sink


def quiet_runtime_stderr() -> contextlib.AbstractContextManager[None]:
    """Hold fd 2 meanwhile and pass every line on afterwards except the runtime's chatter."""
    return filtered_stderr(_RUNTIME_CHATTER)


@contextmanager
def filtered_stderr(chatter: re.Pattern[bytes]) -> Iterator[None]:
    """Hold fd 2 meanwhile and pass every line on afterwards except those ``chatter`` matches
    (without their line end). One at a time in a process: fd 2 is the process's."""
    with _stderr_lock:
        sink = _stderr_sink_fd()
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink, 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught = b""
            if os.lseek(sink, 0, os.SEEK_END) > 0:
                os.lseek(sink, 0, os.SEEK_SET)
                while part := os.read(sink, 65536):
                    caught += part
                os.ftruncate(sink, 0)
            os.lseek(sink, 0, os.SEEK_SET)
            kept = [line for line in caught.splitlines(keepends=True)
                    if not chatter.match(line.rstrip(b"\r\n"))]
            if kept:
                os.write(2, b"".join(kept))
