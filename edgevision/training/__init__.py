"""Training a classifier iteration: quick (head on cached frozen features) or advanced (fine-tuning)."""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgevision.errors import UsageError
from edgevision.evaluation import classification_metrics, summarise_folds
from edgevision.training.data import (
    TrainingSet,
    build_training_set,
    choose_folds,
    stratified_folds,
)
from edgevision.training.head import L2_GRID, LinearHead, fit_linear_head, log_loss
from edgevision.training.head import STEPS as HEAD_STEPS

if TYPE_CHECKING:
    from edgevision.iteration import Iteration
    from edgevision.store.project import Project

log = logging.getLogger(__name__)

MODES = ("quick", "advanced")
MODEL_FILE = "model.h5"
LABELS_FILE = "labels.txt"
EVALUATION_FILE = "evaluation.npz"
DEFAULT_BUDGET_MINUTES = 10.0

Progress = Callable[[int, int, str], None]


def train(
    project: "Project",
    mode: str = "quick",
    *,
    seed: int = 0,
    budget: float | None = None,
    folds: int | None = None,
    progress: Progress | None = None,
    qat: bool = False,
    prune: float | None = None,
    int8_ready: bool = False,
    iteration_id: str | None = None,
) -> "Iteration":
    """Train a new iteration of a classification project and store it.

    Quick mode embeds every image once with the frozen pretrained backbone (cached by image hash),
    fits a linear head, picks its weight decay by stratified k-fold cross-validation and reports
    the out-of-fold figures (mean and std across folds). Advanced mode starts from the quick head
    and fine-tunes the top of the backbone with augmentation, a cosine learning-rate schedule,
    early stopping and a time budget; it reports figures on a stratified hold-out it never
    trained on, and keeps the quick head if fine-tuning did not beat it on validation.

    Args:
        project: a multiclass or multilabel project with enough tagged images.
        mode: ``quick`` or ``advanced``.
        seed: makes splits and training reproducible.
        budget: advanced mode's time budget in minutes (default 10).
        folds: cross-validation folds for quick mode (default 5, at most the rarest tag's count).
        progress: ``progress(done, total, what)`` callback.
        qat: also fine-tune a quantization-aware copy of the trained model (stored as
            ``model_qat.h5``, used by the TFLite int8 export); classifiers only. See
            :mod:`edgevision.training.quantization`.
        prune: zero this fraction (0 < s < 1) of the backbone's conv weights by magnitude pruning
            during a short fine-tune; the stored model is the pruned float model. Classifiers only.
        int8_ready: quick mode, classifiers: make the float model itself int8-friendly, so that its int8
            TFLite export agrees with it: the backbone's weights snapped onto TFLite's int8 grid (the
            converter then keeps them exactly) and the head fitted on the int8 model's features of the
            training images (and their mirrors) as well as the float ones, then snapped too. See
            :func:`edgevision.training.quantization.int8_views`.
        iteration_id: the new iteration's id (a UUID string; default a fresh one). The training API
            hands it out before training starts, so the finished iteration keeps it.

    Returns:
        The new :class:`~edgevision.iteration.Iteration`.

    Raises:
        UsageError: bad mode/budget/prune, or qat/prune on a detection project.
        NotEnoughDataError: too few images or tags.
        WeightsNotInstalledError: the domain's weights package is missing.
    """
    if mode not in MODES:
        raise UsageError(f"unknown training mode {mode!r}; choose one of {', '.join(MODES)}")
    if budget is not None and not budget > 0:
        raise UsageError(f"--budget must be a positive number of minutes, got {budget}")
    if budget is not None and mode != "advanced":
        raise UsageError("--budget applies to advanced training only; add --mode advanced")
    from edgevision.training import quantization

    quantization.check_request(project.type, qat=qat, prune=prune, int8_ready=int8_ready, mode=mode)
    iteration_id = _check_iteration_id(project, iteration_id)
    if project.type == "detection":
        return _train_detection(project, mode, seed=seed, budget=budget, progress=progress, iteration_id=iteration_id)
    ts = build_training_set(project)
    from edgevision._tf import import_tf
    from edgevision.domains import get_domain
    from edgevision.training.embeddings import FeatureExtractor

    tf, keras = import_tf()
    keras.utils.set_random_seed(seed)
    domain = get_domain(project.domain)
    started = time.monotonic()
    staging = project.staging_dir()
    extractor = FeatureExtractor(domain, project.path / "cache" / "embeddings.sqlite", int8_grid=int8_ready)
    try:
        features = extractor.embed(ts.records, progress=progress)
        if mode == "quick":
            backbone, pruning, views, int8_info = extractor.model, None, None, None
            if prune is not None:  # prune the backbone first, so the cross-validated head sees its features
                backbone, features, pruning = quantization.prune_backbone(
                    extractor, ts.records, features, domain, prune, seed=seed, progress=progress)
            if int8_ready:
                views, int8_info = quantization.int8_views(
                    extractor, ts.records, features, quantization.default_calibration(project), progress=progress)
            result = _quick(ts, features, backbone, seed=seed, folds=folds, progress=progress, views=views)
            if int8_ready:
                quantization.snap_head_to_int8_grid(result["model"])
                result["int8_ready"] = {**int8_info, "grid": extractor.grid}
        else:
            from edgevision.training.advanced import fine_tune

            result = fine_tune(
                ts, features, extractor.model, domain,
                seed=seed, budget_s=60.0 * (budget or DEFAULT_BUDGET_MINUTES), started=started, progress=progress,
            )
            pruning = None
            if prune is not None:
                pruning = quantization.prune_classifier(result, ts, domain, prune, seed=seed, progress=progress)
        if pruning is not None:
            result["pruning"] = pruning
        if qat:
            qat_model, result["qat"] = quantization.quantization_aware(
                result["model"], quantization.training_records(ts, result["evaluation"]), domain,
                seed=seed, multilabel=not ts.multiclass, progress=progress)
            quantization.save_qat_model(qat_model, staging)
        _write_iteration_files(staging, result.pop("model"), ts.labels, result.pop("evaluation"))
        info = _info(project, ts, domain.name, mode, seed, time.monotonic() - started, result, iteration_id)
        return project._commit_iteration(staging, info)
    except BaseException:
        project.discard_staging(staging)
        raise
    finally:
        extractor.close()


