"""Can the quick head be made blind to int8's errors (issue 6)? Fits the Fashion-MNIST benchmark's quick head on the
float backbone's features *and* the int8 backbone's features of the same training images, then measures
float-vs-int8 top-1 agreement on the 2,000 test images.

What it does
------------
Reuses the project that ``bench/quantization.py --home DIR`` built (``DIR/projects/fmnist-quant``, test images in
``DIR-data/test.npz``); its first iteration is the benchmark's quick float model. The int8 file is the exporter's
own recipe (:func:`split_head`, 100 ``balanced`` calibration images, seed 0, per-channel weights, uint8 io).
Run through ``ai_edge_litert`` with every tensor kept, it gives, per image, the dequantized pooled features that
its four ``FULLY_CONNECTED`` head ops read (top features and the three stage poolings, matched by width): the int8
backbone's view of the image. The activation ranges of the backbone depend only on the float backbone and the
calibration images, not on the head, so these features are the same for any head fitted later (a refit head
changes only its own ``FULLY_CONNECTED`` weights and output ranges).

Head variants (``--variants``), each fitted as quick training fits it (:func:`fit_linear_head`, weight decay picked
from ``L2_GRID`` by the same stratified k-fold cross-validation, folds of images, out-of-fold predictions on the
clean float features), or at fixed weight decays (``--l2``):

- ``clean``: the float features of the 500 training images (the stored head; checked);
- ``clean+q``: plus their int8 features (same tags);
- ``clean+q+qh``: plus the int8 features of the mirrored images;
- ``clean+h+q+qh``: float and int8 features of the images and their mirrors;
- ``clean+q+antid``: plus ``f - (q - f)``, the int8 error mirrored, so the head sees it both ways.

For each: float top-1 (features @ head), the *proxy* int8 prediction (int8 features @ the float head: the head's
own quantization left out) and, with ``--real``, the real int8 file converted with the new head and run on the
test images. Features are cached in ``--cache`` (default ``DIR-int8head``).

How to run
----------
    .venv/bin/python bench/quantization.py --home /tmp/qbench/home --no-qat --prune 0 --calibration 100 --methods balanced
    .venv/bin/python bench/int8_aware_head.py --home /tmp/qbench/home --real
    .venv/bin/python bench/int8_aware_head.py --home /tmp/qbench/home --variants clean,clean+q --l2 0.01,0.1,1
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
VARIANTS = ("clean", "clean+q", "clean+q+qh", "clean+h+q+qh", "clean+q+antid")


def log(msg: str) -> None:
    print(f"[int8_aware_head] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def int8_features(model: bytes, x: np.ndarray, widths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(dequantized inputs of the head's FULLY_CONNECTED ops in ``widths`` order, probabilities) per uint8 image."""
    from ai_edge_litert.interpreter import Interpreter

    ip = Interpreter(model_content=model, experimental_preserve_all_tensors=True, num_threads=2)
    ip.allocate_tensors()
    by_width = {}
    for op in ip._get_ops_details():  # noqa: SLF001  (the only way to list ops and their tensors)
        if op["op_name"] == "FULLY_CONNECTED":
            detail = ip._get_tensor_details(op["inputs"][0], 0)  # noqa: SLF001
            by_width[int(detail["shape"][-1])] = detail
    if sorted(by_width) != sorted(widths):
        raise SystemExit(f"the int8 head reads feature groups of widths {sorted(by_width)}, expected {sorted(widths)}")
    groups = [by_width[w] for w in widths]
    inp, out = ip.get_input_details()[0], ip.get_output_details()[0]
    feats, probs = [], []
    for k in range(len(x)):
        ip.set_tensor(inp["index"], x[k : k + 1])
        ip.invoke()
        row = []
        for d in groups:
            s, z = d["quantization"]
            row.append((ip.get_tensor(d["index"]).astype(np.float32).reshape(-1) - z) * s)
        feats.append(np.concatenate(row))
        s, z = out["quantization"]
        probs.append((ip.get_tensor(out["index"]).astype(np.float32)[0] - z) * s)
    return np.array(feats), np.array(probs)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from edgevision._tf import import_tf

    tf, keras = import_tf()
    from edgevision.store.project import Project
    from edgevision.training.data import build_training_set, choose_folds, stratified_folds
    from edgevision.training.embeddings import load_batch
    from edgevision.training.head import L2_GRID, fit_linear_head, log_loss
    from edgevision.training.quantization import split_head
    from exporters import calibration_groups, select_calibration_images
    from exporters.tflite import DEFAULT_CALIBRATION_IMAGES, _concrete_function, _holder, int8_recipe

    home = Path(args.home)
    cache = Path(args.cache or f"{home}-int8head")
    cache.mkdir(parents=True, exist_ok=True)
    project = Project.open(PROJECT, home=home)
    iteration = project.iterations()[0]
    size = int(iteration.input_size)
    model = iteration.load_model()
    dense = model.get_layer("model_output")
    stored_kernel, stored_bias = (np.array(w) for w in dense.get_weights())
    feat_model = keras.Model(model.input, model.get_layer("features").output)
    feat_fn = tf.function(lambda a: feat_model(a, training=False), reduce_retracing=True)
    widths = [int(t.shape[-1]) for t in model.get_layer("features").input]
    calibration = select_calibration_images(calibration_groups(iteration), DEFAULT_CALIBRATION_IMAGES, "balanced", 0)

    def int8(kernel: np.ndarray, bias: np.ndarray) -> bytes:
        dense.set_weights([kernel, bias])
        try:
            split = split_head(model)
            c = tf.lite.TFLiteConverter.from_concrete_functions([_concrete_function(tf, split, size)], _holder(tf, split))
            int8_recipe(tf, c, calibration, size)  # the exporter's int8 recipe (min/max ranges)
            c.inference_input_type = tf.uint8
            c.inference_output_type = tf.uint8
            return c.convert()
        finally:
            dense.set_weights([stored_kernel, stored_bias])

    def cached(name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        return fm.npy_cached(cache, name, compute, log)

    def embed(x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(feat_fn(x[s : s + 32].astype(np.float32)), np.float32)
                               for s in range(0, len(x), 32)])

    ts = build_training_set(project)
    paths = [r.path for r in ts.records]
    n_train = len(paths)
    x_train = np.concatenate([load_batch(paths[s : s + 32], size) for s in range(0, n_train, 32)])  # as quick training
    x_train_u8 = np.clip(np.round(x_train), 0, 255).astype(np.uint8)  # as the uint8 int8 model takes them
    mirror = lambda a: np.ascontiguousarray(a[:, :, ::-1])  # noqa: E731
    x_test, y = fm.kept_test_set(home, iteration.labels, size, args.test)
    n = len(y)

    f_train = cached("float-train", lambda: embed(x_train))
    f_train_h = cached("float-train-mirror", lambda: embed(mirror(x_train)))
    f_test = cached(f"float-test{n}", lambda: embed(x_test))
    q0 = bytes(cached("int8-stored-head", lambda: np.frombuffer(int8(stored_kernel, stored_bias), np.uint8)))
    q_train = cached("int8-train", lambda: int8_features(q0, x_train_u8, widths)[0])
    q_train_h = cached("int8-train-mirror", lambda: int8_features(q0, mirror(x_train_u8), widths)[0])

    def test_int8() -> np.ndarray:
        feats, probs = int8_features(q0, x_test, widths)
        np.save(cache / f"int8-test{n}-probs.npy", probs)
        return feats

    q_test = cached(f"int8-test{n}", test_int8)
    stored_probs = np.load(cache / f"int8-test{n}-probs.npy")
    float_pred = (f_test @ stored_kernel + stored_bias).argmax(1)
    proxy = (q_test @ stored_kernel + stored_bias).argmax(1)
    err = lambda q, f: float(np.linalg.norm(q - f) / np.linalg.norm(f))  # noqa: E731
    log(f"stored head: float top-1 {np.mean(float_pred == y):.4f}, int8 file agreement "
        f"{np.mean(stored_probs.argmax(1) == float_pred):.4f}, proxy agreement {np.mean(proxy == float_pred):.4f}; "
        f"int8 feature error (relative L2) train {err(q_train, f_train):.3f} test {err(q_test, f_test):.3f}")

    views = {
        "clean": [f_train],
        "clean+q": [f_train, q_train],
        "clean+q+qh": [f_train, q_train, q_train_h],
        "clean+h+q+qh": [f_train, f_train_h, q_train, q_train_h],
        "clean+q+antid": [f_train, q_train, 2 * f_train - q_train],
    }
    multilabel = not ts.multiclass
    k_folds = choose_folds(ts.targets, None)
    fold_of = np.zeros(n_train, dtype=int)
    for f, idx in enumerate(stratified_folds(ts.strata(), k_folds, 0)):
        fold_of[idx] = f

    def fit(stack: np.ndarray, l2: float | None) -> tuple[Any, float]:
        def rows(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return stack[:, mask].reshape(-1, stack.shape[-1]), np.tile(ts.targets[mask], (len(stack), 1))

        if l2 is None:  # quick training's choice: lowest out-of-fold log loss on the clean features
            best = None
            for candidate in L2_GRID:
                oof = np.zeros_like(ts.targets)
                for f in range(k_folds):
                    head = fit_linear_head(*rows(fold_of != f), multilabel=multilabel, l2=candidate)
                    oof[fold_of == f] = head.predict(f_train[fold_of == f])
                loss = log_loss(oof, ts.targets, multilabel)
                if best is None or loss < best[0] - 1e-9:
                    best = (loss, candidate)
            l2 = best[1]
        return fit_linear_head(*rows(np.ones(n_train, bool)), multilabel=multilabel, l2=l2), l2

    rows: list[dict[str, Any]] = []
    for name in args.variants_list:
        for fixed in args.l2_list or [None]:
            t = time.perf_counter()
            head, l2 = fit(np.stack(views[name]), fixed)
            if name == "clean" and fixed is None:
                log(f"clean refit vs stored head: max |Δkernel| {np.max(np.abs(head.kernel - stored_kernel)):.1e}")
            pred = (f_test @ head.kernel + head.bias).argmax(1)
            proxy = (q_test @ head.kernel + head.bias).argmax(1)
            row: dict[str, Any] = {
                "variant": name, "l2": l2, "l2_chosen_by": "cross-validation" if fixed is None else "fixed",
                "float_top1": float(np.mean(pred == y)), "proxy_int8_top1": float(np.mean(proxy == y)),
                "proxy_agreement": float(np.mean(proxy == pred)), "fit_s": round(time.perf_counter() - t, 1),
            }
            if args.real:
                from int8_variants import _run_tflite

                probs = _run_tflite(int8(head.kernel, head.bias), x_test, args.threads)
                row["int8_top1"] = float(np.mean(probs.argmax(1) == y))
                row["agreement"] = float(np.mean(probs.argmax(1) == pred))
                row["drop"] = row["float_top1"] - row["int8_top1"]
            rows.append(row)
            log(json.dumps(row))
            if args.save:
                Path(args.save).write_text(json.dumps(rows, indent=1))
    project.close()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    head = ("variant", "l2", "float top-1", "proxy int8 top-1", "proxy agreement", "int8 top-1", "agreement", "drop pts")
    lines = [head] + [(r["variant"], f"{r['l2']:g}", f"{r['float_top1']:.4f}", f"{r['proxy_int8_top1']:.4f}",
                       pct(r["proxy_agreement"]), f"{r['int8_top1']:.4f}" if "int8_top1" in r else "-",
                       pct(r.get("agreement")), f"{100 * r['drop']:+.2f}" if "drop" in r else "-") for r in rows]
    return fm.text_table(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", required=True, help="the --home of a bench/quantization.py run (its project is reused)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--l2", default="", help="fixed weight decays to fit at (default: chosen by cross-validation)")
    p.add_argument("--real", action="store_true", help="also convert each head to a real int8 file and run it")
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", help="feature cache folder (default: HOME-int8head)")
    p.add_argument("--save", help="write the rows as JSON after each variant")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.variants_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(args.variants_list) - set(VARIANTS):
        p.error(f"--variants: choose from {', '.join(VARIANTS)}")
    try:
        args.l2_list = [float(v) for v in args.l2.split(",") if v.strip()]
    except ValueError:
        p.error(f"--l2: comma-separated numbers, got {args.l2!r}")
    if not (Path(args.home) / "projects" / PROJECT).is_dir():
        p.error(f"--home {args.home}: no {PROJECT} project; run bench/quantization.py --home {args.home} first")
    os.environ["EDGEVISION_HOME"] = args.home
    rows = run(args)
    print(json.dumps(rows, indent=1) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
