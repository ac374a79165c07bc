"""Quantization benchmark on Fashion-MNIST: post-training int8 (calibration size and selection, per-channel
weights), quantization-aware training and pruning — size, zipped size, test accuracy through the device
runtime, agreement with the float model.

What it does
------------
Builds the Fashion-MNIST benchmark iteration of ``bench/fashion_mnist.py`` (the same images: ``--shots``
per class drawn with ``--seed`` from the official training split, ``general-compact``, quick mode) in a
temporary ``EDGEVISION_HOME`` and trains it twice:

* ``edgevision train --qat``: the quick float model (bit-identical to a plain quick iteration) plus its
  quantization-aware copy;
* ``edgevision train --prune S``: the quick iteration on a backbone whose conv weights are pruned to
  sparsity S.

Then exports with ``exporters.export_iteration`` (each one verified; a failed verification is still
measured, from its ``.failed`` folder): float32, dynamic, int8 post-training (``qat=false``) for every
calibration size in ``--calibration`` x selection in ``--methods``, int8 with per-tensor weights
(``per_channel=false``), int8 from the QAT model, and the pruned iteration's float32 and int8. Every
export then predicts the fixed, class-balanced ``--test`` images of the official test split (seed 0,
as in fashion_mnist.py) through ``runtimes.load`` (the TensorFlow-free device runtime). Columns:

* size of ``model.tflite``, and as % of the (unpruned) float32 file; its zip (deflate) size and %;
* top-1 accuracy on the test images; top-1 agreement with the float32 export of the same iteration
  (which matches the trained model to 1e-4) and the accuracy drop from it, in points;
* the export's own verification status and its agreement on the iteration's images.

How to run
----------
    .venv/bin/python bench/quantization.py                          # the full table
    .venv/bin/python bench/quantization.py --shots 10 --test 300 --calibration 25 --methods balanced  # a quick check
    .venv/bin/python bench/quantization.py --home /tmp/qbench --json  # keep (and later reuse) the project

Progress goes to stderr, the table (or ``--json``) to stdout. With ``--home`` the project is kept and a
later run with the same ``--home`` reuses its iterations instead of training again.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_mnist as fm  # noqa: E402  (the benchmark's data selection, reused as is)

PROJECT = "fmnist-quant"
TARGETS = "int8 targets: top-1 agreement with the float model >= 99 %, accuracy drop <= 1 point, file <= 30 % of float32"


def log(msg: str) -> None:
    print(f"[quantization] {msg}", file=sys.stderr, flush=True)


def _zipped(path: Path) -> int:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(path, path.name)
    return len(buf.getvalue())


def _test_predictions(folder: Path, images: np.ndarray, threads: int) -> np.ndarray:
    import runtimes

    with runtimes.load(folder, threads=threads) as predictor:
        return np.concatenate([predictor.probabilities(list(images[s : s + 200])) for s in range(0, len(images), 200)])


def _iterations(project: Any, args: argparse.Namespace) -> tuple[Any, Any | None, Any | None]:
    """(the --qat iteration, the --prune iteration or None, the --int8-ready iteration or None), trained now or
    reused from --home."""
    have = project.iterations()
    plain = lambda it: not it.info.get("pruning") and not it.info.get("int8_ready")  # noqa: E731
    qat = next((it for it in reversed(have) if it.info.get("qat") or (args.no_qat and plain(it))), None)
    ready = next((it for it in reversed(have) if it.info.get("int8_ready")), None)
    if not args.no_int8_ready and ready is None:
        log("training quick --int8-ready ...")
        t = time.perf_counter()
        ready = project.train("quick", seed=args.seed, int8_ready=True)
        log(f"  {time.perf_counter() - t:.0f} s; {json.dumps(ready.info.get('int8_ready'))}")
    elif ready is not None:
        log(f"reusing {ready}")
    pruned = next((it for it in reversed(have) if (it.info.get("pruning") or {}).get("target_sparsity") == args.prune), None)
    if qat is None:
        log(f"training quick{'' if args.no_qat else ' --qat'} ...")
        t = time.perf_counter()
        qat = project.train("quick", seed=args.seed, qat=not args.no_qat)
        log(f"  {time.perf_counter() - t:.0f} s; {json.dumps(qat.info.get('qat'))}")
    else:
        log(f"reusing {qat}")
    if args.prune and pruned is None:
        log(f"training quick --prune {args.prune} ...")
        t = time.perf_counter()
        pruned = project.train("quick", seed=args.seed, prune=args.prune)
        log(f"  {time.perf_counter() - t:.0f} s; {json.dumps(pruned.info.get('pruning'))}")
    elif pruned is not None:
        log(f"reusing {pruned}")
    return qat, pruned, (None if args.no_int8_ready else ready)


def _plan(args: argparse.Namespace, qat_it: Any, pruned_it: Any | None, ready_it: Any | None) -> list[tuple[str, Any, str, dict]]:
    rows: list[tuple[str, Any, str, dict]] = [("float32", qat_it, "float32", {}), ("dynamic", qat_it, "dynamic", {})]
    if ready_it is not None:
        rows += [("int8-ready float32", ready_it, "float32", {}), ("int8-ready int8", ready_it, "int8", {}),
                 ("int8-ready int8 minmax", ready_it, "int8", {"ranges": "minmax"}),
                 ("int8-ready int8 no-bc", ready_it, "int8", {"bias_correction": "false"})]
    rows.append(("int8 PTQ minmax", qat_it, "int8", {"qat": "false", "ranges": "minmax"}))
    rows.append(("int8 PTQ no-bc", qat_it, "int8", {"qat": "false", "bias_correction": "false"}))
    for n in args.calibration_list:
        for method in args.methods_list:
            rows.append((f"int8 PTQ {method} {n}", qat_it, "int8",
                         {"qat": "false", "calibration_images": n, "calibration": method}))
    rows.append(("int8 PTQ per-tensor", qat_it, "int8", {"qat": "false", "per_channel": "false"}))
    if not args.no_qat:
        rows.append(("int8 QAT", qat_it, "int8", {"qat": "true"}))
    if pruned_it is not None:
        rows += [(f"pruned {args.prune:g} float32", pruned_it, "float32", {}),
                 (f"pruned {args.prune:g} int8", pruned_it, "int8", {})]
    return rows


def run(args: argparse.Namespace, home: Path, data: Path) -> dict[str, Any]:
    from edgevision.errors import VerificationError
    from edgevision.store.project import Project
    from edgevision.errors import ProjectNotFoundError

    test = np.load(data / "test.npz")
    x, y = test["images"], test["labels"]
    try:
        project = Project.open(PROJECT, home=home)
    except ProjectNotFoundError:
        project = Project.create(PROJECT, "multiclass", args.domain, home=home)
        report = project.import_folder(data / f"images/train-{args.shots}")
        log(f"imported {len(report.added)} images ({len(report.duplicates)} duplicates, {len(report.skipped)} skipped)")
    qat_it, pruned_it, ready_it = _iterations(project, args)
    classes = {name.lower(): c for c, name in enumerate(fm.CLASSES)}
    results: list[dict[str, Any]] = []
    float_preds: dict[int, np.ndarray] = {}
    float_bytes: dict[int, tuple[int, int]] = {}
    for label, it, flavor, options in _plan(args, qat_it, pruned_it, ready_it):
        out = home / "exports" / label.replace(" ", "-")
        row: dict[str, Any] = {"export": label, "iteration": it.number, "flavor": flavor, "options": options}
        t = time.perf_counter()
        try:
            result = it.export("tflite", flavor=flavor, out=out, options=options)
            folder, verification = result.path, result.verification
        except VerificationError as exc:
            folder = out.with_name(out.name + ".failed")
            from runtimes.manifest import Manifest

            verification = Manifest.load(folder).verification
            row["error"] = str(exc)[:200]
        row["export_s"] = round(time.perf_counter() - t, 1)
        model = folder / "model.tflite"
        row["bytes"], row["zip_bytes"] = model.stat().st_size, _zipped(model)
        t = time.perf_counter()
        probs = _test_predictions(folder, x, args.threads)
        row["test_s"] = round(time.perf_counter() - t, 1)
        col = np.array([classes[lab.lower()] for lab in it.labels])
        pred = col[probs.argmax(axis=1)]
        row["test_accuracy"] = float(np.mean(pred == y))
        if flavor == "float32":
            float_preds[it.number], float_bytes[it.number] = pred, (row["bytes"], row["zip_bytes"])
        ref = float_preds.get(it.number)
        if ref is not None:
            row["agreement"] = float(np.mean(pred == ref))
            row["accuracy_drop"] = float(np.mean(ref == y)) - row["test_accuracy"]
        base_bytes, base_zip = float_bytes[qat_it.number]
        row["pct_of_float32"], row["zip_pct_of_float32"] = row["bytes"] / base_bytes, row["zip_bytes"] / base_zip
        d = verification.details
        row["verification"] = {"status": verification.status,
                               "agreement": d.get("top1_agreement_held_out", d.get("top1_agreement")),
                               "accuracy_drop": d.get("accuracy_drop"), "weights": d.get("weights"),
                               "calibration": d.get("calibration"), "qat": d.get("qat"), "ranges": d.get("ranges")}
        results.append(row)
        log(f"  {label}: {row['bytes'] / 1e6:.2f} MB, test top-1 {row['test_accuracy']:.4f}"
            + (f", agreement {row['agreement']:.4f}" if "agreement" in row else "")
            + f" ({verification.status}; export {row['export_s']} s, test {row['test_s']} s)")
    info = {"qat": qat_it.info.get("qat"), "int8_ready": ready_it.info.get("int8_ready") if ready_it else None,
            "int8_ready_cv_accuracy": ready_it.metrics.get("accuracy") if ready_it else None, "pruning": pruned_it.info.get("pruning") if pruned_it else None,
            "cv_accuracy": qat_it.metrics.get("accuracy"),
            "pruned_cv_accuracy": pruned_it.metrics.get("accuracy") if pruned_it else None}
    if pruned_it is not None and qat_it.number in float_preds and pruned_it.number in float_preds:
        info["pruned_vs_unpruned_float_agreement"] = float(np.mean(float_preds[pruned_it.number] == float_preds[qat_it.number]))
    project.close()
    return {"rows": results, "info": info}


def table(report: dict[str, Any], test_n: int) -> str:
    head = ("export", "size MB", "% fp32", "zip MB", "zip %", f"top-1@{test_n}", "agree", "drop pts", "verify (agree)")
    lines = [head]
    for r in report["rows"]:
        v = r["verification"]
        lines.append((
            r["export"], f"{r['bytes'] / 1e6:.2f}", f"{100 * r['pct_of_float32']:.1f}", f"{r['zip_bytes'] / 1e6:.2f}",
            f"{100 * r['zip_pct_of_float32']:.1f}", f"{r['test_accuracy']:.4f}",
            "-" if "agreement" not in r else f"{100 * r['agreement']:.2f}%",
            "-" if "accuracy_drop" not in r else f"{100 * r['accuracy_drop']:+.2f}",
            f"{v['status']}" + ("" if v["agreement"] is None else f" ({100 * v['agreement']:.1f}%)"),
        ))
    return fm.text_table(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shots", type=int, default=50, help="training images per class (default 50)")
    p.add_argument("--test", type=int, default=2000, help="test images, class-balanced (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="training image selection and training seed (default 0)")
    p.add_argument("--domain", default="general-compact")
    p.add_argument("--calibration", default="25,100,300", help="int8 calibration sizes (default 25,100,300)")
    p.add_argument("--methods", default="balanced,random", help="calibration selections (default balanced,random)")
    p.add_argument("--prune", type=float, default=0.5, help="pruning sparsity; 0 skips pruning (default 0.5)")
    p.add_argument("--no-qat", action="store_true", help="skip quantization-aware training")
    p.add_argument("--no-int8-ready", action="store_true", help="skip the --int8-ready iteration")
    p.add_argument("--threads", type=int, default=2, help="runtime threads for the test predictions (default 2)")
    p.add_argument("--home", help="EDGEVISION_HOME to keep the project and exports in (reused by a later run)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    p.add_argument("--save", metavar="FILE", help="also write the results as JSON to FILE")
    args = p.parse_args(argv)
    try:
        args.calibration_list = [int(v) for v in args.calibration.split(",") if v.strip()]
    except ValueError:
        p.error(f"--calibration: comma-separated integers, got {args.calibration!r}")
    args.methods_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    if set(args.methods_list) - {"balanced", "random", "first"}:
        p.error("--methods: choose from balanced, random, first")
    if not 0 <= args.prune < 1:
        p.error("--prune: a sparsity in [0, 1)")
    if args.shots < 5 or not 10 <= args.test <= 10000:
        p.error("--shots must be >= 5 and --test between 10 and 10000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fm.ensure_dataset()
    tmp = Path(tempfile.mkdtemp(prefix="edgevision-quant-"))
    home = Path(args.home) if args.home else tmp / "home"
    data = home.parent / f"{home.name}-data" if args.home else tmp / "data"
    started = time.perf_counter()
    try:
        if not (data / "test.npz").exists():
            train_x, train_y = fm.load_split("train")
            test_x, test_y = fm.load_split("test")
            picks = fm.select_train(train_y, train_x, args.shots, args.seed)
            idx = fm.select_test(test_y, args.test)
            (data / "images").mkdir(parents=True, exist_ok=True)
            fm.write_folder(data / "images", train_x, picks, args.shots)
            np.savez(data / "test.npz", images=test_x[idx], labels=test_y[idx])
        os.environ["EDGEVISION_HOME"] = str(home)
        report = run(args, home, data)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report |= {"shots": args.shots, "test_images": args.test, "seed": args.seed, "domain": args.domain,
               "seconds": round(time.perf_counter() - started), "cores": os.cpu_count()}
    if args.save:
        Path(args.save).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        print(table(report, args.test))
        print()
        print(TARGETS)
        info = report["info"]
        if info.get("qat"):
            q = info["qat"]
            print(f"QAT: {q['images']} images x {q['views']} views, {q['epochs']} epochs, {q['seconds']} s; fake-quantized "
                  f"agreement on the training images {q['train_agreement_before']:.4f} before fine-tuning -> "
                  f"{q['train_agreement_after']:.4f} after")
        if info.get("pruning"):
            pr = info["pruning"]
            print(f"pruning: target {pr['target_sparsity']:g}, zero weights {pr['sparsity']:.1%} of the pruned conv "
                  f"kernels, {pr['sparsity_all_weights']:.1%} of all; {pr['seconds']} s; cross-validated accuracy "
                  f"{info['cv_accuracy']:.4f} unpruned -> {info['pruned_cv_accuracy']:.4f} pruned; pruned vs unpruned "
                  f"float top-1 agreement on the test images {info.get('pruned_vs_unpruned_float_agreement', float('nan')):.4f}")
        print(f"({args.shots}/class, seed {args.seed}, {args.domain}, quick; {args.test} test images; "
              f"{report['seconds']} s in all on {report['cores']} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
