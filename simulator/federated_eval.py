"""Federated PCA against central PCA on the same data: ``python -m simulator.federated_eval``.

Four simulated pumps record 20 minutes of normal operation each. Central training gets their
readings (the hub's pipeline, as ``cloud-hub train`` runs it); federated training gets only what
the agents would send with ``telemetry.upload = "summaries"``: each device's count, mean and
scatter of its normal windows and its channels' moments, folded on the device by the agent's own
code (:class:`edge_agent.drift.federated.WindowScatter`) over the same rows central training
fits on. Both models are int8 TFLite from the hub's converter, behind the parity gate.

Then both score 10 further minutes of each device with faults injected (every kind, ground
truth from the simulator) through the agent's scoring path, and the report compares:

- the subspaces: principal angles between the two PCA bases, explained variance of each;
- the decisions: agreement of the two models' window decisions, and detection quality of each
  (faults caught, false-alarm windows, window-level precision/recall/F1);
- optionally (``--dp``) the same with Gaussian noise added to each device's statistics
  (clipped windows, the Gaussian mechanism: epsilon and delta stated), and its cost in F1.

Writes ``reports/federated/report.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.drift.federated import FederatedSettings, WindowScatter
from shared.scatter import pack_upper
from simulator.faults import DEFAULT_DURATION_S, Fault, FaultKind
from simulator.signals import SignalGenerator

__all__ = ["evaluate_federated", "main"]

SPEC: dict[str, Any] = {
    "family": "pca", "window": 10, "latent": 16, "smoothing": 10, "threshold_quantile": 0.999,
    "threshold_factor": 1.5, "quantization": "auto", "max_train_windows": 100_000,
    "compare_modes": False,
}
RATE = 10.0
FAULT_KINDS = ("spike", "step", "multi", "noise", "drift", "stuck", "frequency")


def _device_data(seed: int, train_s: float, test_s: float
                 ) -> tuple[list[str], npt.NDArray[np.float64], npt.NDArray[np.float64],
                            npt.NDArray[np.float64], list[Fault]]:
    gen = SignalGenerator("pump", seed=seed, rate_hz=RATE, start_ts=0.0)
    train = gen.generate(int(train_s * RATE)).values
    faults = []
    t0 = train_s
    slot = test_s / len(FAULT_KINDS)
    for i, kind in enumerate(FAULT_KINDS):
        fk = FaultKind(kind)
        faults.append(Fault(kind=fk, start=t0 + i * slot + slot / 3,
                            duration=DEFAULT_DURATION_S[fk], seed=seed * 100 + i))
    block = gen.generate(int(test_s * RATE), faults)
    return gen.channels, train, block.ts, block.values, faults


def _stats(train: npt.NDArray[np.float64], window: int, channels: list[str],
           dp: tuple[float, float, float] | None, rng: np.random.Generator) -> dict[str, Any]:
    """What one device would send: its WindowScatter over ``train`` (optionally noised)."""
    scatter = WindowScatter(FederatedSettings(window=window, min_windows=10), len(channels))
    for i, row in enumerate(train):
        scatter.add(float(i) / RATE, row.tolist())
    n, mean, s, readings = scatter.take()
    if dp is not None:
        mean, s = _noised(train, window, n, mean, s, dp, rng)
    return {"window": window, "stride": 1, "channels": channels, "windows": n,
            "mean": mean.tolist(), "scatter": pack_upper(s), "reading_count": readings.n,
            "reading_mean": readings.mean.tolist(),
            "reading_m2": np.maximum(readings.m2, 0.0).tolist()}


def _noised(train: npt.NDArray[np.float64], window: int, n: int, mean: Any, s: Any,
            dp: tuple[float, float, float], rng: np.random.Generator) -> tuple[Any, Any]:
    """The Gaussian mechanism on the window sum and the sum of outer products, each window
    clipped to L2 norm ``bound`` around the device's own per-channel mean (in spreads): one
    window changes the sum by at most ``bound`` and the outer products by at most ``bound²``.
    sigma = sensitivity × sqrt(2 ln(1.25/delta)) / epsilon, for each of the two releases
    (epsilon split in half between them)."""
    epsilon, delta, bound = dp
    center = train.mean(axis=0)
    scale = np.maximum(train.std(axis=0), 1e-9)
    z = (np.lib.stride_tricks.sliding_window_view((train - center) / scale, window, axis=0)
         .transpose(0, 2, 1).reshape(-1, window * train.shape[1]))
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    z = z * np.minimum(1.0, bound / np.maximum(norms, 1e-12))
    factor = math.sqrt(2 * math.log(1.25 / delta)) / (epsilon / 2)
    total = z.sum(axis=0) + rng.normal(0, bound * factor, z.shape[1])
    outer = z.T @ z
    noise = rng.normal(0, bound**2 * factor, outer.shape)
    outer = outer + np.triu(noise) + np.triu(noise, 1).T
    m = total / len(z)
    scat = outer - len(z) * np.outer(m, m)
    tiled_scale = np.tile(scale, window)
    tiled_center = np.tile(center, window)
    return m * tiled_scale + tiled_center, scat * np.outer(tiled_scale, tiled_scale)


def _angles(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> list[float]:
    """Principal angles (degrees) between the column spaces of two orthonormal bases."""
    cosines = np.clip(np.linalg.svd(a.T @ b, compute_uv=False), -1.0, 1.0)
    return [float(np.degrees(np.arccos(c))) for c in cosines]


def _scores(artifact: Any, channels: list[str], ts: Any, values: Any) -> tuple[Any, Any, float]:
    from cloud_hub.registry.records import build_manifest
    from shared.manifest import manifest_from_dict
    from simulator.replay import replay_scores

    body = build_manifest(artifact, name="eval", version=1, chunk_size=65536, created_at=0.0)
    manifest = manifest_from_dict({**body, "release": 1, "key_id": "0" * 16})
    trace = replay_scores(artifact.tflite, manifest, channels, ts, values)
    return trace.ts, trace.scores, trace.threshold


def _quality(decisions: Any, window_ts: Any, faults: list[Fault], window_s: float,
             tail_s: float) -> dict[str, float]:
    """Window-level precision / recall / F1 (a window is faulty when it holds a faulty reading,
    or ends within ``tail_s`` after a fault: smoothing still holds it), and faults caught."""
    label = np.zeros(len(window_ts), dtype=bool)
    caught = 0
    for f in faults:
        inside = (window_ts >= f.start) & (window_ts - window_s < f.end + tail_s)
        label |= inside
        caught += int(bool(decisions[inside].any()))
    tp = int((decisions & label).sum())
    fp = int((decisions & ~label).sum())
    fn = int((~decisions & label).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "faults": len(faults), "faults_caught": caught,
            "false_alarm_windows": fp, "normal_windows": int((~label).sum())}


def evaluate_federated(*, devices: int = 4, train_s: float = 1200.0, test_s: float = 600.0,
                       dp: list[float] | None = None, seed: int = 3) -> dict[str, Any]:
    from cloud_hub.jobs.training import spec_from_dict
    from cloud_hub.training.dataset import prepare_dataset
    from cloud_hub.training.errors import TrainingError
    from cloud_hub.training.federated import (
        merge_stats,
        pca_from_stats,
        run_federated_training,
    )
    from cloud_hub.training.pipeline import run_training

    spec = spec_from_dict(SPEC)
    data = [_device_data(seed * 10 + i, train_s, test_s) for i in range(devices)]
    channels = data[0][0]
    cut = [int(round(len(d[1]) * (1 - spec.validation_fraction))) for d in data]
    started = time.perf_counter()
    central = run_training(np.concatenate([d[1] for d in data]), channels, spec,
                           segments=[len(d[1]) for d in data])
    central_s = time.perf_counter() - started
    prepared = prepare_dataset(np.concatenate([d[1] for d in data]), channels, spec,
                               segments=[len(d[1]) for d in data])
    x = prepared.train.reshape(len(prepared.train), -1).astype(np.float64)
    _, singular, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    k = spec.latent
    central_basis = vt[:k].T
    central_explained = float((singular[:k] ** 2).sum() / (singular**2).sum())

    def federated(noise: tuple[float, float, float] | None) -> tuple[Any, dict[str, Any]]:
        rng = np.random.default_rng(seed)
        parts = [_stats(d[1][:c], spec.window, channels, noise, rng)
                 for d, c in zip(data, cut, strict=True)]
        stats = merge_stats(parts)
        t0 = time.perf_counter()
        artifact = run_federated_training(stats, spec)
        mean, basis, values = pca_from_stats(stats, k)
        info = {
            "train_seconds": round(time.perf_counter() - t0, 2), "windows": stats.windows,
            "bytes_sent_per_device": int(np.mean([len(json.dumps(p)) for p in parts])),
            "principal_angles_deg": [round(a, 3) for a in _angles(central_basis, basis)],
            "explained_variance": round(float(values[:k].sum() / values.sum()), 5),
            "threshold": artifact.threshold, "parity": artifact.parity.decision_agreement,
            "normalization_max_rel_diff": float(np.max(np.abs(
                (np.asarray(artifact.normalization.scale) - np.asarray(central.normalization.scale))
                / np.asarray(central.normalization.scale)))),
        }
        return artifact, info

    fed, fed_info = federated(None)
    results: dict[str, Any] = {"central": {}, "federated": {}}
    agreement_num = agreement_den = 0
    per_model: dict[str, list[tuple[Any, Any, list[Fault]]]] = {"central": [], "federated": []}
    for d in data:
        ch, _, ts, values, faults = d
        ct, cs, cthr = _scores(central, ch, ts, values)
        _, fs, fthr = _scores(fed, ch, ts, values)
        cdec, fdec = cs > cthr, fs > fthr
        agreement_num += int((cdec == fdec).sum())
        agreement_den += len(cdec)
        per_model["central"].append((cdec, ct, faults))
        per_model["federated"].append((fdec, ct, faults))
    window_s = spec.window / RATE
    tail_s = spec.smoothing / RATE
    for name, parts in per_model.items():
        q = [_quality(dec, wts, faults, window_s, tail_s) for dec, wts, faults in parts]
        results[name] = _pool(q)
    report: dict[str, Any] = {
        "what": "federated PCA (statistics only) against central PCA (readings) on the same "
                f"{devices} simulated pumps: {train_s:g} s of normal readings each to train "
                f"on, {test_s:g} s each with {len(FAULT_KINDS)} faults to test on",
        "spec": SPEC,
        "central": {**results["central"], "threshold": central.threshold,
                    "parity": central.parity.decision_agreement,
                    "explained_variance": round(central_explained, 5),
                    "train_seconds": round(central_s, 2)},
        "federated": {**results["federated"], **fed_info},
        "decision_agreement": round(agreement_num / agreement_den, 5),
        "max_principal_angle_deg": max(fed_info["principal_angles_deg"]),
        "f1_difference": round(results["federated"]["f1"] - results["central"]["f1"], 4),
    }
    if dp:
        report["differential_privacy"] = []
        for epsilon in dp:
            try:
                noisy, info = federated((epsilon, 1e-5, 3.0))
            except TrainingError as exc:
                report["differential_privacy"].append({"epsilon": epsilon, "delta": 1e-5,
                                                       "failed": str(exc)})
                continue
            q = []
            for d in data:
                ch, _, ts, values, faults = d
                wts, s, thr = _scores(noisy, ch, ts, values)
                q.append(_quality(s > thr, wts, faults, window_s, tail_s))
            pooled = _pool(q)
            report["differential_privacy"].append({
                "epsilon": epsilon, "delta": 1e-5, "clip_l2_spreads": 3.0,
                "mechanism": "Gaussian on each device's clipped window sum and sum of outer "
                             "products (epsilon split evenly), per device's whole release",
                **pooled, "f1_cost": round(results["federated"]["f1"] - pooled["f1"], 4),
                "max_principal_angle_deg": max(info["principal_angles_deg"]),
            })
    return report


def _pool(parts: list[dict[str, float]]) -> dict[str, Any]:
    keys = ("faults", "faults_caught", "false_alarm_windows", "normal_windows")
    pooled: dict[str, Any] = {k: int(sum(p[k] for p in parts)) for k in keys}
    pooled["f1"] = round(float(np.mean([p["f1"] for p in parts])), 4)
    pooled["precision"] = round(float(np.mean([p["precision"] for p in parts])), 4)
    pooled["recall"] = round(float(np.mean([p["recall"] for p in parts])), 4)
    pooled["false_alarm_rate"] = round(pooled["false_alarm_windows"]
                                       / max(pooled["normal_windows"], 1), 5)
    return pooled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--train-s", type=float, default=1200.0)
    parser.add_argument("--test-s", type=float, default=600.0)
    parser.add_argument("--dp", type=float, nargs="*", default=[1.0, 10.0],
                        help="epsilons to try with differential-privacy noise (none: skip)")
    parser.add_argument("--out", type=Path, default=Path("reports/federated"))
    args = parser.parse_args()
    report = evaluate_federated(devices=args.devices, train_s=args.train_s,
                                test_s=args.test_s, dp=args.dp or None)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for key in ("decision_agreement", "max_principal_angle_deg", "f1_difference"):
        print(f"{key:<28} {report[key]}")
    for side in ("central", "federated"):
        r = report[side]
        print(f"{side:<10} F1 {r['f1']}  faults {r['faults_caught']}/{r['faults']}  "
              f"false-alarm windows {r['false_alarm_rate']}")
    for row in report.get("differential_privacy", []):
        if "failed" in row:
            print(f"DP epsilon {row['epsilon']}: {row['failed']}")
            continue
        print(f"DP epsilon {row['epsilon']}: F1 {row['f1']} (cost {row['f1_cost']}), max "
              f"angle {row['max_principal_angle_deg']} deg")
    print(f"wrote {args.out / 'report.json'}")


if __name__ == "__main__":
    main()

