"""Why a training job stopped: bad input (:class:`TrainingError`) or a cancel request."""

from __future__ import annotations

__all__ = ["TrainingCancelled", "TrainingError"]


class TrainingError(ValueError):
    """The readings, labels, segments or spec cannot produce a model; the message says why."""


class TrainingCancelled(RuntimeError):
    """The job's cancel event was set; nothing was produced."""
