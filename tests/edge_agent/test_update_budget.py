"""Model-update steps under a budget: the core driven by hand, several devices sharing one.

A loop that drives hundreds of devices (the simulator's fleet) hands their cores one budget of
update steps per round, so a rollout reaching them all at once does not run hundreds of
signature checks and interpreter builds in one round. Here three devices share a budget of one
step per round, with a real model store (the signature checked in-process), real TFLite models
and no thread: each round refills the budget and ticks every device, as a shard does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edge_agent.detect.records import LoadedModel
from edge_agent.models.updater import ModelLoader
from shared.codec import split
from shared.manifest import Manifest
from shared.messages import Desired, ModelRef, encode
from shared.signing import SigningKey, verify_manifest
from tests.edge_agent.conftest import DEVICE, INT8, Device
from tests.edge_agent.support import TOPICS, make_manifest


class PerRound:
    """``per_round`` steps, refilled by the test at each round; what ran in which round."""

    def __init__(self, per_round: int) -> None:
        self.per_round = per_round
        self.remaining = per_round
        self.round = 0

    def refill(self) -> None:
        self.round += 1
        self.remaining = self.per_round

    def take(self) -> bool:
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


class Fleet:
    """Devices sharing one budget; each counts its own signature checks and model builds."""

    def __init__(self, root: Path, key: SigningKey, budget: PerRound, n: int) -> None:
        self.budget = budget
        self.devices: list[Device] = []
        self.checks: list[list[int]] = []  # per device: the round of each signature check
        self.builds: list[list[int]] = []  # per device: the round of each interpreter build
        for i in range(n):
            checks: list[int] = []
            builds: list[int] = []

            def verify(manifest: Manifest, keys: Mapping[str, bytes],
                       checks: list[int] = checks) -> None:
                checks.append(budget.round)
                verify_manifest(manifest, keys)

            dev = Device(root / f"device-{i}", key, update_budget=budget, verify=verify)
            dev.core.updater.loader = self._counted(dev.core.updater.loader, builds)
            self.devices.append(dev)
            self.checks.append(checks)
            self.builds.append(builds)

    def _counted(self, build: ModelLoader, builds: list[int]) -> ModelLoader:
        def counted(manifest: Manifest, data: bytes) -> LoadedModel:
            builds.append(self.budget.round)
            return build(manifest, data)
        return counted

    def desire(self, manifest: Manifest) -> None:
        ref = ModelRef(name=manifest.name, version=manifest.version)
        for dev in self.devices:
            dev.deliver(TOPICS.desired(DEVICE), encode(Desired(
                device_id=DEVICE, model=ref, issued_at=dev.clock.time())))

    def broker_round(self, manifest: Manifest, data: bytes) -> None:
        """What the broker sends each device for the subscriptions it holds now: the retained
        manifest and chunks (each once)."""
        topic = TOPICS.manifest(manifest.name, manifest.version)
        for dev in self.devices:
            if topic in dev.wire.subscriptions:
                dev.deliver(topic, manifest.to_bytes())
            for i, chunk in enumerate(split(data, manifest.chunk_size)):
                chunk_topic = TOPICS.chunk(manifest.name, manifest.version, i)
                if chunk_topic in dev.wire.subscriptions:
                    dev.deliver(chunk_topic, chunk)

    def tick_all(self) -> None:
        for dev in self.devices:
            dev.core.tick()

    def states(self) -> list[str | None]:
        return [dev.core.status().model_state for dev in self.devices]


def test_update_steps_wait_for_the_round_budget_and_every_device_checks_its_own(
    tmp_path: Path, key: SigningKey
) -> None:
    budget = PerRound(1)
    fleet = Fleet(tmp_path, key, budget, 3)
    manifest = make_manifest(key, INT8, threshold=0.2)

    budget.refill()
    fleet.desire(manifest)
    fleet.broker_round(manifest, INT8)  # every device receives its manifest in this round
    assert [len(c) for c in fleet.checks] == [1, 0, 0], "one signature check in the round"
    assert [len(b) for b in fleet.builds] == [0, 0, 0]
    # the first has its chunks and waits to stage them; the others wait to check their manifest
    assert [dev.core.updater.step_waiting for dev in fleet.devices] == [True, True, True]
    assert fleet.states() == ["verifying", "downloading", "downloading"]

    for _ in range(20):
        if all(dev.core.status().active_model for dev in fleet.devices):
            break
        budget.refill()
        fleet.tick_all()
        fleet.broker_round(manifest, INT8)
    assert fleet.states() == ["active"] * 3
    assert [dev.core.status().active_model for dev in fleet.devices] == [
        {"name": "pump-ae", "version": 1, "sha256": manifest.sha256, "variant": "int8"}] * 3
    # each device checked its own manifest's signature once, and built its own interpreter
    assert [len(c) for c in fleet.checks] == [1, 1, 1]
    assert [len(b) for b in fleet.builds] == [1, 1, 1]
    rounds = [r for per_device in fleet.checks + fleet.builds for r in per_device]
    assert all(rounds.count(r) == 1 for r in rounds), f"at most one step a round: {rounds}"
    # the model was written once, from memory: no chunk files left behind
    for i in range(3):
        version_dir = tmp_path / f"device-{i}" / "models" / "pump-ae" / "1"
        assert (version_dir / "model.tflite").read_bytes() == INT8
        assert not (version_dir / "chunks").exists()


def test_a_step_waiting_for_its_turn_is_not_a_stalled_download(
    tmp_path: Path, key: SigningKey
) -> None:
    budget = PerRound(0)  # nothing may run until the budget comes back
    fleet = Fleet(tmp_path, key, budget, 1)
    dev = fleet.devices[0]
    manifest = make_manifest(key, INT8, threshold=0.2)
    fleet.desire(manifest)
    fleet.broker_round(manifest, INT8)
    assert dev.core.updater.step_waiting
    dev.clock.advance(dev.core.config.model.download_timeout_s * 3)
    fleet.tick_all()
    assert dev.core.status().model_state == "downloading"
    assert dev.core.status().last_error is None

    budget.per_round = 1
    for _ in range(5):
        budget.refill()
        fleet.tick_all()
        fleet.broker_round(manifest, INT8)
    assert dev.core.status().model_state == "active"


def test_a_waiting_step_is_dropped_when_desired_moves_on(tmp_path: Path, key: SigningKey) -> None:
    budget = PerRound(0)
    fleet = Fleet(tmp_path, key, budget, 1)
    dev = fleet.devices[0]
    v1 = make_manifest(key, INT8, version=1, threshold=0.2)
    v2 = make_manifest(key, INT8, version=2, threshold=0.2)
    fleet.desire(v1)
    fleet.broker_round(v1, INT8)
    assert dev.core.updater.step_waiting
    fleet.desire(v2)
    assert not dev.core.updater.step_waiting, "v1's check is not run for a device that wants v2"

    budget.per_round = 1
    for _ in range(5):
        budget.refill()
        fleet.tick_all()
        fleet.broker_round(v2, INT8)
    assert dev.core.status().active_model == {"name": "pump-ae", "version": 2,
                                              "sha256": v2.sha256, "variant": "int8"}
    assert fleet.checks[0] == [fleet.checks[0][0]], "v2's signature alone was checked"
