"""Device runtime latency: ``Predictor.predict`` versus the bare engine call, per format and thread count; cold start.

What it measures
----------------
For TFLite float32, TFLite full-int8 and ONNX exports of one quick iteration of the generated
sample project (EfficientNet-Lite0, 224 px, 4 tags), at 1 and 2 threads:

* ``bare``: the engine alone on an already prepared input tensor — ai-edge-litert
  ``set_tensor`` + ``invoke`` + ``get_tensor``, or onnxruntime ``session.run`` — with an
  interpreter/session of its own created with the same thread count;
* ``array``: ``Predictor.predict(array)`` from a decoded 224x224 RGB uint8 numpy image through to the
  ``ImagePrediction`` (conversion, layout/dtype handling, engine, dequantization, record);
* ``jpeg``: ``Predictor.predict(path)`` from a 451x300 JPEG photo file (decode + resize as well).

Median and p90 over ``--runs`` calls (default 200) after ``--warmup`` calls (default 20). bare and
array calls alternate, so both see the same machine load; ``overhead`` is median(array) /
median(bare), the runtime's cost over the engine (target <= 1.1 at batch 1).

Cold start: a fresh ``python -c`` process that imports ``runtimes``, loads the export and predicts
the JPEG once, timed with ``time.perf_counter`` around ``subprocess.run`` (median of ``--cold``
runs, default 3), with the child's peak RSS (``ru_maxrss``) and its own import / load / first
prediction split.

The exports are built first (train + ``exporters.export_iteration``, verified, about 40 s) in a
child process, because that needs TensorFlow; the measuring process never imports it. ``--exports
DIR`` reuses folders built earlier with ``--keep DIR``.

How to run
----------
    .venv/bin/python bench/runtime_latency.py
    .venv/bin/python bench/runtime_latency.py --keep /tmp/rt-exports --json
    .venv/bin/python bench/runtime_latency.py --exports /tmp/rt-exports --runs 500 --threads 1,2,4

Timings depend on the machine and what else runs on it: the header prints the core count and
load average; quote them with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
FORMATS = ("tflite-fp32", "tflite-int8", "onnx")


# --------------------------------------------------------------------------- building the exports
def build_exports(dest: Path) -> None:
    """Train the sample project (quick, 2 folds) and convert it; runs in a child process (TensorFlow)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from edgevision.datasets.sample import write_sample_dataset
    from edgevision.store.project import Project

    sample = write_sample_dataset(dest / "sample", per_tag=6)
    project = Project.create("shapes", "multiclass", home=dest / "home")
    project.import_folder(sample)
    iteration = project.train("quick", folds=2)
    # Folder names the measuring code reads: tflite-fp32, tflite-int8 (uint8 I/O), onnx.
    for folder, fmt, flavor in (("tflite-fp32", "tflite", "float32"), ("tflite-int8", "tflite", "int8"),
                                ("onnx", "onnx", "float32")):
        iteration.export(fmt, flavor=flavor, out=dest / folder)
    project.close()


def ensure_exports(args: argparse.Namespace, scratch: Path) -> Path:
    if args.exports:
        return Path(args.exports)
    dest = Path(args.keep) if args.keep else scratch / "exports"
    dest.mkdir(parents=True, exist_ok=True)
    print(f"building exports in {dest} (train + convert, ~40 s) ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--build", str(dest)], check=True,
                   stdout=subprocess.DEVNULL, stderr=None if args.verbose else subprocess.DEVNULL)
    print(f"built in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return dest


def test_photo(dest: Path) -> Path:
    """A real photo as JPEG (scikit-image's chelsea, 451x300) or, without scikit-image, a sample image."""
    from PIL import Image

    path = dest / "photo.jpg"
    try:
        from skimage import data

        Image.fromarray(data.chelsea()).save(path, quality=90)
    except ImportError:
        sample = sorted((dest / "sample").rglob("*.png"))[0]
        Image.open(sample).convert("RGB").resize((451, 300)).save(path, quality=90)
    return path


# --------------------------------------------------------------------------- measuring
def bare_call(folder: Path, threads: int, tensor: np.ndarray) -> Callable[[], Any]:
    """The engine alone, created the way the runtime creates it, on a prepared tensor."""
    model = next(folder.glob("model.*"))
    if model.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(model), num_threads=threads)
        interpreter.allocate_tensors()
        index = interpreter.get_input_details()[0]["index"]
        outputs = [d["index"] for d in interpreter.get_output_details()]

        def run_tflite() -> Any:
            interpreter.set_tensor(index, tensor)
            interpreter.invoke()
            return [interpreter.get_tensor(i) for i in outputs]

        return run_tflite
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: tensor})


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": statistics.median(ordered) * 1e3, "p90_ms": ordered[int(0.9 * (len(ordered) - 1))] * 1e3}


