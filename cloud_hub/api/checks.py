"""Checks of what a request names, shared by the routes: a 422 that points at each bad item."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import HTTPException, status
from sqlmodel import Session

from cloud_hub.db.enrollments import enrolled_among

__all__ = ["refuse_unenrolled"]


def refuse_unenrolled(session: Session, devices: Sequence[str], loc: Sequence[str]) -> None:
    """422 naming each listed device that is not enrolled (never, or revoked since): a typo
    would otherwise get a device row, a retained ``desired`` or a job that no device backs."""
    enrolled = enrolled_among(session, devices)
    missing = [(i, d) for i, d in enumerate(devices) if d not in enrolled]
    if missing:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [
            {"loc": [*loc, i], "msg": f"device {d!r} is not enrolled (cloud-hub devices "
             "enroll ID)", "type": "value_error", "input": d}
            for i, d in missing])
