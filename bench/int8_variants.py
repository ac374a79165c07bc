"""Where full-integer int8 loses top-1 agreement on the Fashion-MNIST benchmark: one float model, calibrated
once, quantized many ways (layers kept in float, activation ranges, 16-bit activations), plus how sensitive the
float model itself is to tiny input changes.

What it does
------------
Reuses the project that ``bench/quantization.py --home DIR`` built (``DIR/projects/fmnist-quant`` and the test
images in ``DIR-data/test.npz``): the first iteration that is not pruned is the benchmark's quick float model.
The float model predicts the test images once (tf_keras, the reference); the int8 export's own recipe (the
split head of :func:`edgevision.training.quantization.split_head`, 100 ``balanced`` calibration images, seed 0,
per-channel weights) records activation ranges once (the converter's calibrate-only step), and each variant then
re-quantizes that calibrated model (``tensorflow.lite.python.convert.mlir_quantize``) with
``denylisted_ops`` / ``denylisted_nodes`` (those ops stay float, dequantize/quantize around them) or with edited
activation ranges, and predicts the test images through ``ai_edge_litert``'s Interpreter. Columns: file size and %
of the float32 file, top-1 accuracy, top-1 agreement with the float model on all test images and on those whose
float top-1 leads the runner-up by more than 0.1 in probability (a diagnostic: the target counts all images), and
the accuracy drop in points. The ``float +noise`` rows are not exports: the float model on test images with
Gaussian noise of 1 grey level (of 255) added, rounded and clipped, and with every pixel one grey level brighter.

How to run
----------
    .venv/bin/python bench/quantization.py --home /tmp/qbench/home          # once: trains and keeps the project
    .venv/bin/python bench/int8_variants.py --home /tmp/qbench/home          # ~16 min on 2 cores (10 of them 16x8)
    .venv/bin/python bench/int8_variants.py --home /tmp/qbench/home --variants int8,mse-ranges --test 500

Progress goes to stderr, the table (or ``--json``) to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fashion_mnist as fm  # noqa: E402  (bench/: the benchmark's data and tables)

PROJECT = "fmnist-quant"
VARIANTS = ("float32", "dynamic", "int8", "head-float", "stem-block0-float", "add-float", "depthwise-float",
            "mse-ranges", "16x8", "float+noise", "float+1")


def log(msg: str) -> None:
    print(f"[int8_variants] {msg}", file=sys.stderr, flush=True)


def _tf() -> tuple[Any, Any]:
    from edgevision._tf import import_tf

    return import_tf()


def _run_tflite(model: bytes, x: np.ndarray, threads: int) -> np.ndarray:
    """Probabilities of a .tflite model on uint8 images, one image per call (as the device runs it)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=threads)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    probs = []
    for k in range(len(x)):
        xi = x[k : k + 1].astype(np.float32)
        if inp["dtype"] != np.float32:
            s, z = inp["quantization"]
            xi = np.clip(np.round(xi / s + z), 0, 255).astype(inp["dtype"])
        it.set_tensor(inp["index"], xi)
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] != np.float32:
            s, z = out["quantization"]
            y = (y - z) * s
        probs.append(y[0])
    return np.array(probs)