def measure(folder: Path, threads: int, photo: Path, runs: int, warmup: int) -> dict[str, Any]:
    import runtimes
    from PIL import Image

    predictor = runtimes.load(folder, threads=threads)
    width, height = predictor.input_size
    array = np.asarray(Image.open(photo).convert("RGB").resize((width, height), Image.Resampling.BILINEAR))
    tensor = predictor.engine.prepare(runtimes.preprocess(array, (width, height))[None])
    bare = bare_call(folder, threads, tensor)
    timings: dict[str, list[float]] = {"bare": [], "array": [], "jpeg": []}
    calls = {"bare": bare, "array": lambda: predictor.predict(array), "jpeg": lambda: predictor.predict(photo)}
    for _ in range(warmup):
        for call in calls.values():
            call()
    for _ in range(runs):
        for name in ("bare", "array"):  # alternated: both see the same load
            started = time.perf_counter()
            calls[name]()
            timings[name].append(time.perf_counter() - started)
    for _ in range(runs):
        started = time.perf_counter()
        calls["jpeg"]()
        timings["jpeg"].append(time.perf_counter() - started)
    predictor.close()
    result = {name: stats(values) for name, values in timings.items()}
    result["overhead"] = result["array"]["median_ms"] / result["bare"]["median_ms"]
    return result


COLD_SCRIPT = """
import resource, sys, time
t0 = time.perf_counter()
import runtimes
t1 = time.perf_counter()
predictor = runtimes.load(sys.argv[1], threads=1)
t2 = time.perf_counter()
predictor.predict(sys.argv[2])
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def cold_start(folder: Path, photo: Path, repeats: int) -> dict[str, float]:
    walls, parts = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", COLD_SCRIPT, str(folder), str(photo)],
                              capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - started)
        parts.append([float(v) for v in done.stdout.split()])
    median = [statistics.median(p[i] for p in parts) for i in range(4)]
    return {"wall_s": statistics.median(walls), "import_s": median[0], "load_s": median[1],
            "first_predict_s": median[2], "peak_rss_mb": median[3] / 1024}


# --------------------------------------------------------------------------- report
def machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--exports", help="reuse export folders built earlier with --keep")
    parser.add_argument("--keep", help="build the exports into this folder and keep them")
    parser.add_argument("--runs", type=int, default=200, help="timed calls per measurement (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls first (default 20)")
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"default {','.join(FORMATS)}")
    parser.add_argument("--cold", type=int, default=3, help="cold-start processes per format (default 3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--verbose", action="store_true", help="show the build's output")
    parser.add_argument("--build", help=argparse.SUPPRESS)  # internal: the child that trains and converts
    args = parser.parse_args(argv)
    if args.build:
        build_exports(Path(args.build))
        return 0
    threads = [int(t) for t in args.threads.split(",")]
    formats = args.formats.split(",")
    with tempfile.TemporaryDirectory(prefix="edgevision-bench-") as scratch:
        exports = ensure_exports(args, Path(scratch))
        photo = test_photo(Path(scratch))
        print(f"measuring on {machine()}", file=sys.stderr, flush=True)
        results: dict[str, Any] = {"machine": machine(), "runs": args.runs, "latency": {}, "cold_start": {}}
        for fmt in formats:
            for n in threads:
                results["latency"][f"{fmt}/{n}"] = measure(exports / fmt, n, photo, args.runs, args.warmup)
            results["cold_start"][fmt] = cold_start(exports / fmt, photo, args.cold)
        assert not [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras", "edgevision")]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"batch 1, {args.runs} runs after {args.warmup} warm-up; {results['machine']}")
    print(f"{'format':<12} {'threads':>7} {'bare ms':>15} {'array ms':>15} {'jpeg ms':>15} {'overhead':>9}")
    print(f"{'':<12} {'':>7} {'median / p90':>15} {'median / p90':>15} {'median / p90':>15} {'array/bare':>9}")
    for key, r in results["latency"].items():
        fmt, n = key.split("/")
        cells = [f"{r[k]['median_ms']:6.2f} / {r[k]['p90_ms']:6.2f}" for k in ("bare", "array", "jpeg")]
        print(f"{fmt:<12} {n:>7} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} {r['overhead']:>9.3f}")
    print()
    print(f"cold start (fresh process -> first prediction of the JPEG, 1 thread, median of {args.cold})")
    print(f"{'format':<12} {'wall s':>7} {'import s':>9} {'load s':>7} {'1st pred s':>10} {'peak RSS MB':>11}")
    for fmt, c in results["cold_start"].items():
        print(f"{fmt:<12} {c['wall_s']:>7.2f} {c['import_s']:>9.3f} {c['load_s']:>7.3f} {c['first_predict_s']:>10.3f} "
              f"{c['peak_rss_mb']:>11.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
