"""The rollout controller: one thread that moves every active rollout forward (and, every
:data:`REPICK_EVERY_S`, sends devices whose runtime has become known their variant of the version
they were told to run: :func:`repick_variants`).

Each tick it looks at the devices of the current stage (their ``reported`` state as ingest
stored it: :mod:`cloud_hub.rollouts.observe`), asks :func:`judge_stage` for a verdict, and then
starts the next stage, finishes the rollout, or rolls back: ``desired`` goes back to the
previous version on every device the rollout touched, and the rollout is ``rolled_back`` only
once each of them reports it runs that version.

A tick commits through its lease (:meth:`~cloud_hub.db.leases.Lease.session`), and publishes
releases and ``desired`` only once the lease is confirmed in the transaction that records them
(:func:`~cloud_hub.db.leases.confirm_lease`): a tick that stalled while another hub process took
the lease over and ran the same step publishes nothing and commits nothing.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cloud_hub.core.states import ROLLOUT_ACTIVE, RolloutStatus, Verdict
from cloud_hub.db.leases import LeaseLost
from cloud_hub.db.registry_tables import Rollout, RolloutDevice
from cloud_hub.db.tables import Device
from cloud_hub.jobs.leased import LeasedThread
from cloud_hub.mqtt.publisher import PublishError
from cloud_hub.registry.lifecycle import get_model
from cloud_hub.registry.releases import Releases
from cloud_hub.rollouts.desired import repick_variants, set_desired
from cloud_hub.rollouts.observe import baseline_rates, observe_stage
from cloud_hub.rollouts.policy import judge_stage
from shared.messages import ModelRef

__all__ = ["ACTIVE_STATES", "RolloutController", "rest_after"]

log = logging.getLogger(__name__)

ACTIVE_STATES = ROLLOUT_ACTIVE


# Ingest wakes the controller after each commit. A tick over a 1,000-device stage costs tens of
# milliseconds of CPU, and back-to-back ticks while the devices' reports poured in were half of
# the hub's CPU during bench/rollout.py (py-spy), taken from ingest and, on a shared machine,
# from the devices themselves. After a tick the controller rests REST_FACTOR times the CPU that
# tick took (at most MAX_REST_S): at most a quarter of a core, and a cheap tick (a small stage,
# nothing running) is followed at once.
REST_FACTOR = 3.0
MAX_REST_S = 0.5
# A device's first status names its runtime a moment after it connects; the variant it was sent
# before that is picked again within this long (one query over the devices each time).
REPICK_EVERY_S = 2.0


def rest_after(tick_cpu_s: float) -> float:
    """Seconds the controller waits before its next tick, even when woken sooner."""
    return min(MAX_REST_S, max(0.0, tick_cpu_s) * REST_FACTOR)


# A rollout whose step fails this many times in a row (other than for a broker outage, which
# is retried for ever) is aborted with the error as its reason.
MAX_STEP_FAILURES = 3


class RolloutController(LeasedThread):
    """Ticks in the one hub process holding the ``rollouts`` lease (hub processes may share a
    database); each rollout's step also locks its row (PostgreSQL), so an admin's rollback
    through another hub process waits for the step in progress instead of racing it. Ingest
    wakes it after each commit, so a `reported` change is acted on at once."""

    def __init__(self, engine: Engine, releases: Releases, *, tick_s: float = 0.5,
                 holder: str | None = None, lease_ttl_s: float = 15.0) -> None:
        super().__init__(engine, name="rollouts", interval_s=tick_s, lease_ttl_s=lease_ttl_s,
                         holder=holder)
        self._engine, self._releases, self._tick = engine, releases, tick_s
        self.ticks = 0
        self._lock = threading.Lock()  # one tick at a time (thread and REST actions)
        self._failures: dict[int, int] = {}  # rollout id -> consecutive failed steps
        self._repicked_at = -REPICK_EVERY_S

    def _run(self) -> None:
        rest = 0.0
        while not self._stop.is_set():
            self._wake.wait(self._tick)
            if rest > 0 and self._stop.wait(rest):
                break
            self._wake.clear()  # the wakes that came while it rested are this one tick
            cpu = time.thread_time()
            try:
                if self._lease.keep():
                    self.tick()
                    self.ticks += 1
            except LeaseLost as exc:  # another hub process runs the rollouts now
                self._lease.lost()
                log.warning("rollout controller: %s", exc)
            except Exception:  # a broken rollout must not stop the others
                self._lease.lost()  # renew first next time: the failure may have been it
                log.exception("rollout controller tick failed")
            rest = rest_after(time.thread_time() - cpu)

    def tick(self, now: float | None = None) -> None:
        """Move every active rollout one step, each in its own session: an error in one (a
        bad stored target, say) is contained to it and never holds the others back. Every
        commit is fenced by the lease (:class:`LeaseLost` ends the tick)."""
        with self._lock:
            with Session(self._engine) as session:
                ids = session.exec(select(Rollout.id).where(
                    col(Rollout.status).in_((RolloutStatus.RUNNING,
                                          RolloutStatus.ROLLING_BACK)))).all()
            for rollout_id in ids:
                if rollout_id is not None:
                    self._tick_one(rollout_id, now or time.time())
            if time.monotonic() - self._repicked_at >= REPICK_EVERY_S:
                self._repicked_at = time.monotonic()
                self.repick()

    def repick(self) -> list[str]:
        """:func:`repick_variants`; an error is logged, never raised into the tick."""
        try:
            with self._lease.session() as session:
                sent = repick_variants(session, releases=self._releases)
        except LeaseLost:
            raise
        except Exception:
            log.exception("picking variants again failed")
            return []
        if sent:
            log.info("variant picked again for %d device(s) whose runtime is now known: %s",
                     len(sent), ", ".join(sent[:10]))
        return sent

    def _tick_one(self, rollout_id: int, now: float) -> None:
        try:
            with self._lease.session() as session:
                rollout = session.get(Rollout, rollout_id, with_for_update=True)
                if rollout is None:
                    return
                if rollout.status == RolloutStatus.RUNNING:
                    self._advance(session, rollout, now)
                elif rollout.status == RolloutStatus.ROLLING_BACK:
                    self._confirm_rollback(session, rollout, now)
        except LeaseLost:  # not the rollout's failure: the whole tick ends
            raise
        except PublishError as exc:  # the broker is away: try again next tick, for ever
            self._tick_failed(rollout_id, exc, give_up=False)
        except Exception as exc:
            self._tick_failed(rollout_id, exc, give_up=True)
        else:
            self._failures.pop(rollout_id, None)

    def _tick_failed(self, rollout_id: int, exc: Exception, *, give_up: bool) -> None:
        """Log a rollout's error once; abort it when the error persists (not a broker outage)."""
        count = self._failures.get(rollout_id, 0) + 1
        self._failures[rollout_id] = count
        if count == 1:
            log.error("rollout %s: step failed (%s: %s); the other rollouts go on",
                      rollout_id, type(exc).__name__, exc, exc_info=give_up)
        if not give_up or count < MAX_STEP_FAILURES:
            return
        reason = (f"aborted by the controller after {count} failed steps: "
                  f"{type(exc).__name__}: {exc}")[:2000]
        try:
            with self._lease.session() as session:
                rollout = session.get(Rollout, rollout_id)
                if rollout is not None and rollout.status in ACTIVE_STATES:
                    rollout.status, rollout.reason = RolloutStatus.ABORTED, reason
                    rollout.finished_at = time.time()
                    session.add(rollout)
                    session.commit()
            log.error("rollout %s: %s", rollout_id, reason)
            self._failures.pop(rollout_id, None)
        except LeaseLost:
            raise
        except Exception:
            log.exception("rollout %s: could not mark it aborted", rollout_id)

    # -- forward -------------------------------------------------------------------------
    def _stage_devices(self, session: Session, rollout: Rollout) -> list[RolloutDevice]:
        return list(session.exec(select(RolloutDevice).where(
            RolloutDevice.rollout_id == rollout.id, RolloutDevice.stage == rollout.stage)))

    def _start_stage(self, session: Session, rollout: Rollout, now: float) -> None:
        members = self._stage_devices(session, rollout)
        ids = [m.device_id for m in members]
        devices = {d.device_id: d for d in session.exec(
            select(Device).where(col(Device.device_id).in_(ids)))}
        for m in members:
            device = devices.get(m.device_id)
            if device is not None:
                m.previous_name, m.previous_version = device.active_name, device.active_version
        baselines = baseline_rates(session, members, now) if rollout.stage == 0 else {}
        for m in members:
            m.baseline_rate = baselines.get(m.device_id, 0.0)
            m.desired_at = now
            session.add(m)
        rollout.stage_started_at = now
        session.add(rollout)
        session.flush()
        set_desired(session, releases=self._releases, device_ids=ids,
                    model=ModelRef(name=rollout.model_name, version=rollout.model_version),
                    rollout_id=rollout.id, reason=f"rollout {rollout.id}")  # commits
        sent = dict(session.exec(select(Device.device_id, Device.desired_variant).where(
            col(Device.device_id).in_(ids))).all())
        published = get_model(session, name=rollout.model_name,
                              version=rollout.model_version).quantization
        for m in members:  # which variant each was sent (set_desired picked it per device)
            m.variant = sent.get(m.device_id) or published
            session.add(m)
        session.commit()
        log.info("rollout %s: stage %d started on %d device(s)", rollout.id, rollout.stage,
                 len(ids))

    def _advance(self, session: Session, rollout: Rollout, now: float) -> None:
        if rollout.stage_started_at is None:
            self._start_stage(session, rollout, now)
            return
        observations = observe_stage(session, rollout, now)
        session.commit()
        verdict = judge_stage(observations, rollout.policy, now=now,
                              stage_started_at=rollout.stage_started_at,
                              is_canary=rollout.stage == 0)
        if verdict.state == Verdict.BREACH:
            self.roll_back(session, rollout, verdict.reason, now)
        elif verdict.state == Verdict.PASS:
            if rollout.stage + 1 < len(rollout.stages):
                rollout.stage += 1
                rollout.stage_started_at = None
                session.add(rollout)
                session.commit()
                self._start_stage(session, rollout, now)
            else:
                confirmed = session.exec(select(func.max(RolloutDevice.confirmed_at)).where(
                    RolloutDevice.rollout_id == rollout.id)).one()
                rollout.status, rollout.finished_at = RolloutStatus.SUCCEEDED, now
                rollout.seconds_to_full = (confirmed or now) - rollout.created_at
                session.add(rollout)
                session.commit()
                log.info("rollout %s succeeded: %.1fs to full", rollout.id,
                         rollout.seconds_to_full)

    # -- backward ------------------------------------------------------------------------
    def roll_back_on_request(self, rollout_id: int, reason: str,
                             allowed: tuple[RolloutStatus, ...]) -> str | None:
        """Roll back at an admin's request if the rollout's state is in ``allowed``.

        Runs under the tick lock, so it never races a tick. Returns the state that refused
        it, or None once the rollback started. Not fenced: an admin's request is served by
        whichever hub process gets it (the rollout's row lock orders it with a tick).
        """
        with self._lock, Session(self._engine) as session:
            rollout = session.get(Rollout, rollout_id, with_for_update=True)
            if rollout is None or rollout.status not in allowed:
                return rollout.status if rollout is not None else "missing"
            self.roll_back(session, rollout, reason, time.time())
            return None

    def roll_back(self, session: Session, rollout: Rollout, reason: str, now: float) -> None:
        """Set desired back to the previous version on every device this rollout touched.

        The previous version goes out as a new signed release (see :func:`set_desired`): the
        devices refuse an older release than the one they run.

        `desired` is published before the rollout is marked, so a broker outage in between
        leaves the rollout running and the next tick tries again.
        """
        touched = list(session.exec(select(RolloutDevice).where(
            RolloutDevice.rollout_id == rollout.id, col(RolloutDevice.desired_at).is_not(None))))
        log.warning("rollout %s: rolling back %d device(s): %s", rollout.id, len(touched), reason)
        by_previous: dict[tuple[str | None, int | None], list[str]] = {}
        for m in touched:
            by_previous.setdefault((m.previous_name, m.previous_version), []).append(m.device_id)
        for (name, version), ids in by_previous.items():
            model = ModelRef(name=name, version=version) if name and version else None
            set_desired(session, releases=self._releases, device_ids=ids, model=model,
                        rollout_id=rollout.id, require_published=False,
                        reason=f"rollback of rollout {rollout.id}")
        for m in touched:
            m.reverted_at = now
            session.add(m)
        rollout.status, rollout.reason = RolloutStatus.ROLLING_BACK, reason
        session.add(rollout)
        session.commit()
        self._confirm_rollback(session, rollout, now)

    def _confirm_rollback(self, session: Session, rollout: Rollout, now: float) -> None:
        touched = list(session.exec(select(RolloutDevice).where(
            RolloutDevice.rollout_id == rollout.id, col(RolloutDevice.reverted_at).is_not(None))))
        new = (rollout.model_name, rollout.model_version)
        for m in touched:
            if m.revert_confirmed_at is not None:
                continue
            device = session.get(Device, m.device_id)
            if device is None:
                continue
            active = (device.active_name, device.active_version)
            back = (active == (m.previous_name, m.previous_version) if m.previous_name
                    else active != new)
            if back:
                m.revert_confirmed_at = now
                session.add(m)
        if all(m.revert_confirmed_at is not None for m in touched):
            rollout.status, rollout.finished_at = RolloutStatus.ROLLED_BACK, now
            session.add(rollout)
            log.info("rollout %s rolled back, confirmed by %d device(s)", rollout.id,
                     len(touched))
        session.commit()
