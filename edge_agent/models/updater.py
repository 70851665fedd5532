"""Follows ``desired``: download → verify → load → shadow → activate, reporting each real state.

Runs in the agent's worker thread (the same thread that scores windows), so activation lands
between two windows. On any failure the active model keeps running and ``reported`` says why.
The download itself (manifest and chunk topics, chunks checked and fetched again) is a
:class:`~edge_agent.models.download.ModelDownload`; a manifest whose signature was checked as
it arrived is not checked again before its bytes are loaded (a model read back from disk is).
The two costly steps, checking a manifest and staging a model, run when a :class:`StepBudget`
lets them (the daemon's always does).

A desired naming another variant of the version that runs (the hub picked again once it knew
the device's runtime) is fetched into the store's switch area beside the running one, checked,
shadowed against it like any update, and only then takes its place (:meth:`ModelStore.
take_switch`). A desired naming no variant is met by whichever variant of the version runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from edge_agent.config import ModelSettings
from edge_agent.detect.detector import Detector
from edge_agent.detect.records import LoadedModel
from edge_agent.models.download import ChunkOutcome, DownloadFailed, ModelDownload, Subscriber
from edge_agent.models.report import ModelReport, ModelReporter
from edge_agent.models.store import ModelPointer, ModelStore, StoreError
from shared.manifest import Manifest, Quantization
from shared.messages import ModelRef, ModelState
from shared.topics import ParsedTopic, Topics

__all__ = ["UNLIMITED", "ModelLoader", "ModelUpdater", "StepBudget", "Unlimited"]

log = logging.getLogger(__name__)


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
        self._clock = clock
        self._reporter = ModelReporter(detector, on_report)
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # wall clock
        self.refused = 0  # manifests and chunks refused (bad, forged, or not what was asked)
        self._download: ModelDownload | None = None  # of the model desired, until it runs or fails
        self._deadline = 0.0
        self._settled: dict[tuple[str, int], float] = {}  # target -> issued_at it was decided at
        self._step: Callable[[], None] | None = None  # a step the budget has not let run yet

    @property
    def state(self) -> ModelState | None:
        """The state last reported (None before the first report)."""
        return self._reporter.state

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
                if self._download is not None:
                    self._abort("desired changed back to the active model")
                self._reporter.report(active.manifest, ModelState.ACTIVE, None)
                return
            switching = True  # another variant of the running version
        if self._download is not None and self._download.ref == ref:
            return
        if self._settled.get(key) == issued_at:
            return  # this very request was already decided; a new desired (issued_at) retries
        if self._download is not None:
            self._abort(f"desired changed to {_label(ref)}")
        self._settled[key] = issued_at
        if ref.variant is not None and ref.variant not in _VARIANTS:
            self._fail_state(f"desired names variant {ref.variant!r} of {ref.name} "
                             f"v{ref.version}, which does not exist: a variant is one of "
                             f"{', '.join(q.value for q in Quantization)}", ref)
            return
        if switching:
            log.info("switching %s v%d from variant %s to %s", ref.name, ref.version,
                     active.manifest.quantization.value if active else "?", ref.variant)
        try:
            store = self.store.switch_store() if switching else self.store
        except OSError as exc:  # no room for the switch area: the running variant stays
            self._fail_state(f"cannot make a place for variant {ref.variant} of {ref.name} "
                             f"v{ref.version} beside the running one: {exc}", ref)
            return
        download = self._download = ModelDownload(
            ref, store=store, topics=self.topics, link=self.link,
            chunk_retries=self.settings.chunk_retries, clock=self._clock)
        self._deadline = self._clock() + self.settings.download_timeout_s
        saved = download.saved_manifest()
        if saved is not None:
            self._with_manifest(download, saved)
            return
        self._reporter.report(None, ModelState.DOWNLOADING, None, ref=ref)
        download.ask_manifest()

    # -- messages ------------------------------------------------------------------------
    def on_message(self, parsed: ParsedTopic, payload: bytes) -> None:
        download = self._download
        if download is None or (parsed.model_name, parsed.model_version, parsed.variant) != (
            download.ref.name, download.ref.version, download.ref.variant
        ):
            return
        target = download.ref
        if parsed.kind == "manifest":
            download.manifest_arrived()
            if download.manifest is not None or self._step is not None:
                return
            if not payload:
                self._fail(f"model {_label(target)} was retired (manifest cleared)")
                return
            self._run_step(lambda: self._check_manifest(target, payload))
        elif parsed.kind == "chunk" and download.manifest is not None:
            assert parsed.chunk_index is not None
            self._on_chunk(download, parsed.chunk_index, payload)

    def _check_manifest(self, target: ModelRef, payload: bytes) -> None:
        """The manifest step: its signature (and release, names) checked, then kept on disk."""
        download = self._download
        if download is None or download.ref != target or download.manifest is not None:
            return  # desired moved on while the step waited for its turn
        try:
            manifest = download.accept_manifest(payload)
        except StoreError as exc:
            self.refused += 1
            self._fail(str(exc))
            return
        self._with_manifest(download, manifest)

    def _with_manifest(self, download: ModelDownload, manifest: Manifest) -> None:
        download.manifest = manifest
        if download.store.has_model(manifest):
            self._stage(manifest)
            return
        self._reporter.report(manifest, ModelState.DOWNLOADING, None)
        if not download.fetch_chunks():
            self._stage(manifest)

    def _on_chunk(self, download: ModelDownload, index: int, payload: bytes) -> None:
        try:
            outcome = download.on_chunk(index, payload)
        except DownloadFailed as exc:
            self.refused += 1
            self._fail(str(exc))
            return
        if outcome is ChunkOutcome.REFUSED:
            self.refused += 1
        elif outcome is not ChunkOutcome.IGNORED:
            self._deadline = self._clock() + self.settings.download_timeout_s
            if outcome is ChunkOutcome.COMPLETE:
                assert download.manifest is not None
                self._stage(download.manifest)

    # -- verification, shadow, activation -------------------------------------------------
    def _load(self, name: str, version: int) -> LoadedModel:
        """A model read back from disk, checked again (signature, size, sha256)."""
        return self._build(*self.store.read_verified(name, version))

    def _build(self, manifest: Manifest, data: bytes) -> LoadedModel:
        """Checked bytes into a fresh interpreter, with this device's calibrated threshold."""
        loaded = self.loader(manifest, data)
        calibration = self.store.load_calibration(manifest)
        if calibration is not None and "threshold" in calibration:
            loaded.threshold = float(calibration["threshold"])
            loaded.threshold_source = "calibrated"
        return loaded

    def _stage(self, manifest: Manifest) -> None:
        self._reporter.report(manifest, ModelState.VERIFYING, None)
        self._run_step(lambda: self._verify_and_stage(manifest))

    def _verify_and_stage(self, manifest: Manifest) -> None:
        """The staging step: the model's bytes joined and checked, loaded, put in shadow (or
        promoted when there is no shadow run)."""
        download = self._download
        if download is None or download.manifest is not manifest:
            return  # desired moved on while the step waited for its turn
        try:
            loaded = self._build(*download.assemble(manifest))
        except Exception as exc:  # every refusal becomes `failed` with its reason
            self._fail(str(exc))
            return
        download.close()
        if self.settings.shadow_windows > 0:
            self.detector.start_shadow(loaded)
            self._reporter.report(manifest, ModelState.SHADOW, None)
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
        elif self._download is not None and self._clock() > self._deadline:
            what = "chunks" if self._download.manifest is not None else "manifest"
            self._fail(f"no {what} received for {_label(self._download.ref)} "
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
            self._reporter.report(active.manifest, ModelState.ACTIVE, None)

    def _promote(self, loaded: LoadedModel) -> None:
        download = self._download
        if download is not None and download.store is not self.store:  # another variant
            try:
                self.store.take_switch(loaded.manifest)
            except (OSError, StoreError) as exc:
                self._fail(f"switching to variant {loaded.manifest.quantization.value} of "
                           f"{loaded.label}: {exc}")
                return
            self.store.drop_switch()
        self.store.activate(loaded.manifest)
        self._download = None
        self._step = None
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
            self._reporter.report(loaded.manifest, ModelState.ACTIVE, None)

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
        self._reporter.report(failed.manifest, ModelState.ROLLED_BACK, error)

    # -- helpers ---------------------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        download = self._download
        self._end_update()
        self._fail_state(reason, download.ref if download else None,
                         manifest=download.manifest if download else None)

    def _fail_state(self, reason: str, ref: ModelRef | None, *,
                    manifest: Manifest | None = None) -> None:
        log.error("model update failed: %s", reason)
        self.last_error, self.last_error_at = reason, time.time()
        self._reporter.report(manifest, ModelState.FAILED, reason, ref=ref)

    def _abort(self, why: str) -> None:
        log.info("abandoning the update to %s: %s",
                 self._download.ref if self._download else None, why)
        self._end_update()

    def _end_update(self) -> None:
        """The update in progress ends: its subscriptions, shadow run and switch area go."""
        download, self._download, self._step = self._download, None, None
        if download is not None:
            download.close()
        self.detector.stop_shadow()
        if download is not None and download.store is not self.store:
            self.store.drop_switch()  # what another variant's download left under it

    def pointer(self) -> ModelPointer | None:
        return self.store.current()