def _write_iteration_files(staging: Path, model: Any, labels: list[str], evaluation: dict[str, np.ndarray]) -> None:
    with warnings.catch_warnings():
        # HDF5 is called "legacy" by tf_keras, but it is the one file every converter reads.
        warnings.simplefilter("ignore", UserWarning)
        model.save(staging / MODEL_FILE, include_optimizer=False, save_format="h5")
    (staging / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    np.savez(staging / EVALUATION_FILE, **evaluation)


def _check_iteration_id(project: "Project", iteration_id: str | None) -> str:
    """``iteration_id`` as a canonical UUID string (a fresh one when None), unused in the project."""
    if iteration_id is None:
        return str(uuid.uuid4())
    try:
        canonical = str(uuid.UUID(str(iteration_id)))
    except ValueError:
        raise UsageError(f"iteration id {iteration_id!r} is not a UUID") from None
    if any(it.id.lower() == canonical for it in project.iterations()):
        raise UsageError(f"project {project.name!r} already has an iteration with id {canonical}")
    return canonical


def _train_detection(project: "Project", mode: str, *, seed: int, budget: float | None,
                     progress: Progress | None, iteration_id: str) -> "Iteration":
    """Detector training (see :mod:`edgevision.training.detection`), stored like a classifier iteration."""
    import tensorflow as tf

    from edgevision.training.detection import build_detection_set, train_detector

    build_detection_set(project)  # the minimum-data check, before TensorFlow is loaded
    started = time.monotonic()
    staging = project.staging_dir()
    try:
        result = train_detector(project, mode, seed=seed, budget_s=60.0 * (budget or DEFAULT_BUDGET_MINUTES),
                                started=started, progress=progress)
        labels = result.pop("labels")
        _write_iteration_files(staging, result.pop("model"), labels, result.pop("evaluation"))
        info = {
            "id": iteration_id,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "project": project.name,
            "type": project.type,
            "domain": project.domain,
            "mode": mode,
            "seed": seed,
            "duration_s": round(time.monotonic() - started, 2),
            "labels": labels,
            "model_file": MODEL_FILE,
            "labels_file": LABELS_FILE,
            "software": {"python": platform.python_version(), "tensorflow": tf.__version__},
            **result,
        }
        return project._commit_iteration(staging, info)
    except BaseException:
        project.discard_staging(staging)
        raise


def _info(project: "Project", ts: TrainingSet, domain: str, mode: str, seed: int, seconds: float, result: dict,
          iteration_id: str) -> dict:
    import tensorflow as tf

    per_tag = ts.targets.sum(axis=0).astype(int).tolist()
    return {
        "id": iteration_id,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "project": project.name,
        "type": project.type,
        "domain": domain,
        "mode": mode,
        "seed": seed,
        "duration_s": round(seconds, 2),
        "labels": ts.labels,
        "tag_ids": ts.tag_ids,
        "negative_class": ts.negative_class,
        "image_count": len(ts.records),
        "images_per_label": dict(zip(ts.labels, per_tag)),
        "negative_images": int((~ts.targets.astype(bool).any(axis=1)).sum()),
        "model_file": MODEL_FILE,
        "labels_file": LABELS_FILE,
        "software": {"python": platform.python_version(), "tensorflow": tf.__version__},
        **result,
    }


def assemble_classifier(backbone: Any, head: LinearHead, name: str = "classifier") -> Any:
    """Backbone (RGB 0..255 in, pooled features out) + the head as one Dense layer ``model_output``."""
    from edgevision._tf import import_tf

    _, keras = import_tf()
    activation = "sigmoid" if head.multilabel else "softmax"
    dense = keras.layers.Dense(head.kernel.shape[1], activation=activation, name="model_output")
    outputs = dense(backbone.output)
    dense.set_weights([head.kernel, head.bias])
    return keras.Model(backbone.input, outputs, name=name)


def _quick(
    ts: TrainingSet, features: np.ndarray, backbone: Any, *, seed: int, folds: int | None, progress: Progress | None,
    views: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Cross-validated linear head on ``features``; ``views``: more feature rows of the same images (same
    tags, e.g. mirrored or int8), used for fitting only: a fold never trains on any view of its own
    images, and every figure is computed on the plain features."""
    multilabel = not ts.multiclass
    stack = np.stack([features, *(views or [])])

    def fit(mask: np.ndarray, l2: float) -> LinearHead:
        rows = stack[:, mask].reshape(-1, stack.shape[-1])
        return fit_linear_head(rows, np.tile(ts.targets[mask], (len(stack), 1)), multilabel=multilabel, l2=l2)

    k = choose_folds(ts.targets, folds)
    fold_idx = stratified_folds(ts.strata(), k, seed)
    fold_of = np.zeros(len(ts.records), dtype=int)
    for f, idx in enumerate(fold_idx):
        fold_of[idx] = f
    best: tuple[float, float, np.ndarray] | None = None
    steps = len(L2_GRID) * k
    for gi, l2 in enumerate(L2_GRID):
        oof = np.zeros_like(ts.targets)
        for f in range(k):
            if progress:
                progress(gi * k + f, steps, f"cross-validating head (weight decay {l2:g}, fold {f + 1}/{k})")
            tr, te = fold_of != f, fold_of == f
            oof[te] = fit(tr, l2).predict(features[te])
        loss = log_loss(oof, ts.targets, multilabel)
        log.info("quick head l2=%g: out-of-fold log loss %.4f", l2, loss)
        if best is None or loss < best[0] - 1e-9:
            best = (loss, l2, oof)
    assert best is not None
    loss, l2, oof = best
    if progress:
        progress(steps, steps, f"cross-validated: weight decay {l2:g}")
    head = fit(np.ones(len(features), bool), l2)
    model = assemble_classifier(backbone, head)
    per_fold = [
        classification_metrics(oof[fold_of == f], ts.targets[fold_of == f], ts.labels,
                               multiclass=ts.multiclass, scored=ts.scored)
        for f in range(k)
    ]
    metrics = classification_metrics(oof, ts.targets, ts.labels, multiclass=ts.multiclass, scored=ts.scored)
    metrics.folds = summarise_folds(per_fold)
    metrics.method = f"{k}-fold cross-validation"
    return {
        "model": model,
        "hyperparameters": {"head": "linear", "l2": l2, "l2_grid": list(L2_GRID), "folds": k,
                            "steps": HEAD_STEPS, "class_weight": True},
        "evaluation_method": metrics.method,
        "metrics": metrics.to_dict(),
        "evaluation": {
            "probabilities": oof.astype(np.float32),
            "targets": ts.targets,
            "image_ids": np.array([r.id for r in ts.records]),
            "fold": fold_of,
            "labels": np.array(ts.labels),
        },
    }
