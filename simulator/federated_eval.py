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
- each model's quantization (``auto``: the hub picks the mode, see
  :mod:`cloud_hub.quantize.compare`), its size and its parity.

Writes ``reports/federated/report.json``.

Differential privacy is not offered (``--dp`` is refused, naming why): see
:data:`DP_REFUSAL`. A noised variant that released each device's exact per-channel means and
reading moments beside the noised scatter, and counted a window rather than a reading as the
unit of privacy, is not differential privacy and is not reported as such.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.drift.federated import FederatedSettings, WindowScatter
from shared.scatter import pack_upper
from simulator.faults import DEFAULT_DURATION_S, Fault, FaultKind
from simulator.signals import SignalGenerator

__all__ = ["DP_REFUSAL", "evaluate_federated", "main"]

DP_REFUSAL = (
    "differential privacy on the federated statistics is not implemented: a correct Gaussian "
    "mechanism needs (1) clipping in a normalization fixed before the data (e.g. the active "
    "model's), not the device's own means, which would be released exactly; (2) noise on "
    "every released field (window count, sum, scatter and the per-channel reading moments, "
    "which the hub uses for normalization); (3) a reading, not a window, as the unit of "
    "privacy (with stride 1 one reading is in `window` windows: sensitivity x window); (4) "
    "the privacy budget composed over the summaries a device sends, with the spent epsilon "
    "kept on the device. None of this is on the agent yet, so no epsilon is claimed")

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


def _stats(train: npt.NDArray[np.float64], window: int, channels: list[str]) -> dict[str, Any]:
    """What one device would send: its WindowScatter over ``train``."""
    scatter = WindowScatter(FederatedSettings(window=window, min_windows=10), len(channels))
    for i, row in enumerate(train):
        scatter.add(float(i) / RATE, row.tolist())
    n, mean, s, readings = scatter.take()
    return {"window": window, "stride": 1, "channels": channels, "windows": n,
            "mean": mean.tolist(), "scatter": pack_upper(s), "reading_count": readings.n,
            "reading_mean": readings.mean.tolist(),
            "reading_m2": np.maximum(readings.m2, 0.0).tolist()}


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


def _model_facts(artifact: Any) -> dict[str, Any]:
    """The quantization the hub chose (or was told), with its reason, size and parity."""
    choice = artifact.extra.get("quantization_choice") or {}
    return {"quantization": choice.get("mode") or artifact.spec.quantization,
            "quantization_asked": artifact.spec.quantization,
            "quantization_reason": choice.get("reason"),
            "size_bytes": len(artifact.tflite), "float_size_bytes": artifact.float_size,
            "parity": artifact.parity.decision_agreement}


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
                       seed: int = 3) -> dict[str, Any]:
    from cloud_hub.jobs.training import spec_from_dict
    from cloud_hub.training.dataset import prepare_dataset
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

    def federated() -> tuple[Any, dict[str, Any]]:
        parts = [_stats(d[1][:c], spec.window, channels) for d, c in zip(data, cut, strict=True)]
        stats = merge_stats(parts)
        t0 = time.perf_counter()
        artifact = run_federated_training(stats, spec)
        mean, basis, values = pca_from_stats(stats, k)
        info = {
            "train_seconds": round(time.perf_counter() - t0, 2), "windows": stats.windows,
            "bytes_sent_per_device": int(np.mean([len(json.dumps(p)) for p in parts])),
            "principal_angles_deg": [round(a, 3) for a in _angles(central_basis, basis)],
            "explained_variance": round(float(values[:k].sum() / values.sum()), 5),
            "threshold": artifact.threshold, **_model_facts(artifact),
            "normalization_max_rel_diff": float(np.max(np.abs(
                (np.asarray(artifact.normalization.scale) - np.asarray(central.normalization.scale))
                / np.asarray(central.normalization.scale)))),
        }
        return artifact, info

    fed, fed_info = federated()
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
                    **_model_facts(central),
                    "explained_variance": round(central_explained, 5),
                    "train_seconds": round(central_s, 2)},
        "federated": {**results["federated"], **fed_info},
        "decision_agreement": round(agreement_num / agreement_den, 5),
        "max_principal_angle_deg": max(fed_info["principal_angles_deg"]),
        "f1_difference": round(results["federated"]["f1"] - results["central"]["f1"], 4),
    }
    report["differential_privacy"] = {"offered": False, "why": DP_REFUSAL}
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
    parser.add_argument("--dp", type=float, nargs="*", default=None,
                        help="refused: differential privacy is not implemented (says why)")
    parser.add_argument("--out", type=Path, default=Path("reports/federated"))
    args = parser.parse_args()
    if args.dp is not None:
        parser.error(f"--dp: {DP_REFUSAL}")
    report = evaluate_federated(devices=args.devices, train_s=args.train_s,
                                test_s=args.test_s)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for key in ("decision_agreement", "max_principal_angle_deg", "f1_difference"):
        print(f"{key:<28} {report[key]}")
    for side in ("central", "federated"):
        r = report[side]
        print(f"{side:<10} F1 {r['f1']}  faults {r['faults_caught']}/{r['faults']}  "
              f"false-alarm windows {r['false_alarm_rate']}  {r['quantization']} "
              f"{r['size_bytes']} B (float {r['float_size_bytes']} B), parity {r['parity']}")
    print(f"wrote {args.out / 'report.json'}")


if __name__ == "__main__":
    main()

