"""Which function runs each admin command (every command but ``serve``, ``db`` and the local
ones); each takes parsed arguments and a :class:`HubClient`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cloud_hub.cli.client import HubClient
from cloud_hub.cli.device_commands import DEVICE_COMMANDS
from cloud_hub.cli.drift_commands import DRIFT_COMMANDS
from cloud_hub.cli.key_commands import KEY_COMMANDS
from cloud_hub.cli.model_commands import MODEL_COMMANDS
from cloud_hub.cli.ops_commands import OPS_COMMANDS
from cloud_hub.cli.rollout_commands import ROLLOUT_COMMANDS
from cloud_hub.cli.training_commands import TRAINING_COMMANDS

__all__ = ["COMMANDS"]

COMMANDS: dict[str, Callable[[argparse.Namespace, HubClient], int]] = {
    **TRAINING_COMMANDS, **MODEL_COMMANDS, **ROLLOUT_COMMANDS, **DEVICE_COMMANDS,
    **KEY_COMMANDS, **OPS_COMMANDS, **DRIFT_COMMANDS}
