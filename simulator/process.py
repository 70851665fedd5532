"""Child processes the simulator starts (the broker, the hub, agents): starting them tied to
this process, stopping them and reading their logs.

A child started with :func:`start_child` does not outlive the process that started it: the
kernel sends it SIGTERM when its parent dies, however the parent dies (a SIGKILLed test worker,
a CI timeout), and at a normal exit an ``atexit`` hook stops whatever is still running. Without
this, a killed test run left brokers and hubs running, holding their ports.

Standard library only: the broker launcher uses it in the minimal edge venv too.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import ctypes
import logging
import os
import pwd
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["log_tail", "start_child", "stop_children", "terminate"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_EXIT_GRACE_S = 10.0  # how long the atexit hook waits for its SIGTERMed children


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


# -- children tied to this process ---------------------------------------------------------
_children: list[subprocess.Popen[Any]] = []
_children_lock = threading.Lock()
_owner_pid: int | None = None  # the process whose atexit hook stops them (not a fork of it)


def _parent_death_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel for SIGTERM when the parent dies (Linux only).

    Everything it calls is resolved here, in the parent: the forked child only makes the
    system call. The kernel sends the signal when the *thread* that forked the child ends,
    which is why :func:`start_child` forks from a thread that lives as long as the process.
    It also drops the request when the child changes its user id, so a child that must run
    as another user is started as that user (``user=``) rather than left to switch itself."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    getppid, exit_now = os.getppid, os._exit

    def tie_to_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if getppid() != parent:  # the parent died between fork and prctl
            exit_now(1)

    return tie_to_parent


class _Spawner:
    """One long-lived thread that forks the children asked for from short-lived threads."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._jobs = queue.SimpleQueue()
        threading.Thread(target=self._run, name="child-spawner", daemon=True).start()

    def _run(self) -> None:
        while True:
            job, future = self._jobs.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job())
                except BaseException as exc:  # handed back to the caller, raised there
                    future.set_exception(exc)

    def run(self, job: Callable[[], Any]) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((job, future))
        return future.result()


_spawner: _Spawner | None = None


def _from_long_lived_thread(job: Callable[[], Any]) -> Any:
    global _spawner
    if threading.current_thread() is threading.main_thread():
        return job()
    with _children_lock:
        if _spawner is None:
            _spawner = _Spawner()
        spawner = _spawner
    return spawner.run(job)


def _run_as(user: str | None) -> dict[str, Any]:
    """``Popen`` arguments that start the child as ``user`` when this process is root (and
    the user exists): what mosquitto would switch to by itself, losing its tie to us."""
    if user is None or os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return {}
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def start_child(argv: Sequence[str], *, user: str | None = None,
                **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(argv, **popen_kwargs)`` in its own session, tied to this process:
    SIGTERM when this process dies, stopped by an ``atexit`` hook at a normal exit. ``user``:
    run the child as this user when started as root (the broker's ``mosquitto``)."""
    global _owner_pid
    hook = _parent_death_hook()
    kwargs = {"start_new_session": True, **popen_kwargs, **_run_as(user)}
    if hook is not None:
        kwargs["preexec_fn"] = hook
    proc: subprocess.Popen[Any] = _from_long_lived_thread(lambda: subprocess.Popen(argv, **kwargs))
    with _children_lock:
        _children[:] = [c for c in _children if c.poll() is None]
        _children.append(proc)
        if _owner_pid != os.getpid():
            _owner_pid = os.getpid()
            atexit.register(stop_children)
    return proc


def stop_children(timeout: float = _EXIT_GRACE_S) -> None:
    """SIGTERM every child :func:`start_child` started that still runs, then wait for them
    (SIGKILL after ``timeout``). Run at exit; only in the process that started them."""
    if _owner_pid != os.getpid():
        return
    with _children_lock:
        running = [c for c in _children if c.poll() is None]
        _children.clear()
    for child in running:
        log.warning("stopping child process %d (%s) left running at exit", child.pid,
                    Path(str(child.args[0] if isinstance(child.args, list | tuple)
                             else child.args)).name)
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in running:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
