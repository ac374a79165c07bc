"""Float models whose weights already sit on TFLite's int8 grid (issue 6): does int8 then agree with float?

What it does
------------
Reuses the project that ``bench/quantization.py --home DIR`` built (``DIR/projects/fmnist-quant``, test images in
``DIR-data/test.npz``); its first iteration is the benchmark's quick float model. Full-integer int8 changes a
float model in two ways: every conv / dense weight is rounded to its per-channel int8 grid, and every activation
is rounded to its calibrated int8 range. Earlier experiments (``int8_variants.py``) found the weight rounding
alone worth about 3 points of top-1 agreement (16-bit activations, int8 weights: 97.1 %). That part need not be
an error at all: if the *float* model's backbone already uses weights on the grid (after BatchNorm folding,
exactly what the converter quantizes), the converter keeps them bit for bit, and the int8 model differs from the
float one only by its activation rounding.

Variants (``--variants``; see ``bench/README.md`` for the table):

- ``stored``: the stored iteration as it is (the reference row: the plain int8 export);
- ``grid``: the backbone's weights snapped to the int8 grid
  (:func:`edgevision.training.quantization.snap_to_int8_grid`), the quick head re-fitted on its features exactly as
  quick training fits it (weight decay by the same cross-validation), and then snapped too;
- ``grid-backbone``: the same, head not snapped;
- ``grid+V+V...``: the head fitted on more views of the training images too (same tags; a fold never trains on
  its own images' views): ``h`` mirrors, ``q`` / ``qh`` the int8 model's features of the images / mirrors (from
  the ``grid`` model converted once), ``s``/``t`` shifted +-6 px and ``qs``/``qt`` their int8 features, ``s3``/``t3``
  +-3 px, ``u``/``v`` mirrored shifts, ``n``/``nh`` noise of sigma 2 grey levels (``qn``/``qnh`` int8), ``q1``/``qh1``,
  ``q2``/``qh2`` int8 features from calibration seeds 1 and 2, ``gK_S`` K synthetic views ``f + S * (random mix of
  the observed int8 errors)``;
- ``eq+...``: each residual stream's channels equalized first (:func:`equalize_residual_streams`);
- ``r+...``: each ReLU6 tensor's channels equalized first (:func:`equalize_relu6`, at most ``--relu6-cap``).

For each: float top-1 of that float model on the 2,000 test images, the int8 file of the exporter's own recipe
(:func:`split_head`, ``--calibration`` ``balanced`` images, seed 0, per-channel weights, uint8 io, activation
ranges by ``--ranges``) run through ``ai_edge_litert``, its top-1, its top-1 agreement with *its own* float model
and the accuracy drop, and the file size as % of the stored float32 file. Also checked: the converter's weight
scales equal the grid's (``scales_match_grid`` counts weight tensors; channels whose weights are ~0 get a wider
scale from the converter, to fit their bias, so such tensors count as unmatched). Float logits and int8
probabilities are saved per variant in the cache folder for further analysis.

How to run
----------
    .venv/bin/python bench/quantization.py --home /tmp/qbench/home --no-qat --prune 0 --calibration 100 --methods balanced
    .venv/bin/python bench/int8_grid_weights.py --home /tmp/qbench/home
    .venv/bin/python bench/int8_grid_weights.py --home /tmp/qbench/home --cache /tmp/qbench/home-int8grid-mse \
        --ranges mse --variants grid,grid+h+q+qh
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
VARIANTS = ("stored", "grid", "grid-backbone", "grid+q", "grid+h+q+qh", "grid+h+q+qh+n+qn", "grid+h+q+qh+n+qn+nh+qnh",
            "eq+grid", "eq+grid+h+q+qh", "grid+h+q+qh+s+qs+t+qt",
            "grid+h+q+qh+s3+qs3+t3+qt3", "grid+h+q+qh+s+qs+t+qt+u+qu+v+qv",
            "grid+h+q+qh+g4_1", "grid+h+q+qh+g4_2", "grid+h+q+qh+g8_1.5",
            "grid+h+q+qh+q1+qh1+q2+qh2", "r+grid", "r+grid+h+q+qh")


def log(msg: str) -> None:
    print(f"[int8_grid_weights] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from edgevision._tf import import_tf

    tf, keras = import_tf()
    from int8_aware_head import int8_features
    from int8_variants import _run_tflite

    from edgevision.store.project import Project
    from edgevision.training import _quick
    from edgevision.training.data import build_training_set
    from edgevision.training.embeddings import load_batch
    from edgevision.training.quantization import snap_head_to_int8_grid, snap_to_int8_grid, split_head
    from exporters import calibration_groups, select_calibration_images
    from exporters.tflite import _concrete_function, _holder, int8_recipe
    from runtimes.preprocess import preprocess

    home = Path(args.home)
    cache = Path(args.cache or f"{home}-int8grid")
    cache.mkdir(parents=True, exist_ok=True)
    project = Project.open(PROJECT, home=home)
    iteration = project.iterations()[0]
    size = int(iteration.input_size)
    stored = iteration.load_model()
    calibration = select_calibration_images(calibration_groups(iteration), args.calibration, "balanced", 0)
    float32_size = None

    def int8(model: Any, seed: int = 0) -> bytes:
        calibration = select_calibration_images(calibration_groups(iteration), args.calibration, "balanced", seed)
        split = split_head(model)
        c = tf.lite.TFLiteConverter.from_concrete_functions([_concrete_function(tf, split, size)], _holder(tf, split))
        int8_recipe(tf, c, calibration, size)  # the exporter's int8 recipe (min/max ranges)
        if args.ranges == "mse2":
            from exporters.tflite import int8_calibrated

            return int8_calibrated(tf, c, calibration, size, "uint8", bias_correction=args.bias_correction)[0]
        if args.ranges == "mse":
            from int8_variants import _mse_ranges
            from tensorflow.lite.python import convert, util

            c.experimental_mlir_quantizer = True
            c._experimental_calibrate_only = True  # noqa: SLF001
            images = [preprocess(p, (size, size))[None] for p in calibration]
            deny = [o for o in args.denylist.split(",") if o]
            out = convert.mlir_quantize(_mse_ranges(c.convert(), images), denylisted_ops=deny or None)
            return out if deny else util.modify_model_io_type(out, tf.uint8, tf.uint8)
        c.inference_input_type = tf.uint8
        c.inference_output_type = tf.uint8
        return c.convert()

    def cached(name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        return fm.npy_cached(cache, name, compute, log)

    def embed(model: Any, x: np.ndarray) -> np.ndarray:
        feat = keras.Model(model.input, model.get_layer("features").output)
        fn = tf.function(lambda a: feat(a, training=False), reduce_retracing=True)
        return np.concatenate([np.asarray(fn(x[s : s + 32].astype(np.float32)), np.float32)
                               for s in range(0, len(x), 32)])

    ts = build_training_set(project)
    paths = [r.path for r in ts.records]
    n_train = len(paths)
    x_train = np.concatenate([load_batch(paths[s : s + 32], size) for s in range(0, n_train, 32)])
    x_test, y = fm.kept_test_set(home, iteration.labels, size, args.test)
    n = len(y)
    feature_input = keras.Model(stored.input, stored.get_layer("features").output)  # _quick assembles its head on it

    def quick_head(features: np.ndarray, extra: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
        """Quick training's own head fit (``edgevision.training._quick``: weight decay by k-fold CV on out-of-fold
        clean features) on the clean features plus ``extra`` views: (kernel, bias, weight decay)."""
        result = _quick(ts, features, feature_input, seed=0, folds=None, progress=None, views=extra)
        kernel, bias = result["model"].get_layer("model_output").get_weights()
        return kernel, bias, result["hyperparameters"]["l2"]

    rows: list[dict[str, Any]] = []
    for name in args.variants_list:
        t = time.perf_counter()
        row: dict[str, Any] = {"variant": name}
        if name == "stored":
            model = stored
            f_test = cached(f"stored-test{n}", lambda: embed(stored, x_test))
            kernel, bias = (np.array(w) for w in stored.get_layer("model_output").get_weights())
        else:
            model = keras.models.clone_model(stored)
            model.set_weights(stored.get_weights())
            prefix, spec = "grid", name
            if name.startswith("eq+"):
                row["equalized"] = equalize_residual_streams(model, x_train[::5])
                prefix, spec = "eqgrid", name[3:]
            elif name.startswith("r+"):
                row["equalized"] = equalize_relu6(model, x_train[::5], args.relu6_cap)
                prefix, spec = f"r{args.relu6_cap:g}grid", name[2:]
            report = snap_to_int8_grid(model)
            row["snapped_layers"] = report["layers"]
            row["backbone_weight_change"] = report["relative_change"]
            f_train = cached(f"{prefix}-train", lambda: embed(model, x_train))
            f_test = cached(f"{prefix}-test{n}", lambda: embed(model, x_test))
            extra = []
            if "+" in spec:
                widths = [int(t.shape[-1]) for t in model.get_layer("features").input]
                first = cache / f"{prefix}.tflite"
                if not first.exists():
                    snap_head_to_int8_grid(model)
                    first.write_bytes(int8(model))
                q0 = first.read_bytes()
                other = {}
                for seed in (1, 2):
                    path = cache / f"{prefix}-seed{seed}.tflite"
                    if not path.exists():
                        snap_head_to_int8_grid(model)
                        path.write_bytes(int8(model, seed))
                    other[seed] = path.read_bytes()
                x_u8 = np.clip(np.round(x_train), 0, 255).astype(np.uint8)
                mirror = lambda a: np.ascontiguousarray(a[:, :, ::-1])  # noqa: E731
                def shift(a: np.ndarray, d: int) -> np.ndarray:  # d pixels right and down (left/up if < 0), black fill
                    out = np.zeros_like(a)
                    src = slice(0, a.shape[1] - d) if d > 0 else slice(-d, None)
                    dst = slice(d, None) if d > 0 else slice(0, a.shape[1] + d)
                    out[:, dst, dst] = a[:, src, src]
                    return out

                noisy = lambda a, seed: np.clip(np.round(a + np.random.default_rng(seed).normal(0, 2, a.shape)), 0, 255)  # noqa: E731
                parts = {"q": lambda: int8_features(q0, x_u8, widths)[0],
                         "h": lambda: embed(model, mirror(x_train)),
                         "qh": lambda: int8_features(q0, mirror(x_u8), widths)[0],
                         "n": lambda: embed(model, noisy(x_train, 1)),
                         "qn": lambda: int8_features(q0, noisy(x_train, 1).astype(np.uint8), widths)[0],
                         "nh": lambda: embed(model, mirror(noisy(x_train, 2))),
                         "s": lambda: embed(model, shift(x_train, 6)),
                         "qs": lambda: int8_features(q0, shift(x_u8, 6), widths)[0],
                         "t": lambda: embed(model, shift(x_train, -6)),
                         "qt": lambda: int8_features(q0, shift(x_u8, -6), widths)[0],
                         "s3": lambda: embed(model, shift(x_train, 3)),
                         "qs3": lambda: int8_features(q0, shift(x_u8, 3), widths)[0],
                         "t3": lambda: embed(model, shift(x_train, -3)),
                         "qt3": lambda: int8_features(q0, shift(x_u8, -3), widths)[0],
                         "u": lambda: embed(model, mirror(shift(x_train, 6))),
                         "qu": lambda: int8_features(q0, mirror(shift(x_u8, 6)), widths)[0],
                         "v": lambda: embed(model, mirror(shift(x_train, -6))),
                         "qv": lambda: int8_features(q0, mirror(shift(x_u8, -6)), widths)[0],
                         "q1": lambda: int8_features(other[1], x_u8, widths)[0],
                         "qh1": lambda: int8_features(other[1], mirror(x_u8), widths)[0],
                         "q2": lambda: int8_features(other[2], x_u8, widths)[0],
                         "qh2": lambda: int8_features(other[2], mirror(x_u8), widths)[0],
                         "qnh": lambda: int8_features(q0, mirror(noisy(x_train, 2)).astype(np.uint8), widths)[0]}
                tokens = spec.split("+")[1:]
                extra = [cached(f"{prefix}-train-{k}", parts[k]) for k in tokens if not k.startswith("g")]
                for k in (k for k in tokens if k.startswith("g")):  # gK_S: K synthetic int8-noise views, scale S
                    count, scale = k[1:].split("_")
                    q_, qh_ = cached(f"{prefix}-train-q", parts["q"]), cached(f"{prefix}-train-qh", parts["qh"])
                    errors = np.concatenate([q_ - f_train, qh_ - cached(f"{prefix}-train-h", parts["h"])])
                    rng = np.random.default_rng(0)
                    for _ in range(int(count)):
                        mix = rng.normal(size=(n_train, len(errors))) / np.sqrt(len(errors))
                        extra.append((f_train + float(scale) * mix @ errors).astype(np.float32))
            head_kernel, head_bias, row["l2"] = quick_head(f_train, extra)
            dense = model.get_layer("model_output")
            dense.set_weights([head_kernel, head_bias])
            if spec != "grid-backbone":
                snap_head_to_int8_grid(model)
            kernel, bias = (np.array(w) for w in dense.get_weights())
        logits = f_test @ kernel + bias
        pred = logits.argmax(1)
        check = np.asarray(model(x_test[:8].astype(np.float32), training=False))
        row["keras_vs_features_max_diff"] = float(np.max(np.abs(check - _softmax(logits[:8]))))
        row["float_top1"] = float(np.mean(pred == y))
        blob = int8(model)
        (cache / f"{name}-final.tflite").write_bytes(blob)
        if float32_size is None:
            float32_size = _float32_size(tf, stored, size)
        row["int8_mb"] = round(len(blob) / 1e6, 3)
        row["int8_pct_of_float32"] = round(100 * len(blob) / float32_size, 2)
        row["scales_match_grid"] = _scales_match(blob, model) if name != "stored" else None
        probs = _run_tflite(blob, x_test, args.threads)
        np.savez(cache / f"{name}-predictions.npz", float_logits=logits, int8_probs=probs, labels=y)
        row["int8_top1"] = float(np.mean(probs.argmax(1) == y))
        row["agreement"] = float(np.mean(probs.argmax(1) == pred))
        row["drop"] = row["float_top1"] - row["int8_top1"]
        row["seconds"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        log(json.dumps(row))
        if args.save:
            Path(args.save).write_text(json.dumps(rows, indent=1))
    project.close()
    return rows


#: Channels of a residual stream are scaled up by at most this factor by :func:`equalize_residual_streams`.
EQUALIZE_MAX_SCALE = 8.0


def _residual_streams(model: Any) -> list[tuple[list[int], list[str]]]:
    """Each residual stream of an inverted-residual backbone: (its blocks, the layers that read it).

    A stream is a run of blocks joined by residual adds (``block{i}_add``); the blocks' projections
    (``block{i}_project_bn``) write it, and it is read by the expand convs of the blocks after the first,
    and by the first layer of whatever follows (the next block's expand or depthwise conv, or ``top_conv``).
    """
    names = {layer.name for layer in model.layers}
    blocks = sorted(int(n[5:-len("_project_bn")]) for n in names if n.startswith("block") and n.endswith("_project_bn"))
    groups: list[list[int]] = []
    for i in blocks:
        if groups and f"block{i}_add" in names:
            groups[-1].append(i)
        else:
            groups.append([i])

    def entry(i: int) -> str | None:  # the first layer of block i (or the top conv after the last block)
        for candidate in (f"block{i}_expand_conv", f"block{i}_dw_conv", "top_conv"):
            if candidate in names and (candidate == "top_conv") == (i > blocks[-1]):
                return candidate
        return None

    streams = []
    for group in groups:
        readers = [entry(i) for i in group[1:]] + [entry(group[-1] + 1)]
        streams.append((group, [r for r in readers if r is not None]))
    return streams


def equalize_residual_streams(model: Any, images: np.ndarray, *, batch: int = 32) -> dict[str, Any]:
    """Rescale each residual stream's channels (in place) so that they span similar ranges, without
    changing what the float model computes.

    Int8 gives a tensor one scale for all its channels. In an inverted-residual network the linear
    residual streams carry channels whose ranges differ several-fold, so the quieter channels get only
    a fraction of the 256 levels. Channel ``c`` of a stream is multiplied by ``s_c`` where it is written
    (every projection BatchNorm of the stream: gamma and beta) and divided by ``s_c`` where it is read
    (the input channel ``c`` of every conv reading it), so the float function is unchanged up to
    float rounding, while every channel now reaches about the stream's largest range.
    ``s_c = min(max_range / range_c, EQUALIZE_MAX_SCALE)``, ranges measured on ``images``.
    Pooled stream features change by the same per-channel factors: fit any head afterwards.

    Returns:
        ``{"streams": n, "median_scale": m}``.
    """
    from edgevision._tf import import_tf

    tf, keras = import_tf()
    streams = _residual_streams(model)
    names = {layer.name for layer in model.layers}
    tensors = {i: [f"block{i}_project_bn"] + ([f"block{i}_add"] if f"block{i}_add" in names else [])
               for group, _ in streams for i in group}
    order = [n for group, _ in streams for i in group for n in tensors[i]]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in order])
    fn = tf.function(lambda t: probe(t, training=False), reduce_retracing=True)
    peak = {n: None for n in order}
    for start in range(0, len(images), batch):
        outs = fn(np.asarray(images[start : start + batch], np.float32))
        for n, o in zip(order, outs):
            m = np.max(np.abs(np.asarray(o)), axis=(0, 1, 2))
            peak[n] = m if peak[n] is None else np.maximum(peak[n], m)
    scales = []
    for group, readers in streams:
        r = np.max([peak[n] for i in group for n in tensors[i]], axis=0).astype(np.float64)
        s = np.minimum(r.max() / np.maximum(r, 1e-12), EQUALIZE_MAX_SCALE)
        for i in group:
            bn = model.get_layer(f"block{i}_project_bn")
            weights = bn.get_weights()  # gamma, beta, moving mean, moving variance
            bn.set_weights([(weights[0] * s).astype(np.float32), (weights[1] * s).astype(np.float32)] + weights[2:])
        for name in readers:
            conv = model.get_layer(name)
            weights = conv.get_weights()
            weights[0] = (weights[0] / s.reshape(1, 1, -1, 1)).astype(np.float32)  # input channels: axis 2
            conv.set_weights(weights)
        scales.append(s)
    return {"streams": len(streams), "median_scale": float(np.median(np.concatenate(scales))) if scales else 1.0}


def equalize_relu6(model: Any, images: np.ndarray, cap: float, *, batch: int = 32) -> dict[str, Any]:
    """Scale up (in place) each ReLU6 channel that never reaches 6 on ``images``, and scale down the layer that
    reads it by the same factor, so that every channel of a ReLU6 tensor spans about 0..6 in int8.

    For channel ``c`` with largest pre-activation ``m_c`` < 6 on ``images``, ``s_c = min(6 / m_c, cap)``:
    ``ReLU6(s x) = s ReLU6(x)`` for every ``x <= m_c``, so on those images the float function is unchanged;
    BatchNorm gamma and beta of the producer are multiplied by ``s`` and the reader's input channel ``c``
    (depthwise conv after the stem / an expansion; projection conv after a depthwise conv) divided by it.
    Per-channel int8 weights absorb both. The top conv's ReLU6 (pooled into the head's features) is left alone.
    """
    from edgevision._tf import import_tf

    tf, keras = import_tf()
    names = {layer.name for layer in model.layers}
    blocks = sorted(int(n[5:-len("_project_bn")]) for n in names if n.startswith("block") and n.endswith("_project_bn"))
    pairs = [("stem_bn", "block0_dw_conv")]
    for i in blocks:
        if f"block{i}_expand_bn" in names:
            pairs.append((f"block{i}_expand_bn", f"block{i}_dw_conv"))
        pairs.append((f"block{i}_dw_bn", f"block{i}_project_conv"))
    probe = keras.Model(model.input, [model.get_layer(bn).output for bn, _ in pairs])
    fn = tf.function(lambda t: probe(t, training=False), reduce_retracing=True)
    peak: list[np.ndarray | None] = [None] * len(pairs)
    for start in range(0, len(images), batch):
        for k, o in enumerate(fn(np.asarray(images[start : start + batch], np.float32))):
            m = np.max(np.asarray(o), axis=(0, 1, 2))
            peak[k] = m if peak[k] is None else np.maximum(peak[k], m)
    scales = []
    for (bn_name, reader_name), m in zip(pairs, peak):
        s = np.where(m < 6.0, np.minimum(6.0 / np.maximum(m, 1e-6), cap), 1.0)
        bn = model.get_layer(bn_name)
        w = bn.get_weights()
        bn.set_weights([(w[0] * s).astype(np.float32), (w[1] * s).astype(np.float32)] + w[2:])
        reader = model.get_layer(reader_name)
        w = reader.get_weights()
        w[0] = (w[0] / s.reshape(1, 1, -1, 1)).astype(np.float32)
        reader.set_weights(w)
        scales.append(s)
    flat = np.concatenate(scales)
    return {"pairs": len(pairs), "median_scale": float(np.median(flat)), "scaled_channels": float(np.mean(flat > 1))}


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _float32_size(tf: Any, model: Any, size: int) -> int:
    from exporters.tflite import _concrete_function, _holder

    c = tf.lite.TFLiteConverter.from_concrete_functions([_concrete_function(tf, model, size)], _holder(tf, model))
    return len(c.convert())


def _scales_match(blob: bytes, model: Any) -> dict[str, int]:
    """How many of the file's per-channel weight scale vectors equal a snapped layer's grid steps (rel. 1e-5)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgevision.training.quantization import int8_grid_steps

    steps = [s for s in int8_grid_steps(model).values()]
    ip = Interpreter(model_content=blob)
    matched = unmatched = 0
    for op in ip._get_ops_details():  # noqa: SLF001
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        scales = np.asarray(ip._get_tensor_details(op["inputs"][1], 0)["quantization_parameters"]["scales"])  # noqa: SLF001
        hit = any(len(s) == len(scales) and np.allclose(s, scales, rtol=1e-5, atol=0) for s in steps)
        matched += hit
        unmatched += not hit
    return {"matched": matched, "unmatched": unmatched}


