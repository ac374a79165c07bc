"""Checking an exported artefact against the trained model: figures, thresholds and the verdict.

The artefact runs through ``runtimes/`` (the engine and the shared preprocessing the device uses)
on held-out project images plus a few synthetic ones; the trained tf_keras model runs on the very
same preprocessed pixels. Thresholds (issue 4):

- ``float32``: max |Δprob| ≤ 1e-4 and no top-1 disagreement;
- ``float16``: max |Δprob| ≤ 1e-2 and no top-1 disagreement;
- quantized flavors (``dynamic``, ``int8``): top-1 agreement ≥ 98 % on the held-out images, accuracy
  drop ≤ 2 points, and the model file smaller than the float32 weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from runtimes.manifest import Verification

if TYPE_CHECKING:
    from exporters.base import Artifact, ExportContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerance:
    """What a flavor must meet. ``max_abs_diff`` None: not checked (quantized flavors)."""

    max_abs_diff: float | None
    min_top1_agreement: float
    max_accuracy_drop: float | None = None
    smaller_than_float32: bool = False


FLOAT32 = Tolerance(max_abs_diff=1e-4, min_top1_agreement=1.0)
FLOAT16 = Tolerance(max_abs_diff=1e-2, min_top1_agreement=1.0)
QUANTIZED = Tolerance(max_abs_diff=None, min_top1_agreement=0.98, max_accuracy_drop=0.02, smaller_than_float32=True)

#: Flavor name -> tolerance; flavors not listed here are checked as float32 (the strictest).
TOLERANCES = {"float32": FLOAT32, "float16": FLOAT16, "dynamic": QUANTIZED, "int8": QUANTIZED}


def tolerance_for(flavor: str) -> Tolerance:
    return TOLERANCES.get(flavor, FLOAT32)


def float32_bytes(model: Any) -> int:
    """Bytes of the model's weights stored as float32 (the size a quantized file must beat)."""
    return int(sum(int(np.prod(w.shape)) * 4 for w in model.weights))


