"""Two registry versions side by side: the figures an admin decides on, and what differs."""

from __future__ import annotations

from typing import Any

from cloud_hub.db.registry_tables import ModelVersion

__all__ = ["compare_versions"]

_FIELDS = ("status", "family", "quantization", "size_bytes", "float_size_bytes", "threshold",
           "threshold_method", "parity_passed", "key_id", "created_at")
_PARITY = ("decision_agreement", "score_correlation", "max_score_error", "mean_score_error",
           "windows", "us_per_window", "runtime", "min_agreement")


def _figures(m: ModelVersion) -> dict[str, Any]:
    data: dict[str, Any] = {f: getattr(m, f) for f in _FIELDS}
    data["ref"] = f"{m.name}:{m.version}"
    data["channels"] = m.channels
    data["window"] = m.input.get("window")
    data["training_rows"] = m.training.get("rows")
    data["parity"] = {k: m.parity.get(k) for k in _PARITY}
    data["spec"] = m.spec
    data["validation"] = m.validation
    data["modes"] = m.extra.get("modes")  # parity of every quantization mode, if measured
    return data


def compare_versions(a: ModelVersion, b: ModelVersion) -> dict[str, Any]:
    left, right = _figures(a), _figures(b)
    differs = sorted(
        k for k in left
        if k not in ("ref", "created_at") and left[k] != right[k]
    )
    spec_diff = {
        k: [a.spec.get(k), b.spec.get(k)]
        for k in sorted(set(a.spec) | set(b.spec)) if a.spec.get(k) != b.spec.get(k)
    }
    return {"a": left, "b": right, "differs": differs, "spec_diff": spec_diff}