def _op_outputs(model: bytes) -> list[tuple[str, str]]:
    """(op name, output tensor name) of every op, in execution order."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    return [(op["op_name"], it._get_tensor_details(op["outputs"][0], 0)["name"])  # noqa: SLF001
            for op in it._get_ops_details()]  # noqa: SLF001


def _mse_ranges(calibrated: bytes, images: list[np.ndarray]) -> bytes:
    """The calibrated model with each activation range shrunk to the one (a fraction 0.2..1 of min/max) that
    minimises the int8 rounding + clipping error on a sample of the calibration activations."""
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.tools import flatbuffer_utils as fu

    fb = fu.convert_bytearray_to_object(bytearray(calibrated))
    tensors = fb.subgraphs[0].tensors
    idx = [i for i, t in enumerate(tensors) if i and t.quantization is not None and t.quantization.min is not None
           and len(t.quantization.min)]
    it = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    samples: dict[int, list[np.ndarray]] = {i: [] for i in idx}
    for image in images:
        it.set_tensor(it.get_input_details()[0]["index"], image.astype(np.float32))
        it.invoke()
        for i in idx:
            v = it.get_tensor(i).ravel()
            samples[i].append(v[rng.integers(0, v.size, 4000)] if v.size > 4000 else v.copy())
    for i in idx:
        v = np.concatenate(samples[i])
        lo0, hi0 = float(tensors[i].quantization.min[0]), float(tensors[i].quantization.max[0])
        best = (np.inf, lo0, hi0)
        for f in np.linspace(0.2, 1.0, 33):
            lo, hi = min(lo0 * f, 0.0), max(hi0 * f, 0.0)
            s = (hi - lo) / 255 or 1.0
            z = np.round(-lo / s)
            err = float(np.mean(((np.clip(np.round(v / s) + z, 0, 255) - z) * s - v) ** 2))
            if err < best[0]:
                best = (err, lo, hi)
        tensors[i].quantization.min = np.array([best[1]], np.float32)
        tensors[i].quantization.max = np.array([best[2]], np.float32)
    return bytes(fu.convert_object_to_bytearray(fb))


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    tf, keras = _tf()
    from tensorflow.lite.python import convert, util

    from edgevision.store.project import Project
    from edgevision.training.quantization import split_head
    from exporters import calibration_groups, select_calibration_images
    from exporters.tflite import DEFAULT_CALIBRATION_IMAGES, _concrete_function, _holder
    from runtimes.preprocess import preprocess

    home = Path(args.home)
    project = Project.open(PROJECT, home=home)
    iteration = next(it for it in project.iterations() if not it.info.get("pruning"))
    size = int(iteration.input_size)
    x, y = fm.kept_test_set(home, iteration.labels, size, args.test)
    n = len(y)
    model = iteration.load_model()
    fn = tf.function(lambda a: model(a, training=False))

    def keras_probs(transform: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> np.ndarray:
        return np.concatenate([np.asarray(fn(transform(x[s : s + 50].astype(np.float32)))) for s in range(0, n, 50)])

    t = time.perf_counter()
    ref = keras_probs()
    log(f"float model on {n} test images: {time.perf_counter() - t:.0f} s, top-1 {np.mean(ref.argmax(1) == y):.4f}")
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.1

    split = split_head(model)

    def converter() -> Any:
        c = tf.lite.TFLiteConverter.from_concrete_functions([_concrete_function(tf, split, size)], _holder(tf, split))
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        return c

    paths = select_calibration_images(calibration_groups(iteration), DEFAULT_CALIBRATION_IMAGES, "balanced", 0)
    calibration = [preprocess(p, (size, size))[None] for p in paths]

    def representative() -> Any:
        for image in calibration:
            yield [image]

    c = converter()
    c.representative_dataset = representative
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.experimental_mlir_quantizer = True
    c._experimental_calibrate_only = True  # noqa: SLF001  (ranges once; every variant re-quantizes them)
    calibrated = c.convert()
    ops = _op_outputs(calibrated)
    head = [name for op, name in ops if op in ("MEAN", "FULLY_CONNECTED", "SOFTMAX") or "/logits/" in name]
    stem_block0 = [name for _, name in ops[2:5]]  # stem conv, block0 depthwise, block0 projection

    def quantized(**kw: Any) -> bytes:
        model_bytes = convert.mlir_quantize(calibrated, **kw)
        try:
            return util.modify_model_io_type(model_bytes, tf.uint8, tf.uint8)  # the exporter's default io
        except (ValueError, RuntimeError):
            return model_bytes  # a float op at an end: float32 io

    def plain(flavor: str) -> bytes:
        c = converter()
        if flavor == "float32":
            c.optimizations = []
        elif flavor == "16x8":
            c.representative_dataset = representative
            c.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        return c.convert()

    builders: dict[str, Callable[[], bytes | np.ndarray]] = {
        "float32": lambda: plain("float32"),
        "dynamic": lambda: plain("dynamic"),
        "int8": lambda: quantized(),
        "head-float": lambda: quantized(denylisted_nodes=head),
        "stem-block0-float": lambda: quantized(denylisted_nodes=stem_block0),
        "add-float": lambda: quantized(denylisted_ops=["ADD"]),
        "depthwise-float": lambda: quantized(denylisted_ops=["DEPTHWISE_CONV_2D"]),
        "mse-ranges": lambda: util.modify_model_io_type(
            convert.mlir_quantize(_mse_ranges(calibrated, calibration)), tf.uint8, tf.uint8),
        "16x8": lambda: plain("16x8"),
        "float+noise": lambda: keras_probs(lambda a: np.clip(np.round(
            a + np.random.default_rng(0).normal(0, 1.0, a.shape)), 0, 255).astype(np.float32)),
        "float+1": lambda: keras_probs(lambda a: np.clip(a + 1, 0, 255)),
    }
    rows: list[dict[str, Any]] = []
    float_bytes = len(plain("float32"))
    for name in args.variants_list:
        t = time.perf_counter()
        built = builders[name]()
        row: dict[str, Any] = {"variant": name}
        if isinstance(built, bytes):
            row["bytes"], row["pct_of_float32"] = len(built), len(built) / float_bytes
            probs = _run_tflite(built, x, args.threads)
        else:
            probs = built
        pred = probs.argmax(1)
        row |= {"test_accuracy": float(np.mean(pred == y)), "agreement": float(np.mean(pred == ref.argmax(1))),
                "agreement_clear": float(np.mean(pred[clear] == ref.argmax(1)[clear])),
                "clear_images": int(clear.sum()),
                "accuracy_drop": float(np.mean(ref.argmax(1) == y) - np.mean(pred == y)),
                "seconds": round(time.perf_counter() - t, 1)}
        rows.append(row)
        log(f"  {name}: agreement {row['agreement']:.4f} ({row['seconds']} s)")
    project.close()
    return rows


def table(rows: list[dict[str, Any]], n: int) -> str:
    head = ("variant", "size MB", "% fp32", f"top-1@{n}", "agree", "agree (margin>0.1)", "drop pts")
    lines = [head] + [(
        r["variant"], "-" if "bytes" not in r else f"{r['bytes'] / 1e6:.2f}",
        "-" if "bytes" not in r else f"{100 * r['pct_of_float32']:.1f}", f"{r['test_accuracy']:.4f}",
        f"{100 * r['agreement']:.2f}%", f"{100 * r['agreement_clear']:.2f}% of {r['clear_images']}",
        f"{100 * r['accuracy_drop']:+.2f}") for r in rows]
    return fm.text_table(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", required=True, help="the --home of a bench/quantization.py run (its project is reused)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--test", type=int, default=2000, help="test images (default: all 2,000 of that run)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.variants_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants_list) - set(VARIANTS)
    if unknown:
        p.error(f"--variants: unknown {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    if not (Path(args.home) / "projects" / PROJECT).is_dir():
        p.error(f"--home {args.home}: no {PROJECT} project; run bench/quantization.py --home {args.home} first")
    os.environ["EDGEVISION_HOME"] = args.home
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    rows = run(args)
    print(json.dumps(rows, indent=1) if args.json else table(rows, min(args.test, 2000)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
