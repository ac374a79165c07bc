"""Does a quick head fitted on perturbed copies of the training images too make the float model robust enough
for int8 (issue 6)? Refits the Fashion-MNIST benchmark's quick head on the features of K perturbed copies per
training image (plus the image itself), converts each resulting float model with the int8 export's own recipe and
measures float top-1, int8 top-1, float-vs-int8 agreement, the drop, and the float model's flip rate under
1 grey level of input noise.

What it does
------------
Reuses the project that ``bench/quantization.py --home DIR`` built (``DIR/projects/fmnist-quant``, test images in
``DIR-data/test.npz``); its first unpruned iteration is the benchmark's quick float model. Its backbone (the
``features`` layer's sub-model) embeds:

- the 500 training images as quick training does (``load_batch``: decoded, resized, unrounded) — read from the
  project's embedding cache when present;
- K perturbed copies per training image, from the same resized image rounded to 0..255: ``noise`` = Gaussian
  noise of σ 1 or 2 grey levels (alternating per copy), rounded and clipped; ``mixed`` = per copy one of
  noise σ∈U(1, 2), a JPEG re-encode (quality 75–95, PIL) or a brightness shift of ±1–3 grey levels;
  ``strong`` = Gaussian noise of σ 2 or 4 grey levels (alternating per copy);
- the test images clean and with N(0, 1 grey level) noise (the exact pattern ``int8_variants.py`` uses).

The head is fitted as quick training fits it (:func:`edgevision.training.head.fit_linear_head`, weight decay
picked from ``L2_GRID`` by the same stratified k-fold cross-validation of out-of-fold log loss, on folds of
*images*: a held-out image's copies never train its fold, and out-of-fold predictions are on the clean image).
K=0 must reproduce the stored head (checked). Float predictions are features @ head (checked against the Keras
model); the int8 file is the exporter's recipe (:func:`split_head`, 100 ``balanced`` calibration images,
seed 0, per-channel weights, uint8 io) over the iteration's Keras model with the new head, run through
``ai_edge_litert``. Features are cached in ``--cache`` (default ``DIR-robust``) so reruns skip the backbone.

How to run
----------
    .venv/bin/python bench/quantization.py --home /tmp/qbench/home        # once: trains and keeps the project
    .venv/bin/python bench/robust_head.py --home /tmp/qbench/home --variants 0,noise:2,noise:4,mixed:2,mixed:4
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fashion_mnist as fm  # noqa: E402  (bench/: the benchmark's data and tables)

PROJECT = "fmnist-quant"
MIXES = ("noise", "mixed", "strong")


def log(msg: str) -> None:
    print(f"[robust_head] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def perturb(image: np.ndarray, mix: str, copy: int, rng: np.random.Generator) -> np.ndarray:
    """One perturbed copy (float32 0..255, on the integer grid) of a resized float image."""
    base = np.clip(np.round(image), 0, 255)
    kind = "noise" if mix != "mixed" else ("noise", "jpeg", "brightness")[int(rng.integers(3))]
    if kind == "noise":
        sigma = {"noise": 1.0 + copy % 2, "strong": 2.0 + 2.0 * (copy % 2)}.get(mix) or float(rng.uniform(1.0, 2.0))
        out = base + rng.normal(0.0, sigma, base.shape)
    elif kind == "jpeg":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(base.astype(np.uint8)).save(buf, format="JPEG", quality=int(rng.integers(75, 96)))
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float64)
    else:
        out = base + float(rng.choice([-1, 1]) * rng.integers(1, 4))
    return np.clip(np.round(out), 0, 255).astype(np.float32)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from edgevision._tf import import_tf

    tf, keras = import_tf()
    from int8_variants import _run_tflite

    from edgevision.domains import get_domain
    from edgevision.store.project import Project
    from edgevision.training.data import build_training_set, choose_folds, stratified_folds
    from edgevision.training.embeddings import FEATURE_VERSION, EmbeddingCache, load_batch
    from edgevision.training.head import L2_GRID, fit_linear_head, log_loss
    from edgevision.training.quantization import split_head
    from exporters import calibration_groups, select_calibration_images
    from exporters.tflite import DEFAULT_CALIBRATION_IMAGES, _concrete_function, _holder, int8_recipe

    home = Path(args.home)
    cache_dir = Path(args.cache or f"{home}-robust")
    cache_dir.mkdir(parents=True, exist_ok=True)
    project = Project.open(PROJECT, home=home)
    iteration = next(it for it in project.iterations() if not it.info.get("pruning"))
    size = int(iteration.input_size)
    model = iteration.load_model()
    dense = model.get_layer("model_output")
    stored_kernel, stored_bias = (np.array(w) for w in dense.get_weights())
    feat_model = keras.Model(model.input, model.get_layer("features").output)
    feat_fn = tf.function(lambda a: feat_model(a, training=False), reduce_retracing=True)
    timings: dict[str, float] = {}

    def embed(batch_iter: Any, n: int, name: str) -> np.ndarray:
        path = cache_dir / f"{name}.npy"
        timing = cache_dir / f"{name}.seconds"
        if path.exists():
            if timing.exists():
                timings[name] = float(timing.read_text())
            return np.load(path)
        t = time.perf_counter()
        out = np.concatenate([np.asarray(feat_fn(b), np.float32) for b in batch_iter])
        timings[name] = time.perf_counter() - t
        timing.write_text(f"{timings[name]:.2f}")
        log(f"embedded {name}: {n} images in {timings[name]:.0f} s ({1000 * timings[name] / n:.0f} ms/image)")
        np.save(path, out)
        return out

    # training images
    ts = build_training_set(project)
    paths = [r.path for r in ts.records]
    n_train = len(paths)
    b = get_domain(project.domain).backbone
    cache = EmbeddingCache(project.path / "cache" / "embeddings.sqlite")
    got = cache.get(f"{b.name}@{b.input_size}/v{FEATURE_VERSION}/plain", [r.sha256 for r in ts.records])
    cache.close()
    if len(got) == n_train:
        clean = np.stack([got[r.sha256] for r in ts.records])
        log(f"training features: {n_train} from the project's cache")
    else:
        clean = embed((load_batch(paths[s : s + 32], size) for s in range(0, n_train, 32)), n_train, "train-plain")
    resized = [load_batch([p], size)[0] for p in paths]

    # test images
    x, y = fm.kept_test_set(home, iteration.labels, size, args.test)
    n = len(y)
    f_test = embed((x[s : s + 50].astype(np.float32) for s in range(0, n, 50)), n, f"test{n}-plain")
    f_noise = embed((np.clip(np.round(x[s : s + 50] + np.random.default_rng(0).normal(0, 1.0, x[s : s + 50].shape)),
                             0, 255).astype(np.float32) for s in range(0, n, 50)), n, f"test{n}-noise1")

    def copies(mix: str, k: int) -> np.ndarray:
        """(k, N, D) features of k perturbed copies per training image (copy j is the same for every k)."""
        out = []
        for j in range(k):
            def batches(j: int = j) -> Any:
                rng = np.random.default_rng(1000 * (MIXES.index(mix) + 1) + j)
                for s in range(0, n_train, 32):
                    yield np.stack([perturb(im, mix, j, rng) for im in resized[s : s + 32]])
            out.append(embed(batches(), n_train, f"train-{mix}-copy{j}"))
        return np.stack(out)

    # the quick head's cross-validation, on folds of images
    multilabel = not ts.multiclass
    k_folds = choose_folds(ts.targets, None)
    fold_of = np.zeros(n_train, dtype=int)
    for f, idx in enumerate(stratified_folds(ts.strata(), k_folds, 0)):
        fold_of[idx] = f

    def fit(extra: np.ndarray) -> tuple[Any, float, float]:
        t = time.perf_counter()
        views = np.concatenate([clean[None], extra]) if len(extra) else clean[None]  # (V, N, D)
        v = views.shape[0]

        def stack(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return views[:, mask].reshape(-1, views.shape[-1]), np.tile(ts.targets[mask], (v, 1))

        best = None
        for l2 in L2_GRID:
            oof = np.zeros_like(ts.targets)
            for f in range(k_folds):
                head = fit_linear_head(*stack(fold_of != f), multilabel=multilabel, l2=l2)
                oof[fold_of == f] = head.predict(clean[fold_of == f])
            loss = log_loss(oof, ts.targets, multilabel)
            if best is None or loss < best[0] - 1e-9:
                best = (loss, l2)
        head = fit_linear_head(*stack(np.ones(n_train, bool)), multilabel=multilabel, l2=best[1])
        return head, best[1], time.perf_counter() - t

    paths_cal = select_calibration_images(calibration_groups(iteration), DEFAULT_CALIBRATION_IMAGES, "balanced", 0)

    def int8(kernel: np.ndarray, bias: np.ndarray) -> bytes:
        dense.set_weights([kernel, bias])
        split = split_head(model)
        c = tf.lite.TFLiteConverter.from_concrete_functions([_concrete_function(tf, split, size)], _holder(tf, split))
        int8_recipe(tf, c, paths_cal, size)  # the exporter's int8 recipe (min/max ranges)
        c.inference_input_type = tf.uint8
        c.inference_output_type = tf.uint8
        return c.convert()

    rows: list[dict[str, Any]] = []
    checked = False
    for spec in args.variants_list:
        mix, _, k = spec.partition(":")
        k = int(k or 0) if mix != "0" else 0
        t0 = time.perf_counter()
        extra = copies(mix, k) if k else np.zeros((0,) + clean.shape, np.float32)
        t_feat = sum(timings.get(f"train-{mix}-copy{j}", 0.0) for j in range(k))
        head, l2, t_fit = fit(extra)
        if k == 0:
            diff = float(np.max(np.abs(head.kernel - stored_kernel)))
            log(f"K=0 refit vs stored head: max |Δkernel| {diff:.2e}, l2 {l2:g} "
                f"(stored {iteration.info.get('hyperparameters', {}).get('l2')})")
        logits = f_test @ head.kernel + head.bias
        pred = logits.argmax(1)
        pred_noise = (f_noise @ head.kernel + head.bias).argmax(1)
        if not checked:  # numpy head on cached features == the Keras model
            dense.set_weights([head.kernel, head.bias])
            ref = np.asarray(model(x[:50].astype(np.float32), training=False))
            log(f"Keras vs numpy float top-1 on 50 images: {np.mean(ref.argmax(1) == pred[:50]):.3f}, "
                f"max |Δp| {np.max(np.abs(ref - head.predict(f_test[:50]))):.1e}")
            checked = True
        t = time.perf_counter()
        q = int8(head.kernel, head.bias)
        t_conv = time.perf_counter() - t
        probs = _run_tflite(q, x, args.threads)
        qpred = probs.argmax(1)
        row = {
            "variant": "baseline (clean only)" if k == 0 else f"{mix} ×{k}", "mix": mix if k else "-", "k": k, "l2": l2,
            "float_top1": float(np.mean(pred == y)), "int8_top1": float(np.mean(qpred == y)),
            "agreement": float(np.mean(qpred == pred)), "drop": float(np.mean(pred == y) - np.mean(qpred == y)),
            "float_noise_flips": float(np.mean(pred_noise != pred)),
            "float_noise_top1": float(np.mean(pred_noise == y)), "bytes": len(q),
            "extra_feature_s": round(t_feat, 1), "fit_s": round(t_fit, 1), "convert_s": round(t_conv, 1),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        log(f"{row['variant']}: float {row['float_top1']:.4f} int8 {row['int8_top1']:.4f} agree "
            f"{row['agreement']:.4f} drop {100 * row['drop']:+.2f} flips {row['float_noise_flips']:.4f} "
            f"({row['seconds']} s)")
        if args.save:
            Path(args.save).write_text(json.dumps(rows, indent=1))
    dense.set_weights([stored_kernel, stored_bias])
    project.close()
    return rows


def table(rows: list[dict[str, Any]], n: int) -> str:
    head = ("variant", "l2", f"float top-1@{n}", "int8 top-1", "agree", "drop pts", "float flips σ=1",
            "extra feat s", "fit s")
    lines = [head] + [(r["variant"], f"{r['l2']:g}", f"{r['float_top1']:.4f}", f"{r['int8_top1']:.4f}",
                       f"{100 * r['agreement']:.2f}%", f"{100 * r['drop']:+.2f}", f"{100 * r['float_noise_flips']:.2f}%",
                       f"{r['extra_feature_s']}", f"{r['fit_s']}") for r in rows]
    return fm.text_table(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", required=True, help="the --home of a bench/quantization.py run (its project is reused)")
    p.add_argument("--variants", default="0,noise:2,noise:4,mixed:2,mixed:4",
                   help="comma-separated: 0 (baseline) or MIX:K with MIX in noise, mixed, strong")
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", help="feature cache folder (default: HOME-robust)")
    p.add_argument("--save", help="write the rows as JSON after each variant")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.variants_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in args.variants_list:
        if v != "0" and (v.partition(":")[0] not in MIXES or not v.partition(":")[2].isdigit()):
            p.error(f"--variants: bad {v!r}")
    if not (Path(args.home) / "projects" / PROJECT).is_dir():
        p.error(f"--home {args.home}: no {PROJECT} project; run bench/quantization.py --home {args.home} first")
    os.environ["EDGEVISION_HOME"] = args.home
    rows = run(args)
    print(json.dumps(rows, indent=1) if args.json else table(rows, min(args.test, 2000)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
