"""Run one training job in a child process, so TensorFlow never loads into the hub.

The hub's RSS stayed at ~720 MB after one training when TensorFlow was imported in-process, and a
crash in training (native abort, out of memory) would have taken MQTT ingest down with it. Here a
spawned child imports the pipeline, trains, and sends its progress and the finished artifact
back over a pipe; the hub process only registers the result. A cancel request is an event the
child's training loop polls; a child that dies without an answer fails the job with the reason
(signal or exit code).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, cast

import numpy as np

from cloud_hub.training.artifact import ModelArtifact, TrainingProgress, TrainingSpec
from cloud_hub.training.errors import TrainingCancelled, TrainingError

__all__ = ["TrainingProcessDied", "train_federated_in_child", "train_in_child"]

log = logging.getLogger(__name__)

_POLL_S = 0.2
_CANCEL_GRACE_S = 30.0  # a cancelled child that does not stop by itself is killed after this


class TrainingProcessDied(RuntimeError):
    """The training child ended without a result (killed, crashed or out of memory)."""


def train_in_child(
    readings: np.ndarray,
    channels: list[str],
    spec: TrainingSpec,
    *,
    segments: list[int] | None = None,
    labels: np.ndarray | None = None,
    progress: Callable[[TrainingProgress], None] | None = None,
    cancel: threading.Event | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ModelArtifact:
    """:func:`cloud_hub.training.pipeline.run_training` in a spawned child process, with the
    same arguments and errors; ``on_start`` gets the child's pid."""
    return _in_child("run_training", (readings, channels, spec),
                     {"segments": segments, "labels": labels}, progress, cancel, on_start)


def train_federated_in_child(
    stats: Any, spec: TrainingSpec, *,
    progress: Callable[[TrainingProgress], None] | None = None,
    cancel: threading.Event | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ModelArtifact:
    """:func:`cloud_hub.training.federated.run_federated_training` in a child process."""
    return _in_child("run_federated_training", (stats, spec), {}, progress, cancel, on_start)


def _in_child(
    entry: str, args: tuple[Any, ...], kwargs: dict[str, Any],
    progress: Callable[[TrainingProgress], None] | None, cancel: threading.Event | None,
    on_start: Callable[[int], None] | None,
) -> ModelArtifact:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    stop = context.Event()
    child = context.Process(
        target=_child_main, name="edgeloop-training", daemon=True,
        args=(send, stop, entry, args, kwargs, logging.getLogger().getEffectiveLevel()),
    )
    child.start()
    send.close()  # the child holds the only writer: EOF on our side means it is gone
    if on_start is not None and child.pid is not None:
        on_start(child.pid)
    cancel_at: float | None = None
    try:
        while True:
            if cancel is not None and cancel.is_set() and cancel_at is None:
                stop.set()
                cancel_at = time.monotonic()
            if cancel_at is not None and time.monotonic() - cancel_at > _CANCEL_GRACE_S:
                child.kill()
                raise TrainingCancelled("training cancelled (the child was stopped)")
            try:
                ready = receive.poll(_POLL_S)
                message = receive.recv() if ready else None
            except (EOFError, OSError):
                break
            if message is None:
                if not child.is_alive():
                    break
                continue
            kind, body = message
            if kind == "progress" and progress is not None:
                progress(body)
            elif kind == "result":
                return cast(ModelArtifact, body)
            elif kind == "error":
                raise _rebuild_error(*body)
        child.join(10.0)
        raise TrainingProcessDied(f"the training process {_how_it_ended(child.exitcode)}")
    finally:
        receive.close()
        if child.is_alive():
            child.kill()
        child.join(10.0)


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is None:
        return "did not end"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"was killed by {name}{hint} before it finished"
    return f"exited with code {exitcode} before it finished"


def _rebuild_error(kind: str, message: str) -> Exception:
    known: dict[str, type[Exception]] = {
        "TrainingError": TrainingError, "TrainingCancelled": TrainingCancelled,
    }
    error_type = known.get(kind)
    if error_type is not None:
        return error_type(message)
    return RuntimeError(f"{kind}: {message}")


def _child_main(
    send: Connection, stop: Any, entry: str, args: tuple[Any, ...], kwargs: dict[str, Any],
    log_level: int,
) -> None:
    """The child: train, report progress, send the artifact or the error, and exit."""
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)s training-child %(name)s: %(message)s")
    # TensorFlow loads here, in the child
    from cloud_hub.training.federated import run_federated_training
    from cloud_hub.training.pipeline import run_training

    run: Callable[..., ModelArtifact] = (
        run_training if entry == "run_training" else run_federated_training)

    def report(update: TrainingProgress) -> None:
        send.send(("progress", update))

    try:
        artifact = run(*args, progress=report, cancel=cast(threading.Event, stop), **kwargs)
    except Exception as exc:
        send.send(("error", (type(exc).__name__, str(exc))))
    else:
        send.send(("result", artifact))
    finally:
        send.close()
