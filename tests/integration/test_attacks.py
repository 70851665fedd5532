"""The attack scenario, small: every attack of issue 10 is refused while the honest devices
stream, and none of their readings is lost."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from simulator.attacks import AttackScenario, run_attacks

pytestmark = [pytest.mark.integration, pytest.mark.hub]

# Refused by the agent's anti-rollback (release counter), which the `releases` work brings; until
# it is on main these two are reported as not refused, and this test says so instead of passing.
NEEDS_ANTI_ROLLBACK = {"downgrade to an older signed version", "replayed older signed model"}
EXPECTED = {
    "impersonating another device", "a device writing desired", "a device writing models/#",
    "a device writing hub status (forged hub session)", "client-id takeover of the hub",
    "client-id takeover of a device", "oversized payload (over the hub's message limit)",
    "malformed payload", "oversized payload (over the broker's packet limit)",
    "unenrolled device (no credential)", "unenrolled device (credential made outside the hub)",
    "unsigned model", "model signed by an unknown key", *NEEDS_ANTI_ROLLBACK,
    "a revoked device that reconnects",
}


def test_every_attack_is_refused_and_no_honest_reading_is_lost(tmp_path: Path) -> None:
    scenario = AttackScenario(kind="attacks", name="attacks-small", devices=2, rate_hz=10.0,
                              history_s=10.0, settle_s=2.0,
                              training={"window": 8, "hidden": 16, "latent": 4, "epochs": 2,
                                        "quantization": "float32"})
    report = run_attacks(scenario, Console(file=io.StringIO()), out_dir=tmp_path / "report")
    assert json.loads((tmp_path / "report" / "report.json").read_text()) == report
    assert report["transport"] == "tls" and report["auth"] == "dynsec-per-device"
    attacks = {a["name"]: a for a in report["attacks"]}
    assert set(attacks) == EXPECTED
    for name, attack in attacks.items():
        if name not in NEEDS_ANTI_ROLLBACK:
            assert attack["refused"], attack
            assert attack["refused_by"] in ("broker", "hub", "agent"), attack
    assert report["readings_lost"] == 0, report["readings_lost_by_device"]
    assert report["revoke_seconds"] is not None  # the refusal was seen (its time: the report)
    pending = [attacks[n] for n in sorted(NEEDS_ANTI_ROLLBACK) if not attacks[n]["refused"]]
    if pending:
        pytest.xfail(f"not refused until the agent's anti-rollback is on main: {pending}")
