"""SCAFFOLDING until the real exporters (issue 4): turn a trained iteration into TFLite/ONNX export folders.

Used by ``tests/runtimes/conftest.py`` and ``bench/runtime_latency.py`` so that the runtime can be
tested and measured on real converted models before ``exporters/`` exists. It lives in ``bench/``
because the benchmark must not import the tests, and the product packages must not grow an
exporter before its issue; when the exporters land, both callers switch to them and this file goes.

It writes what the exporters will write in spirit — the model file, ``labels.txt`` and a
``manifest.json`` through :class:`runtimes.manifest.Manifest` — but no Custom Vision metadata,
no tensor renaming and no verification (the manifest says ``unverified``).

Formats:
    ``tflite-fp32``: float32 NHWC input, ``TFLiteConverter.from_concrete_functions``.
    ``tflite-int8``: full-integer model, uint8 input and output, calibrated on the given images.
    ``onnx``: tf2onnx, opset 17, NCHW float32 input named ``data`` (``inputs_as_nchw``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

FORMATS = ("tflite-fp32", "tflite-int8", "onnx")
_SUFFIX = {"tflite-fp32": ".tflite", "tflite-int8": ".tflite", "onnx": ".onnx"}


def export_iteration(iteration: Any, dest: Path, representative: Sequence[os.PathLike | str],
                     formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """Convert ``iteration``'s tf_keras model into one export folder per format under ``dest``.

    Args:
        iteration: an ``edgevision.iteration.Iteration`` (classifier).
        dest: parent folder; ``dest/<format>/`` is created for each format.
        representative: image files used to calibrate the int8 model.
        formats: a subset of :data:`FORMATS`.

    Returns:
        ``{format: export folder}``.
    """
    from edgevision._tf import import_tf
    from runtimes.preprocess import preprocess

    tf, _ = import_tf()
    model = iteration.load_model()
    size = iteration.input_size
    spec = tf.TensorSpec([1, size, size, 3], tf.float32, name="data")
    # One traced function for both TFLite conversions; the signature key names the output
    # "model_output", which the runtime reads from the TFLite signature.
    concrete = tf.function(lambda data: {"model_output": model(data, training=False)}).get_concrete_function(spec)
    # The converter saves a SavedModel of whatever object holds the variables; given the tf_keras
    # model it traces every layer (~20 s here), given a bare tf.Module holding only the variables
    # it does not (~4 s) and the result is the same model.
    holder = tf.Module()
    holder.model_variables = list(model.variables)
    calibration = np.stack([preprocess(p, (size, size)) for p in representative])
    out: dict[str, Path] = {}
    for fmt in formats:
        folder = dest / fmt
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        model_file = "model" + _SUFFIX[fmt]
        if fmt == "onnx":
            import tf2onnx

            tf2onnx.convert.from_keras(model, input_signature=[spec], opset=17, inputs_as_nchw=["data"],
                                       output_path=str(folder / model_file))
            options: dict[str, Any] = {"opset": 17, "layout": "NCHW"}
        else:
            converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], holder)
            options = {"quantize": "none"}
            if fmt == "tflite-int8":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.representative_dataset = lambda: ([image[None]] for image in calibration)
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                converter.inference_input_type = tf.uint8
                converter.inference_output_type = tf.uint8
                options = {"quantize": "int8", "input_type": "uint8", "output_type": "uint8",
                           "calibration_images": len(calibration)}
            (folder / model_file).write_bytes(converter.convert())
        write_manifest(iteration, folder, model_file, fmt, options)
        out[fmt] = folder
    return out


def write_manifest(iteration: Any, folder: Path, model_file: str, fmt: str, options: dict[str, Any]) -> Path:
    """Write ``labels.txt`` and ``manifest.json`` for a converted model, reading I/O names from the file itself."""
    from runtimes.engines import open_engine
    from runtimes.manifest import ExporterInfo, InputSpec, Manifest, OutputSpec, Verification, file_digests

    labels = list(iteration.labels)
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    engine = open_engine(folder / model_file)
    try:
        size = iteration.input_size
        shape = (1, size, size, 3) if engine.layout == "NHWC" else (1, 3, size, size)
        manifest = Manifest(
            task=iteration.info["type"],
            domain=iteration.info["domain"],
            project=iteration.project.name,
            iteration=str(iteration.number),
            labels=labels,
            tag_ids=list(iteration.info.get("tag_ids") or []) or None,
            model_file=model_file,
            labels_file="labels.txt",
            input=InputSpec(engine.input.name, engine.layout, shape, np.dtype(engine.input.dtype).name),
            outputs=[OutputSpec("model_output", (1, len(labels)), np.dtype(engine.outputs[0].dtype).name)],
            files=file_digests(folder, [model_file, "labels.txt"]),
            exporter=ExporterInfo(f"scaffold-{fmt}", "0", options),
            verification=Verification("unverified", "test scaffolding export; the exporters (issue 4) verify"),
            source=str(folder / "manifest.json"),
        )
    finally:
        engine.close()
    return manifest.save(folder)
