"""The rollout policy's decisions and the controller's pace, on their own (no broker, no
database)."""

from __future__ import annotations

from cloud_hub.rollouts.controller import MAX_REST_S, REST_FACTOR, rest_after
from cloud_hub.rollouts.planning import plan_stages
from cloud_hub.rollouts.policy import DeviceObservation, RolloutPolicy, judge_stage

POLICY = RolloutPolicy(min_observation_s=60.0, max_failure_ratio=0.25,
                       max_anomaly_rate_increase=2.0, stage_timeout_s=300.0)


def obs(device: str, *, confirmed: float | None = 0.0, failed: str | None = None,
        baseline: float = 0.0, anomalies: int = 0) -> DeviceObservation:
    return DeviceObservation(device_id=device, confirmed_at=confirmed, failed=failed,
                             baseline_rate=baseline, anomalies_since_confirmed=anomalies)


def test_stage_waits_until_every_device_confirmed_and_observed() -> None:
    pending = [obs("a"), obs("b", confirmed=None)]
    assert judge_stage(pending, now=100, stage_started_at=0, is_canary=False, policy=POLICY).state \
        == "wait"
    done = [obs("a", confirmed=50), obs("b", confirmed=50)]
    assert judge_stage(done, now=100, stage_started_at=0, is_canary=False, policy=POLICY).state \
        == "wait"
    assert judge_stage(done, now=111, stage_started_at=0, is_canary=False, policy=POLICY).state \
        == "pass"


def test_failure_ratio_breach_names_the_devices() -> None:
    observations = [obs("a", confirmed=None, failed="failed: bad signature"), obs("b"),
                    obs("c", confirmed=None)]
    verdict = judge_stage(observations, now=10, stage_started_at=0, is_canary=False, policy=POLICY)
    assert verdict.state == "breach"
    assert "1/3" in verdict.reason and "a: failed: bad signature" in verdict.reason


def test_devices_silent_past_the_stage_timeout_count_as_failures() -> None:
    observations = [obs("a"), obs("b"), obs("c"), obs("d", confirmed=None)]
    assert judge_stage(observations, now=299, stage_started_at=0, is_canary=False,
                       policy=POLICY).state == "wait"
    verdict = judge_stage(observations, now=301, stage_started_at=0, is_canary=False,
                          policy=POLICY.model_copy(update={"max_failure_ratio": 0.0}))
    assert verdict.state == "breach" and "no report within the stage timeout" in verdict.reason


def test_canary_anomaly_rate_is_judged_against_its_own_previous_rate() -> None:
    # 10 events in the first 30 s: at least 10/min over the full 60 s window, +8 over baseline 2.
    noisy = [obs("a", confirmed=0.0, baseline=2.0, anomalies=10)]
    verdict = judge_stage(noisy, now=30, stage_started_at=0, is_canary=True, policy=POLICY)
    assert verdict.state == "breach" and "anomaly rate" in verdict.reason
    # Already noisy before: 10 events/min now against 9/min before is within the limit.
    used_to_it = [obs("a", confirmed=0.0, baseline=9.0, anomalies=10)]
    assert judge_stage(used_to_it, now=60, stage_started_at=0, is_canary=True,
                       policy=POLICY).state == "pass"
    # Waves are not judged on anomalies, only the canary.
    assert judge_stage(noisy, now=61, stage_started_at=0, is_canary=False,
                       policy=POLICY).state == "pass"


def test_a_few_early_events_do_not_breach_before_the_observation_time() -> None:
    early = [obs("a", confirmed=0.0, anomalies=1)]  # 1 event in 5 s looks like 12/min
    assert judge_stage(early, now=5, stage_started_at=0, is_canary=True, policy=POLICY).state \
        == "wait"


def test_stages_are_a_canary_then_waves_covering_every_device_once() -> None:
    devices = [f"d{i}" for i in range(11)]
    stages = plan_stages(devices, canary_size=2, canary_percent=None, wave_size=4)
    assert [len(s) for s in stages] == [2, 4, 4, 1]
    assert sorted(d for s in stages for d in s) == sorted(devices)
    assert plan_stages(devices, canary_size=1, canary_percent=50, wave_size=100)[0] == \
        stages[0] + plan_stages(devices, canary_size=6, canary_percent=None, wave_size=9)[0][2:]


def test_controller_rests_in_proportion_to_its_last_tick_and_no_longer_than_the_cap() -> None:
    assert rest_after(0.0) == 0.0  # nothing running: the next wake is acted on at once
    assert rest_after(-0.001) == 0.0  # a clock step never makes a negative wait
    assert rest_after(0.02) == 0.02 * REST_FACTOR
    busy = 0.02 / (0.02 + rest_after(0.02))
    assert busy <= 1 / (1 + REST_FACTOR)  # the controller's share of a core stays bounded
    assert rest_after(10.0) == MAX_REST_S  # a slow tick never leaves a rollout unwatched long
