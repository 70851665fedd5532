"""Enrollment: give a device its identity (broker credential + bundle), revoke it, list them."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel import col, select

from cloud_hub.api.deps import AdminKey, HubDep, ReadKey, SessionDep
from cloud_hub.api.errors import errors
from cloud_hub.api.paging import PAGE_HEADERS, CursorQuery, paged
from cloud_hub.db.enrollments import AlreadyRevoked, Enrollment, NotEnrolled
from cloud_hub.db.paging import keyset_page
from cloud_hub.identity.enrollment import DEFAULT_STATE_DIR, Bundle, EnrollmentError
from cloud_hub.identity.enrollment_jobs import BundlesGone, WrongCollectKey
from shared.topics import DEVICE_ID_PATTERN, TopicError

router = APIRouter(tags=["enrollment"])
DeviceIdPath = Annotated[str, Path(pattern=rf"^{DEVICE_ID_PATTERN}$")]
_MAX_BULK = 1000


class SourceSpec(BaseModel):
    """The agent's ``[source]`` section as agent.toml will hold it."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(default="simulated", min_length=1, max_length=200,
                      description="csv | stdin | mqtt | simulated | an entry point name")
    options: dict[str, Any] = Field(
        default_factory=dict, description="the source's options: strings, numbers, booleans, "
                                          "lists and tables (TOML has no null)")

    @field_validator("options")
    @classmethod
    def _toml_values(cls, options: dict[str, Any]) -> dict[str, Any]:
        _check_toml(options, "options")
        return options


