"""Imports TensorFlow and tf_keras once, quietly, with the Keras 2 API selected (lazy: only callers that train)."""

from __future__ import annotations

import os
import sys
from types import ModuleType

_cached: tuple[ModuleType, ModuleType] | None = None


def import_tf() -> tuple[ModuleType, ModuleType]:
    """Return ``(tensorflow, tf_keras)``.

    ``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow's first import so that
    tensorflow-model-optimization (QAT, pruning) sees tf_keras models. The C++ log noise (absl,
    cudart) only goes if fd 2 is redirected during the import, so it is, briefly.
    """
    global _cached
    if _cached is not None:
        return _cached
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # oneDNN stays on: it halves CPU inference time, and its results were measured to be
    # bit-identical across processes and batch sizes for the same input (reproducible training).
    saved = None
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:  # no real fd 2 (e.g. some embedded interpreters): import noisily
        saved = None
    try:
        import tensorflow as tf
        import tf_keras
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
    tf.get_logger().setLevel("ERROR")
    _cached = (tf, tf_keras)
    return _cached