def table(rows: list[dict[str, Any]]) -> str:
    head = ("variant", "float top-1", "int8 top-1", "agreement", "drop pts", "int8 MB", "% of fp32")
    lines = [head] + [(r["variant"], f"{r['float_top1']:.4f}", f"{r['int8_top1']:.4f}", f"{100 * r['agreement']:.2f}%",
                       f"{100 * r['drop']:+.2f}", f"{r['int8_mb']:.2f}", f"{r['int8_pct_of_float32']:.1f}")
                      for r in rows]
    return fm.text_table(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", required=True, help="the --home of a bench/quantization.py run (its project is reused)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", help="feature cache folder (default: HOME-int8grid)")
    p.add_argument("--calibration", type=int, default=100, help="balanced calibration images (default 100)")
    p.add_argument("--ranges", choices=("minmax", "mse", "mse2"), default="minmax",
                   help="activation ranges: the converter's min/max, or each shrunk to least squared error")
    p.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="with --ranges mse2: quantize without the exporter's bias correction")
    p.add_argument("--relu6-cap", type=float, default=8.0, help="r+ variants: largest ReLU6 channel scale (default 8)")
    p.add_argument("--denylist", default="", help="diagnostic: TFLite ops left float (with --ranges mse)")
    p.add_argument("--save", help="write the rows as JSON after each variant")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.variants_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(args.variants_list) - set(VARIANTS):
        p.error(f"--variants: choose from {', '.join(VARIANTS)}")
    if not (Path(args.home) / "projects" / PROJECT).is_dir():
        p.error(f"--home {args.home}: no {PROJECT} project; run bench/quantization.py --home {args.home} first")
    os.environ["EDGEVISION_HOME"] = args.home
    rows = run(args)
    print(json.dumps(rows, indent=1) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