def _check_toml(value: Any, where: str) -> None:
    if value is None:
        raise ValueError(f"{where} is null, which TOML cannot hold: leave it out")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_toml(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_toml(item, f"{where}[{i}]")


class EnrollRequest(BaseModel):
    """Where the device will keep its state and reach the broker, and its sensor source."""

    model_config = ConfigDict(extra="forbid")

    state_dir: str = Field(default=DEFAULT_STATE_DIR, min_length=1, max_length=4096)
    mqtt_host: str | None = Field(default=None, min_length=1, max_length=253,
                                  description="the broker as devices reach it (default: hub's)")
    mqtt_port: int | None = Field(default=None, ge=1, le=65535)
    source: SourceSpec | None = Field(
        default=None, description='the agent\'s [source], e.g. {"type": "csv", "options": '
                                  '{"path": "..."}}; default: a simulated pump')


class BulkEnrollRequest(EnrollRequest):
    device_ids: list[Annotated[str, Field(pattern=rf"^{DEVICE_ID_PATTERN}$")]] = Field(
        min_length=1, max_length=_MAX_BULK, description="distinct device ids")

    @field_validator("device_ids")
    @classmethod
    def _distinct(cls, ids: list[str]) -> list[str]:
        twice = sorted(d for d, n in Counter(ids).items() if n > 1)
        if twice:
            shown = ", ".join(repr(d) for d in twice[:10]) + (" …" if len(twice) > 10 else "")
            raise ValueError(f"each device id once: {shown} listed more than once")
        return ids


class BundlePublic(BaseModel):
    device_id: str
    agent_toml: str = Field(description="write as agent.toml (0600) and run edge-agent on it")
    ca_pem: str | None = Field(description="write as ca.crt beside agent.toml")
    username: str | None
    password: str | None
    mqtt: dict[str, Any]
    trust_keys: dict[str, str]
    fingerprints: dict[str, str] = Field(description="SHA-256 of each pinned key, to compare "
                                                     "out of band")
    broker_credential: bool = Field(description="the hub created the broker credential")


class EnrollmentPublic(BaseModel):
    device_id: str
    enrolled_at: float
    revoked_at: float | None
    broker_credential: bool


class Revoked(BaseModel):
    device_id: str
    revoked_at: float
    broker_seconds: float | None = Field(description="from the call until the broker confirmed "
                                                     "deleting the credential")
    broker_credential_deleted: bool


class EnrollmentJobPublic(BaseModel):
    """A bulk enrollment running in the background (``POST /enrollment-jobs``)."""

    id: str
    status: str = Field(description="running | succeeded | failed")
    stage: str = Field(description="queued | clearing (old credentials) | credentials | "
                                   "recording | done")
    devices_total: int
    devices_done: int = Field(description="devices whose broker credential exists so far")
    error: str | None
    created_at: float
    finished_at: float | None
    bundles_ready: bool = Field(description="POST …/bundles hands them out (once)")
    bundles_collected: bool


class EnrollmentJobStarted(EnrollmentJobPublic):
    """The job, and the key its bundles are sealed with: shown here once, kept by no hub."""

    collect_key: str = Field(description="send it to POST /enrollment-jobs/{id}/bundles; "
                                         "any hub process then opens the bundles, once")


class CollectBundles(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collect_key: str = Field(min_length=1, max_length=100,
                             description="the collect_key the job's start answered")


def _options(body: EnrollRequest) -> dict[str, Any]:
    return {"state_dir": body.state_dir, "mqtt_host": body.mqtt_host,
            "mqtt_port": body.mqtt_port,
            "source": body.source.model_dump() if body.source is not None else None}


def _enroll(hub: Any, ids: list[str], body: EnrollRequest) -> list[Bundle]:
    try:
        hub.enrollment_jobs.refuse_busy(ids)
        return hub.enrollment.enroll(ids, **_options(body))  # type: ignore[no-any-return]
    except FileExistsError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except (TopicError, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except EnrollmentError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None


@router.post("/devices/{device_id}/enroll", response_model=BundlePublic,
             status_code=status.HTTP_201_CREATED, responses=errors(409, 503))
def enroll(device_id: DeviceIdPath, hub: HubDep, _key: AdminKey,
           body: EnrollRequest | None = None) -> BundlePublic:
    """Enroll a device: its broker credential (own role, bound client id) and its bundle.
    The password is in the answer only: the hub does not keep it."""
    bundle = _enroll(hub, [device_id], body or EnrollRequest())[0]
    return BundlePublic(**bundle.to_dict())


@router.post("/enrollments", response_model=list[BundlePublic],
             status_code=status.HTTP_201_CREATED, responses=errors(409, 503))
def enroll_many(body: BulkEnrollRequest, hub: HubDep, _key: AdminKey) -> list[BundlePublic]:
    """Enroll up to 1,000 devices at once (one bundle each), answering when done. A large
    fleet can take minutes on mosquitto 2.0: use ``POST /enrollment-jobs`` for it."""
    bundles = _enroll(hub, list(body.device_ids), body)
    return [BundlePublic(**b.to_dict()) for b in bundles]


@router.post("/enrollment-jobs", response_model=EnrollmentJobStarted,
             status_code=status.HTTP_202_ACCEPTED, responses=errors(409))
def start_enrollment_job(body: BulkEnrollRequest, hub: HubDep,
                         _key: AdminKey) -> EnrollmentJobStarted:
    """Enroll up to 1,000 devices in the background: answers at once (what would be refused
    is refused now); follow ``GET /enrollment-jobs/{id}`` (stage, devices done of total), then
    collect the bundles once with ``POST /enrollment-jobs/{id}/bundles``, sending the
    ``collect_key`` this answer holds. For fleets whose enrollment outlasts an HTTP request:
    the broker's work grows with the devices it holds. Any hub process sharing the database
    answers for the job."""
    try:
        started = hub.enrollment_jobs.submit(list(body.device_ids), **_options(body))
    except FileExistsError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except (TopicError, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return EnrollmentJobStarted(**started.job.to_dict(), collect_key=started.collect_key)


@router.get("/enrollment-jobs/{job_id}", response_model=EnrollmentJobPublic,
            responses=errors(404))
def enrollment_job(job_id: Annotated[str, Path(max_length=64)], hub: HubDep,
                   _key: AdminKey) -> EnrollmentJobPublic:
    try:
        return EnrollmentJobPublic(**hub.enrollment_jobs.get(job_id).to_dict())
    except KeyError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, exc.args[0]) from None


@router.post("/enrollment-jobs/{job_id}/bundles", response_model=list[BundlePublic],
             responses=errors(403, 404, 409))
def enrollment_job_bundles(job_id: Annotated[str, Path(max_length=64)], body: CollectBundles,
                           hub: HubDep, _key: AdminKey) -> list[BundlePublic]:
    """Collect the bundles of a job that succeeded, once (a POST: it removes them), opened
    with the job's ``collect_key``: the hub keeps them only sealed with that key, which it
    does not keep, and drops them once collected or 15 minutes after the job ended."""
    try:
        bundles = hub.enrollment_jobs.collect(job_id, body.collect_key)
    except WrongCollectKey as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
    except BundlesGone as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except KeyError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, exc.args[0]) from None
    return [BundlePublic(**b.to_dict()) for b in bundles]


@router.post("/devices/{device_id}/revoke", response_model=Revoked,
             responses=errors(404, 409, 503))
def revoke(device_id: DeviceIdPath, hub: HubDep, _key: AdminKey) -> Revoked:
    """The broker disconnects the device at once and refuses it from then on; the hub
    refuses its messages, trainings and rollouts."""
    try:
        return Revoked(**hub.enrollment.revoke(device_id))
    except AlreadyRevoked as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except NotEnrolled as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except EnrollmentError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None


@router.get("/enrollments", response_model=list[EnrollmentPublic], responses=PAGE_HEADERS)
def enrollments(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    revoked: bool | None = None, limit: Annotated[int, Query(ge=1, le=_MAX_BULK)] = 100,
    cursor: CursorQuery = None,
) -> list[EnrollmentPublic]:
    """Enrolled (and revoked) devices by id; ``revoked``: only those (true) or none (false)."""
    stmt = select(Enrollment)
    if revoked is True:
        stmt = stmt.where(col(Enrollment.revoked_at).is_not(None))
    elif revoked is False:
        stmt = stmt.where(col(Enrollment.revoked_at).is_(None))
    rows = paged(request, response, cursor, lambda after: keyset_page(
        session, stmt, order=[col(Enrollment.device_id)], limit=limit, after=after))
    return [EnrollmentPublic(**e.model_dump()) for e in rows]
