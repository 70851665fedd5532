"""The hub's vocabularies of states and kinds, one ``StrEnum`` each.

The values are exactly the strings stored in the database and shown by the API, so a member
compares equal to its string and no stored value changes. Tables keep them in plain string
columns through :class:`cloud_hub.db.types.StrEnumType`, which refuses a value outside its
enum on the way in and gives the member back on the way out.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ConflictKind", "DeliveryStatus", "DevicePresence", "EnrollmentJobStatus", "IncidentState",
    "JobStatus", "KeyStatus",
    "ModelStatus", "ROLLOUT_ACTIVE", "RetrainScope", "RetrainState", "RetrainTrigger",
    "RolloutAction", "RolloutStatus", "StageState", "TrainingSource", "TrainingStage", "Verdict",
    "WebhookEvent",
]


class ModelStatus(StrEnum):
    """A registered model version: only a published one can be rolled out."""

    DRAFT = "draft"
    PUBLISHED = "published"
    RETIRED = "retired"


class JobStatus(StrEnum):
    """A training job."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _JOB_FINISHED


_JOB_FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class TrainingStage(StrEnum):
    """Where a training job is (its ``progress.stage``)."""

    QUEUED = "queued"
    PREPARING = "preparing"
    FITTING = "fitting"
    THRESHOLDING = "thresholding"
    CONVERTING = "converting"
    PARITY = "parity"
    DONE = "done"


class RolloutStatus(StrEnum):
    """A staged rollout."""

    RUNNING = "running"
    PAUSED = "paused"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"
    SUCCEEDED = "succeeded"

    @property
    def active(self) -> bool:
        """Still holds its devices: no other rollout may take them."""
        return self in ROLLOUT_ACTIVE


ROLLOUT_ACTIVE = (RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.ROLLING_BACK)


class RolloutAction(StrEnum):
    """What an admin asks of a rollout besides a rollback."""

    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"


class StageState(StrEnum):
    """A stage of a rollout as the console shows it."""

    WAITING = "waiting"
    CURRENT = "current"
    DONE = "done"
    REVERTED = "reverted"


class Verdict(StrEnum):
    """What the rollout policy says of a stage."""

    WAIT = "wait"
    PASS = "pass"
    BREACH = "breach"


class DevicePresence(StrEnum):
    """How the console shows a device: ``silent`` is online by its status record but has sent
    nothing for a while."""

    ONLINE = "online"
    SILENT = "silent"
    OFFLINE = "offline"


class IncidentState(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class DeliveryStatus(StrEnum):
    """A webhook delivery."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookEvent(StrEnum):
    INCIDENT_OPENED = "incident.opened"
    INCIDENT_RESOLVED = "incident.resolved"


class EnrollmentJobStatus(StrEnum):
    """A bulk enrollment job (``enrollment_jobs``)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class KeyStatus(StrEnum):
    """A signing key: ``active`` signs new releases, ``trusted`` is still in the agents' trust
    list, ``retired`` is not."""

    ACTIVE = "active"
    TRUSTED = "trusted"
    RETIRED = "retired"


class RetrainState(StrEnum):
    """A retraining run, from its trigger to its outcome."""

    TRIGGERED = "triggered"
    TRAINING = "training"
    RELEASING = "releasing"
    CANARY = "canary"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class RetrainTrigger(StrEnum):
    DRIFT = "drift"
    ANOMALY_RATE = "anomaly_rate"
    OPERATOR = "operator"


class RetrainScope(StrEnum):
    """Whom a retraining is for: the devices that triggered it, or their whole group."""

    DRIFTED = "drifted"
    GROUP = "group"


class TrainingSource(StrEnum):
    """What a retraining trains on: stored readings, or the devices' pooled statistics."""

    TELEMETRY = "telemetry"
    FEDERATED = "federated"


class ConflictKind(StrEnum):
    """How a device id showed that two sources use it."""

    EPOCHS = "epochs"  # two stream epochs alternate
    SEQ = "seq"  # one epoch, the same seq with different content
