"""Import TensorFlow/Keras lazily and quietly.

Nothing in ``cloud_hub`` imports TensorFlow at module level: the hub's REST process starts fast
and the import cost (~2.5 s, ~500 MB) is paid by the first training job. TensorFlow's C++ info and
warning lines are hidden (``TF_CPP_MIN_LOG_LEVEL=2`` keeps errors), and Keras' progress prints go
through absl logging, which is set to ERROR.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from edge_agent.inference.runtime_stderr import filtered_stderr

__all__ = ["import_keras", "import_tensorflow", "quiet_conversion", "seed_everything"]

_lock = threading.Lock()
_ready = False


def import_tensorflow() -> ModuleType:
    """``tensorflow``, imported once with its logs turned down to errors."""
    global _ready
    with _lock:
        # Must be set before the first import of tensorflow to reach its C++ logger.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # oneDNN announces itself on stderr before logging is configured; off, nothing is lost
        # for these small models (measured: same fit and conversion times).
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        import tensorflow as tf

        if not _ready:
            tf.get_logger().setLevel(logging.ERROR)
            try:
                from absl import logging as absl_logging

                absl_logging.set_verbosity(absl_logging.ERROR)
            except ImportError:  # absl ships with tensorflow; tolerate its absence
                pass
            _ready = True
        import keras

        # Keras otherwise print()s export/progress messages to stdout. Its setting is
        # per thread (Keras keeps global state in a threading.local), so set it every time.
        keras.config.disable_interactive_logging()
        module: ModuleType = tf
        return module


def import_keras() -> ModuleType:
    import_tensorflow()
    import keras

    module: ModuleType = keras
    return module


# The converter's calibrator prints this status line straight to the C stderr on every int8
# conversion; it is not a log record, so only a file-descriptor filter removes it.
_CONVERTER_CHATTER = re.compile(rb"^fully_quantize: \d+, inference_type: ")


@contextmanager
def quiet_conversion() -> Iterator[None]:
    """Hide the converter's known, harmless warnings and chatter (pytest runs with
    ``-W error``); anything else it writes to stderr is passed on when it finishes."""
    with filtered_stderr(_CONVERTER_CHATTER), warnings.catch_warnings():
        # int8 with a representative dataset: TF warns it was not given input statistics,
        # which the calibration supplies.
        warnings.filterwarnings(
            "ignore", message=r"Statistics for quantized inputs were expected", category=UserWarning
        )
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def seed_everything(seed: int) -> Any:
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    return keras
