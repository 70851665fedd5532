"""Follows ``desired``: download → verify → load → shadow → activate, reporting each real state.

Runs in the agent's worker thread (the same thread that scores windows), so activation lands
between two windows. On any failure the active model keeps running and ``reported`` says why.
Chunks are fetched one retained topic each, so a restart resumes with the missing ones only and
a chunk with a wrong hash is discarded and fetched again (``chunk_retries`` times). The last
chunk stays in memory and the model is staged from it with the others from disk; a manifest
whose signature was checked as it arrived is not checked again before its bytes are loaded
(a model read back from disk is). The two costly steps, checking a manifest and staging a
model, run when a :class:`StepBudget` lets them (the daemon's always does).

A desired naming another variant of the version that runs (the hub picked again once it knew
the device's runtime) is fetched into the store's switch area beside the running one, checked,
shadowed against it like any update, and only then takes its place (:meth:`ModelStore.
take_switch`). A desired naming no variant is met by whichever variant of the version runs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from edge_agent.config import ModelSettings
from edge_agent.detect.detector import Detector
from edge_agent.detect.records import LoadedModel
from edge_agent.models.store import ModelPointer, ModelStore, StoreError
from shared.codec import ChunkError
from shared.manifest import Manifest, Quantization
from shared.messages import ModelRef, ModelState, ReportedModel
from shared.topics import ParsedTopic, Topics

__all__ = ["UNLIMITED", "ModelLoader", "ModelReport", "ModelUpdater", "StepBudget", "Subscriber",
           "Unlimited"]

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    def subscribe(self, topic_filter: str, qos: int = 1) -> None: ...
    def unsubscribe(self, topic_filter: str) -> None: ...


# Builds a LoadedModel from verified bytes, or raises (ModelLoadError/StoreError) with a reason.
ModelLoader = Callable[[Manifest, bytes], LoadedModel]


class StepBudget(Protocol):
    """Whether an update step may run now: checking a manifest's signature, or staging a model
    (joining and checking its bytes, the signature, building its interpreter). A step refused
    waits in the updater and runs from a later :meth:`ModelUpdater.tick`. A process that drives
    hundreds of devices in one loop (the simulator's fleet) hands them one budget per round, so
    one round never runs hundreds of signature checks and interpreter builds at once; each
    device still checks its own model. The daemon's budget is :data:`UNLIMITED`."""

    def take(self) -> bool: ...


class Unlimited:
    """Every step runs at once (the daemon: one device per process)."""

    def take(self) -> bool:
        return True


UNLIMITED = Unlimited()


@dataclass(frozen=True)
class ModelReport:
    """What ``reported`` says: the model the state is about, the state, why, and what runs."""

    model: ReportedModel | None
    state: ModelState
    error: str | None
    active: ReportedModel | None
    threshold: float | None
    since: float


def _reported(manifest: Manifest | None, ref: ModelRef | None = None) -> ReportedModel | None:
    if manifest is not None:
        return ReportedModel(name=manifest.name, version=manifest.version, sha256=manifest.sha256,
                             variant=manifest.quantization.value)
    if ref is not None:
        return ReportedModel(name=ref.name, version=ref.version, variant=ref.variant)
    return None


_VARIANTS = frozenset(q.value for q in Quantization)


def _label(ref: ModelRef) -> str:
    variant = f" variant {ref.variant}" if ref.variant is not None else ""
    return f"{ref.name} v{ref.version}{variant}"


class ModelUpdater:
    def __init__(
        self,
        *,
        store: ModelStore,
        topics: Topics,
        link: Subscriber,
        detector: Detector,
        loader: ModelLoader,
        settings: ModelSettings,
        on_report: Callable[[ModelReport], None],
        clock: Callable[[], float] = time.monotonic,
        budget: StepBudget = UNLIMITED,
    ) -> None:
        self.store = store
        self.budget = budget
        self.topics = topics
        self.link = link
        self.detector = detector
        self.loader = loader
        self.settings = settings
        self._on_report = on_report
        self._clock = clock
        self.state: ModelState | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # wall clock
        self.refused = 0  # manifests and chunks refused (bad, forged, or not what was asked)
        self.last_report: ModelReport | None = None
        self._target: ModelRef | None = None
        self._manifest: Manifest | None = None
        self._subscribed: set[str] = set()
        self._attempts: dict[int, int] = {}
        self._deadline = 0.0
        self._download_started = 0.0
        self._settled: dict[tuple[str, int], float] = {}  # target -> issued_at it was decided at
        # The manifest accepted from the network in this process (signature checked then):
        # staging it loads the bytes just checked instead of reading both back from disk.
        self._checked: Manifest | None = None
        # The download's last chunk, checked, kept in memory only: staged at once, it need not
        # be written, read back and deleted. The others are on disk (a restart resumes).
        self._received: dict[int, bytes] = {}
        self._missing: set[int] = set()
        self._step: Callable[[], None] | None = None  # a step the budget has not let run yet
        # Where the download in progress goes: the store, or its switch area for another
        # variant of the running version.
        self._dl: ModelStore = store

    # -- start-up ------------------------------------------------------------------------
    def load_current(self) -> None:
        """Run the model the store says is current (checked again), else the previous one."""
        for pointer in (self.store.current(), self.store.previous()):
            if pointer is None:
                continue
            try:
                loaded = self._load(pointer.name, pointer.version)
            except Exception as exc:  # a bad file on disk must not stop the agent
                self._fail_state(f"stored model {pointer.label} unusable: {exc}",
                                 ModelRef(name=pointer.name, version=pointer.version))
                continue
            if pointer != self.store.current():
                self.store.rollback()
            self._activate(loaded, announce=True)
            return

    # -- desired -------------------------------------------------------------------------
    def want(self, ref: ModelRef | None, issued_at: float = 0.0) -> None:
        if ref is None:
            return
        key = (ref.name, ref.version)
        active = self.detector.active
        switching = False
        if active is not None and (active.manifest.name, active.manifest.version) == key:
            if ref.variant in (None, active.manifest.quantization.value):
                if self._target is not None:
                    self._abort("desired changed back to the active model")
                self._report(active.manifest, ModelState.ACTIVE, None)
                return
            switching = True  # another variant of the running version
        if self._target == ref:
            return
        if self._settled.get(key) == issued_at:
            return  # this very request was already decided; a new desired (issued_at) retries
        if self._target is not None:
            self._abort(f"desired changed to {_label(ref)}")
        self._settled[key] = issued_at
        if ref.variant is not None and ref.variant not in _VARIANTS:
            self._fail_state(f"desired names variant {ref.variant!r} of {ref.name} "
                             f"v{ref.version}, which does not exist: a variant is one of "
                             f"{', '.join(q.value for q in Quantization)}", ref)
            return
        self._target = ref
        self._attempts = {}
        self._forget_download()
        if switching:
            log.info("switching %s v%d from variant %s to %s", ref.name, ref.version,
                     active.manifest.quantization.value if active else "?", ref.variant)
        self._dl = self.store.switch_store() if switching else self.store
        self._deadline = self._clock() + self.settings.download_timeout_s
        saved = self._dl.saved_manifest(ref.name, ref.version)
        if saved is not None and ref.variant not in (None, saved.quantization.value):
            if self._dl.discard(ref.name, ref.version):  # another variant of it: fetch anew
                log.info("dropping the stored %s variant of %s v%d for variant %s",
                         saved.quantization.value, ref.name, ref.version, ref.variant)
            saved = None
        if saved is not None and saved.release >= self.store.releases.get(ref.name):
            # (an older release of it on disk is not enough: going back needs the hub's
            # new release of this version, which is on the broker)
            self._with_manifest(saved)
            return
        self._report(None, ModelState.DOWNLOADING, None, ref=ref)
        self._sub(self.topics.manifest(ref.name, ref.version, ref.variant))

    # -- messages ------------------------------------------------------------------------
    def on_message(self, parsed: ParsedTopic, payload: bytes) -> None:
        target = self._target
        if target is None or (parsed.model_name, parsed.model_version, parsed.variant) != (
            target.name, target.version, target.variant
        ):
            return
        if parsed.kind == "manifest":
            self._unsub(self.topics.manifest(target.name, target.version, target.variant))
            if self._manifest is not None or self._step is not None:
                return
            if not payload:
                self._fail(f"model {_label(target)} was retired (manifest cleared)")
                return
            self._run_step(lambda: self._check_manifest(target, payload))
        elif parsed.kind == "chunk" and self._manifest is not None:
            assert parsed.chunk_index is not None
            self._on_chunk(self._manifest, parsed.chunk_index, payload)

    def _check_manifest(self, target: ModelRef, payload: bytes) -> None:
        """The manifest step: its signature (and release, names) checked, then kept on disk."""
        if self._target != target or self._manifest is not None:
            return  # desired moved on while the step waited for its turn
        try:
            manifest = self._dl.accept_manifest(payload, name=target.name,
                                                  version=target.version,
                                                  variant=target.variant)
        except StoreError as exc:
            self.refused += 1
            self._fail(str(exc))
            return
        self._checked = manifest
        self._with_manifest(manifest)

    def _with_manifest(self, manifest: Manifest) -> None:
        self._manifest = manifest
        if self._dl.has_model(manifest):
            self._stage(manifest)
            return
        self._report(manifest, ModelState.DOWNLOADING, None)
        missing = self._dl.missing_chunks(manifest)
        if not missing:
            self._stage(manifest)
            return
        self._missing = set(missing)
        self._download_started = self._clock()
        log.info("model %s v%d: downloading %d of %d chunk(s), %d bytes", manifest.name,
                 manifest.version, len(missing), manifest.chunks.count, manifest.size)
        for index in missing:
            self._sub(self._chunk_topic(manifest, index))

    def _on_chunk(self, manifest: Manifest, index: int, payload: bytes) -> None:
        topic = self._chunk_topic(manifest, index)
        if topic not in self._subscribed:
            return
        last = self._missing == {index}
        try:
            if last:  # staged from memory at once: no file to write, read back and delete
                self._dl.check_chunk(manifest, index, payload)
            else:  # kept on disk too, so that a restart resumes with the missing ones only
                self._dl.put_chunk(manifest, index, payload)
        except ChunkError as exc:
            self.refused += 1
            tries = self._attempts.get(index, 0) + 1
            self._attempts[index] = tries
            if tries > self.settings.chunk_retries:
                self._fail(f"{exc}; still wrong after {tries} fetches")
                return
            log.warning("discarding bad chunk (%s); fetching it again (%d/%d)", exc, tries,
                        self.settings.chunk_retries)
            self._unsub(topic)
            self._sub(topic)  # re-subscribing makes the broker send the retained chunk again
            return
        self._unsub(topic)
        if last:
            self._received[index] = payload
        self._missing.discard(index)
        self._deadline = self._clock() + self.settings.download_timeout_s
        if not self._missing:
            log.info("model %s v%d: download complete in %.1fs", manifest.name,
                     manifest.version, self._clock() - self._download_started)
            self._stage(manifest)

    def _chunk_topic(self, manifest: Manifest, index: int) -> str:
        # a variant asked for by name comes from its own topics, the published one from the
        # version's (whatever its quantization)
        variant = self._target.variant if self._target is not None else None
        return self.topics.chunk(manifest.name, manifest.version, index, variant)

    # -- verification, shadow, activation -------------------------------------------------
    def _load(self, name: str, version: int, store: ModelStore | None = None) -> LoadedModel:
        """A model read back from disk, checked again (signature, size, sha256)."""
        return self._build(*(store or self.store).read_verified(name, version))

    def _build(self, manifest: Manifest, data: bytes) -> LoadedModel:
        """Checked bytes into a fresh interpreter, with this device's calibrated threshold."""
        loaded = self.loader(manifest, data)
        calibration = self.store.load_calibration(manifest)
        if calibration is not None and "threshold" in calibration:
            loaded.threshold = float(calibration["threshold"])
            loaded.threshold_source = "calibrated"
        return loaded

    def _stage(self, manifest: Manifest) -> None:
        self._report(manifest, ModelState.VERIFYING, None)
        self._run_step(lambda: self._verify_and_stage(manifest))

    def _verify_and_stage(self, manifest: Manifest) -> None:
        """The staging step: the model's bytes joined and checked, loaded, put in shadow (or
        promoted when there is no shadow run)."""
        if self._manifest is not manifest:
            return  # desired moved on while the step waited for its turn
        store = self._dl
        try:
            if store.has_model(manifest):
                loaded = self._load(manifest.name, manifest.version, store)  # checked again
            elif self._checked is manifest:
                # its signature was checked as it arrived, in this process; its bytes are
                # checked against it now (size, sha256): nothing to read back from disk
                loaded = self._build(manifest, store.install(manifest, self._received))
            else:  # a manifest saved by an earlier run: its signature is checked on reading
                store.install(manifest, self._received)
                loaded = self._load(manifest.name, manifest.version, store)
        except Exception as exc:  # every refusal becomes `failed` with its reason
            self._fail(str(exc))
            return
        self._received = {}
        self._drop_subscriptions()
        if self.settings.shadow_windows > 0:
            self.detector.start_shadow(loaded)
            self.state = ModelState.SHADOW
            self._report(manifest, ModelState.SHADOW, None)
            return
        self._promote(loaded)

    @property
    def step_waiting(self) -> bool:
        """An update step waits for the budget (a later :meth:`tick` runs it)."""
        return self._step is not None

    def _run_step(self, step: Callable[[], None]) -> None:
        """Run ``step`` now if the budget allows, else keep it for a later tick."""
        if self.budget.take():
            step()
        else:
            self._step = step

    def tick(self) -> None:
        """A waiting update step, timeouts, the end of a shadow run, the end of calibration."""
        step = self._step
        if step is not None and self.budget.take():
            self._step = None
            # the time it waited for its turn is not the broker's: the download's timeout
            # counts again from here
            self._deadline = self._clock() + self.settings.download_timeout_s
            step()
        shadow = self.detector.shadow
        if self._step is not None:
            pass  # a step waiting for its turn is not a download that stalled: no timeout
        elif shadow is not None:
            report = self.detector.shadow_report
            if report.errors:
                self.detector.stop_shadow()
                self._fail(f"shadow run: {report.last_error}")
            elif report.windows >= self.settings.shadow_windows:
                self.detector.stop_shadow()
                bound = self.settings.max_shadow_anomaly_rate
                if report.excess_rate > bound:
                    self._fail(f"shadow run: {report.anomalies - report.shared} of "
                               f"{report.windows} windows flagged that the running model did "
                               f"not flag (rate {report.excess_rate:.3f}) exceeds the bound "
                               f"{bound:.3f}")
                else:
                    self._promote(shadow)
        elif self._target is not None and self._clock() > self._deadline:
            what = "chunks" if self._manifest is not None else "manifest"
            self._fail(f"no {what} received for {_label(self._target)} "
                       f"within {self.settings.download_timeout_s:.0f}s")
        cal = self.detector.calibration
        active = self.detector.active
        if cal is not None and cal.threshold is not None and active is not None:
            self.store.save_calibration(active.manifest, {
                "threshold": cal.threshold, "windows": len(cal.scores),
                "quantile": cal.quantile, "factor": cal.factor,
                "manifest_threshold": active.manifest.threshold,
            })
            self.detector.calibration = None
            self._report(active.manifest, ModelState.ACTIVE, None)

    def _promote(self, loaded: LoadedModel) -> None:
        if self._dl is not self.store:  # another variant of the running version
            try:
                self.store.take_switch(loaded.manifest)
            except (OSError, StoreError) as exc:
                self._fail(f"switching to variant {loaded.manifest.quantization.value} of "
                           f"{loaded.label}: {exc}")
                return
            self._end_switch()
        self.store.activate(loaded.manifest)
        self._target = None
        self._forget_download()
        self._activate(loaded, announce=True)
        self.store.prune()

    def _activate(self, loaded: LoadedModel, *, announce: bool) -> None:
        self.detector.activate(loaded)
        if self.settings.calibration_windows > 0 and loaded.threshold_source == "manifest":
            self.detector.start_calibration(self.settings.calibration_windows,
                                            self.settings.calibration_quantile,
                                            self.settings.calibration_factor)
        log.info("model %s active (threshold %.6g, %s)", loaded.label, loaded.threshold,
                 loaded.threshold_source)
        if announce:
            self._report(loaded.manifest, ModelState.ACTIVE, None)

    # -- run-time failure ------------------------------------------------------------------
    def on_runtime_failure(self, failed: LoadedModel, reason: str) -> None:
        """The active model failed on a window: go back to the previous version by ourselves."""
        previous = self.store.previous()
        error = f"{failed.label} failed at run time: {reason}"
        if previous is None or (previous.name, previous.version) == (
            failed.manifest.name, failed.manifest.version
        ):
            self.store.clear_current()
            self._fail_state(f"{error}; no previous model to roll back to",
                             failed.ref, manifest=failed.manifest)
            return
        try:
            loaded = self._load(previous.name, previous.version)
        except Exception as exc:
            self.store.clear_current()
            self._fail_state(f"{error}; previous {previous.label} unusable: {exc}", failed.ref,
                             manifest=failed.manifest)
            return
        self.store.rollback()
        self._activate(loaded, announce=False)
        self.last_error, self.last_error_at = error, time.time()
        self._report(failed.manifest, ModelState.ROLLED_BACK, error)

    # -- helpers ---------------------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        target, manifest = self._target, self._manifest
        self._drop_subscriptions()
        self.detector.stop_shadow()
        self._target = None
        self._forget_download()
        self._end_switch()
        self._fail_state(reason, target, manifest=manifest)

    def _fail_state(self, reason: str, ref: ModelRef | None, *,
                    manifest: Manifest | None = None) -> None:
        log.error("model update failed: %s", reason)
        self.last_error, self.last_error_at = reason, time.time()
        self._report(manifest, ModelState.FAILED, reason, ref=ref)

    def _abort(self, why: str) -> None:
        log.info("abandoning the update to %s: %s", self._target, why)
        self._drop_subscriptions()
        self.detector.stop_shadow()
        self._target = None
        self._forget_download()
        self._end_switch()

    def _end_switch(self) -> None:
        """Downloads go to the store again; a variant switch's leftovers are deleted."""
        if self._dl is not self.store:
            self._dl = self.store
            self.store.drop_switch()

    def _forget_download(self) -> None:
        self._manifest = None
        self._checked = None
        self._received = {}
        self._missing = set()
        self._step = None

    def _report(self, manifest: Manifest | None, state: ModelState, error: str | None, *,
                ref: ModelRef | None = None) -> None:
        self.state = state
        active = self.detector.active
        report = ModelReport(
            model=_reported(manifest, ref),
            state=state,
            error=error[:2000] if error else None,
            active=_reported(active.manifest) if active else None,
            threshold=active.threshold if active else None,
            since=time.time(),
        )
        last = self.last_report
        if last is not None and report == dataclasses.replace(last, since=report.since):
            return  # nothing changed (e.g. the retained desired again after a reconnect)
        self.last_report = report
        self._on_report(report)

    def _sub(self, topic: str) -> None:
        self._subscribed.add(topic)
        self.link.subscribe(topic, 1)

    def _unsub(self, topic: str) -> None:
        if topic in self._subscribed:
            self._subscribed.discard(topic)
            self.link.unsubscribe(topic)

    def _drop_subscriptions(self) -> None:
        for topic in list(self._subscribed):
            self._unsub(topic)

    def pointer(self) -> ModelPointer | None:
        return self.store.current()
