"""SavedModel exporter: a TensorFlow SavedModel whose ``serving_default`` signature follows the S1 contract.

Signature: input ``data`` float32 ``[1, H, W, 3]`` RGB 0..255 -> ``model_output`` ``[1, C]`` probabilities.

Verification: the device runtime has no engine for SavedModels (it never imports TensorFlow), so
this exporter checks the artefact with TensorFlow itself — it reloads the SavedModel from disk and
runs its ``serving_default`` signature on the same preprocessed images — and applies the float32
tolerance. This is the exporter side, where TensorFlow is installed anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from exporters.base import RAW_FLAVOR, Artifact, ExportContext, Exporter, Options
from runtimes.manifest import InputSpec, Verification

log = logging.getLogger(__name__)

MODEL_DIR = "saved_model"


@dataclass(frozen=True)
class SavedModelOptions(Options):
    """The ``savedmodel`` exporter takes no options."""


class SavedModelExporter(Exporter):
    """A ``saved_model/`` folder for TensorFlow Serving and TensorFlow.js converters."""

    name = "savedmodel"
    suffix = ""
    flavors = ("float32", RAW_FLAVOR)
    tasks = ("multiclass", "multilabel", "detection")
    default_flavor = "float32"
    runs_on = "TensorFlow, TF Serving (verified with TensorFlow, not the device runtime)"
    description = "TensorFlow SavedModel, serving_default: data -> model_output"
    Options = SavedModelOptions
    hosted_exports = {("TensorFlow", ""): "float32", ("TensorFlow", "TensorFlowNormal"): "float32"}

    def export(self, ctx: ExportContext, flavor: str, options: Options) -> Artifact:
        from edgevision._tf import import_tf

        tf, _ = import_tf()
        module = tf.Module()
        module.model = ctx.model
        concrete = ctx.concrete_function(flavor)
        tf.saved_model.save(module, str(ctx.out_dir / MODEL_DIR), signatures={"serving_default": concrete})
        size = ctx.input_size
        return Artifact(
            model_file=MODEL_DIR,
            input=InputSpec("data", "NHWC", (1, size, size, 3), "float32"),
            outputs=ctx.output_specs(flavor),
            platform="TensorFlow",
            flavor=flavor,
            # Not runnable by runtimes/: verified below with TensorFlow instead.
            runnable_here=True,
        )

    def verify(self, ctx: ExportContext, artifact: Artifact, flavor: str) -> Verification:
        from exporters.verify import compare_with_model

        def run_with_tensorflow(path: Path, images: Sequence[Path]) -> Any:
            from edgevision._tf import import_tf
            from exporters.verify import detections_from_outputs
            from runtimes.preprocess import preprocess

            tf, _ = import_tf()
            serving = tf.saved_model.load(str(path)).signatures["serving_default"]
            size = (ctx.input_size, ctx.input_size)
            results = [{k: v.numpy() for k, v in serving(data=tf.constant(preprocess(im, size)[None])).items()}
                       for im in images]
            if ctx.is_detector:
                return [detections_from_outputs(r, dict(ctx.detection or {})) for r in results]
            return np.concatenate([r["model_output"] for r in results]).astype(np.float32)

        result = compare_with_model(ctx, artifact, flavor, runner=run_with_tensorflow)
        details = dict(result.details) | {"checked_with": "tensorflow (SavedModel reloaded from disk)"}
        return Verification(result.status, result.reason, details)