def path_bytes(path: Path) -> int:
    """Size of a file, or of every file under a folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def accuracy(probs: np.ndarray, targets: np.ndarray, task: str) -> float:
    """Top-1 accuracy (multiclass) or per-tag accuracy at 0.5 (multilabel)."""
    if len(probs) == 0:
        return float("nan")
    if task == "multiclass":
        return float(np.mean(probs.argmax(axis=1) == targets.argmax(axis=1)))
    return float(np.mean((probs >= 0.5) == (targets >= 0.5)))


def compare(reference: np.ndarray, exported: np.ndarray, *, flavor: str, task: str,
            held_out: int, targets: np.ndarray | None = None, file_bytes: int | None = None,
            float32_reference_bytes: int | None = None) -> Verification:
    """Judge exported probabilities against the reference ones.

    Args:
        reference / exported: ``(N, C)`` probabilities of the trained model and of the artefact.
        flavor: picks the tolerance (:data:`TOLERANCES`).
        task: ``multiclass`` or ``multilabel``.
        held_out: the first ``held_out`` rows are project images (the rest synthetic); agreement and
            accuracy for quantized flavors are measured on those.
        targets: ``(held_out, C)`` 0/1 targets of the project images, for the accuracy drop.
        file_bytes / float32_reference_bytes: the artefact's size and the float32 weights' size.

    Returns:
        ``Verification`` with status ``ok`` or ``failed`` and the figures.
    """
    tol = tolerance_for(flavor)
    if reference.shape != exported.shape:
        return Verification("failed", f"output shape {list(exported.shape)} differs from the model's {list(reference.shape)}")
    diff = np.abs(reference.astype(np.float64) - exported.astype(np.float64))
    agree = reference.argmax(axis=1) == exported.argmax(axis=1)
    details: dict[str, Any] = {
        "flavor": flavor,
        "images": int(len(reference)),
        "held_out_images": int(held_out),
        "synthetic_images": int(len(reference) - held_out),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "top1_agreement": float(agree.mean()) if agree.size else 1.0,
    }
    problems: list[str] = []
    if not np.all(np.isfinite(exported)):
        problems.append("the artefact gives NaN or infinite probabilities")
    if tol.max_abs_diff is not None:
        details["max_abs_diff_allowed"] = tol.max_abs_diff
        if details["max_abs_diff"] > tol.max_abs_diff:
            problems.append(f"max |Δprob| {details['max_abs_diff']:.3g} > {tol.max_abs_diff:g}")
        disagreements = int((~agree).sum())
        if disagreements:
            problems.append(f"top-1 differs on {disagreements} of {len(agree)} images")
    else:
        held = agree[:held_out] if held_out else agree
        details["top1_agreement_held_out"] = float(held.mean()) if held.size else 1.0
        details["top1_agreement_required"] = tol.min_top1_agreement
        if details["top1_agreement_held_out"] < tol.min_top1_agreement:
            problems.append(f"top-1 agreement {details['top1_agreement_held_out']:.1%} on {held.size} held-out images "
                            f"< {tol.min_top1_agreement:.0%}")
        if targets is not None and held_out:
            ref_acc = accuracy(reference[:held_out], targets, task)
            exp_acc = accuracy(exported[:held_out], targets, task)
            details |= {"accuracy_model": ref_acc, "accuracy_export": exp_acc, "accuracy_drop": ref_acc - exp_acc}
            if tol.max_accuracy_drop is not None and ref_acc - exp_acc > tol.max_accuracy_drop + 1e-12:
                problems.append(f"accuracy drops {100 * (ref_acc - exp_acc):.1f} points "
                                f"({ref_acc:.1%} -> {exp_acc:.1%}) > {100 * tol.max_accuracy_drop:.0f}")
    if file_bytes is not None:
        details["file_bytes"] = int(file_bytes)
    if tol.smaller_than_float32 and file_bytes is not None and float32_reference_bytes:
        details["float32_weights_bytes"] = int(float32_reference_bytes)
        if file_bytes >= float32_reference_bytes:
            problems.append(f"the {flavor} file ({file_bytes} bytes) is not smaller than the float32 weights "
                            f"({float32_reference_bytes} bytes)")
    if problems:
        return Verification("failed", "; ".join(problems), details)
    return Verification("ok", "", details)


def run_artifact(path: Path, images: Sequence[Path], size: int, *, layout: str, output: str,
                 labels: Sequence[str]) -> np.ndarray:
    """Probabilities ``(N, C)`` of a model file run through ``runtimes/`` (engine + shared preprocessing)."""
    from runtimes.engines import open_engine
    from runtimes.preprocess import preprocess

    engine = open_engine(path, layout=layout, labels=list(labels))
    try:
        rows = []
        for image in images:
            result = engine.run(preprocess(image, (size, size))[None])
            rows.append(np.asarray(result[output] if output in result else next(iter(result.values())), np.float32).reshape(1, -1))
        return np.concatenate(rows) if rows else np.zeros((0, len(labels)), np.float32)
    finally:
        engine.close()


def compare_with_model(ctx: "ExportContext", artifact: "Artifact", flavor: str, *,
                       runner: Callable[[Path, Sequence[Path]], np.ndarray] | None = None) -> Verification:
    """Run the artefact on ``ctx.verification_images`` and compare with the trained model.

    Args:
        ctx: the export context (its ``verification_images`` start with the held-out project images,
            ``len(ctx.verification_targets)`` of them, then synthetic ones).
        artifact: what the exporter wrote into ``ctx.out_dir``.
        flavor: the exported flavor (picks the tolerance).
        runner: ``runner(model_path, images) -> probabilities``; default: :func:`run_artifact`
            (the device runtime). The SavedModel exporter passes a TensorFlow runner.

    Returns:
        ``unverified`` (with the reason) when the artefact cannot run here; otherwise ``ok`` or ``failed``.
    """
    path = ctx.out_dir / artifact.model_file
    if not artifact.runnable_here:
        return Verification("unverified", f"{artifact.platform} models cannot be run on this machine; "
                                          "checked structurally only", {"flavor": flavor})
    images = list(ctx.verification_images)
    targets = ctx.verification_targets
    held_out = len(targets) if targets is not None else len(images)
    if runner is None:
        def runner(p: Path, imgs: Sequence[Path]) -> np.ndarray:
            return run_artifact(p, imgs, ctx.input_size, layout=artifact.input.layout,
                                output=artifact.outputs[0].name, labels=ctx.labels)
    try:
        exported = runner(path, images)
    except Exception as exc:  # the engine's own error types; the export fails with the reason
        log.debug("verification run failed", exc_info=True)
        return Verification("failed", f"the runtime could not run {artifact.model_file}: {exc}", {"flavor": flavor})
    reference = np.asarray(ctx.reference_probabilities(), np.float32)
    return compare(reference, exported, flavor=flavor, task=ctx.task, held_out=held_out,
                   targets=None if targets is None else np.asarray(targets),
                   file_bytes=path_bytes(path), float32_reference_bytes=float32_bytes(ctx.model))
