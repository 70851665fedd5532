"""Model families behind one interface; :func:`get_family` picks one by ``TrainingSpec.family``."""

from __future__ import annotations

from cloud_hub.training.families.base import ModelFamily, to_layout
from cloud_hub.training.families.conv1d import Conv1dAutoencoder
from cloud_hub.training.families.dense import DenseAutoencoder
from cloud_hub.training.families.pca import PcaBaseline

__all__ = ["FAMILIES", "ModelFamily", "get_family", "to_layout"]

FAMILIES: dict[str, type[ModelFamily]] = {
    f.name: f for f in (DenseAutoencoder, Conv1dAutoencoder, PcaBaseline)
}


def get_family(name: str) -> ModelFamily:
    """The family called ``name``; ``KeyError`` names the known ones."""
    try:
        return FAMILIES[name]()
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
