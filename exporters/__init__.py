"""Export formats for edgevision iterations: one module per format, a registry, and the export driver.

    from exporters import export_iteration
    result = export_iteration(iteration, "tflite", flavor="int8")   # ExportResult(path, manifest, verification)

Every export is verified against the trained model before it is put in place (:mod:`exporters.verify`);
a failed check leaves the artefact in ``<out>.failed/`` and raises
:class:`~edgevision.errors.VerificationError` (CLI exit code 3).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from exporters.base import RAW_FLAVOR, Artifact, ExportContext, ExportError, Exporter, Options, OptionsError, VerificationError
from exporters.registry import get_exporter, list_exporters, register
from runtimes.manifest import MANIFEST_FILE, Manifest, Verification

__all__ = [
    "Artifact",
    "ExportContext",
    "ExportError",
    "ExportResult",
    "Exporter",
    "Options",
    "OptionsError",
    "VerificationError",
    "build_context",
    "export_iteration",
    "get_exporter",
    "held_out_images",
    "held_out_truth",
    "list_exporters",
    "register",
]

log = logging.getLogger(__name__)

#: At most this many project images are used to calibrate an int8 model / to verify an export.
MAX_CALIBRATION_IMAGES = 100
MAX_VERIFICATION_IMAGES = 300
SYNTHETIC_IMAGES = 4


@dataclass
class ExportResult:
    """A finished export.

    Attributes:
        path: the export folder (model, labels.txt, manifest.json, cvexport.manifest, metadata_properties.json).
        manifest: its parsed ``manifest.json``.
        verification: the check against the trained model (also in the manifest).
        zip_path: ``<path>.zip`` when asked for.
        seconds: wall time of conversion + verification.
    """

    path: Path
    manifest: Manifest
    verification: Verification
    zip_path: Path | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "zip": str(self.zip_path) if self.zip_path else None,
                "seconds": round(self.seconds, 2), "manifest": self.manifest.to_dict()}


# --------------------------------------------------------------------------- context
def _held_out_rows(iteration: Any, limit: int) -> tuple[Any, list[Path], list[int]]:
    """The stored evaluation, and the paths and row numbers of its images still in the project.

    At most ``limit``, evenly spread rather than the first N (evaluation order groups by fold/tag).
    """
    path = iteration.path / "evaluation.npz"
    if not path.exists():
        return None, [], []
    stored = np.load(path)
    images, rows = [], []
    for i, image_id in enumerate(stored["image_ids"]):
        try:
            record = iteration.project.get_image(str(image_id))
        except Exception:  # removed from the project since training: just not used
            continue
        if Path(record.path).exists():
            images.append(Path(record.path))
            rows.append(i)
    if len(images) > limit:
        pick = np.linspace(0, len(images) - 1, limit).round().astype(int)
        images, rows = [images[k] for k in pick], [rows[k] for k in pick]
    return stored, images, rows


def _held_out_images(iteration: Any, limit: int) -> tuple[list[Path], np.ndarray | None]:
    """A classifier's evaluation images (out-of-fold or hold-out) and their targets."""
    stored, images, rows = _held_out_rows(iteration, limit)
    return images, (np.asarray(stored["targets"])[rows].astype(np.float32) if rows else None)


def _held_out_truth(iteration: Any, limit: int) -> tuple[list[Path], list[tuple[np.ndarray, np.ndarray]]]:
    """A detector's held-out images and their true ``(boxes, classes)``."""
    stored, images, rows = _held_out_rows(iteration, limit)
    truth = [(stored["gt_boxes"][stored["gt_image"] == k], stored["gt_classes"][stored["gt_image"] == k]) for k in rows]
    return images, truth


def held_out_images(iteration: Any, limit: int = MAX_VERIFICATION_IMAGES) -> tuple[list[Path], np.ndarray | None]:
    """A classifier iteration's evaluation images still in the project, and their ``(N, C)`` 0/1 targets.

    The images its stored evaluation scored (quick mode: every image, out-of-fold; advanced: the
    hold-out), at most ``limit``, evenly spread. Targets are None when there is no stored evaluation.
    """
    return _held_out_images(iteration, limit)


def held_out_truth(iteration: Any, limit: int = MAX_VERIFICATION_IMAGES) -> tuple[list[Path], list[tuple[np.ndarray, np.ndarray]]]:
    """A detector iteration's held-out images still in the project, and their true ``(boxes, classes)``."""
    return _held_out_truth(iteration, limit)


#: How ``calibration=`` picks the int8 calibration images (TFLite ``--option calibration=...``).
CALIBRATION_METHODS = ("balanced", "random", "first")


def _hold_out_ids(iteration: Any) -> set[str]:
    """Ids of the images the iteration held out of training (its figures' images), if it has a hold-out.

    A cross-validated (quick) classifier has none: its stored evaluation is out-of-fold over every
    training image and its final head was fitted on all of them (``evaluation.npz`` has ``fold``).
    Advanced classifiers and every detector hold out a stratified 20 % they never trained on.
    """
    path = iteration.path / "evaluation.npz"
    if not path.exists():
        return set()
    stored = np.load(path)
    if "fold" in stored.files:
        return set()
    return {str(i) for i in stored["image_ids"]}


def calibration_groups(iteration: Any) -> dict[str, list[Path]]:
    """The images int8 calibration may use, grouped by tag, each group in content-hash order.

    Classifiers: the project's tagged images grouped by first tag; detectors: every image grouped by
    its first region's tag (alphabetically; background images under ``""``). Images the iteration
    held out for its figures are left out, so calibration never sees the images the export's
    accuracy is checked on (cross-validated quick iterations hold none out: see :func:`_hold_out_ids`).
    """
    held_out = _hold_out_ids(iteration)
    by_tag: dict[str, list[Path]] = {}
    if iteration.info.get("type") == "detection":
        regions = iteration.project.image_regions()
        for record in sorted(iteration.project.images(), key=lambda r: r.sha256):
            if record.id in held_out:
                continue
            rs = regions.get(record.id) or []
            by_tag.setdefault(sorted(r.tag for r in rs)[0] if rs else "", []).append(Path(record.path))
    else:
        by_tag = classifier_calibration_groups(iteration.project.training_images(), held_out)
    return by_tag


def classifier_calibration_groups(records: Any, held_out: set[str] = frozenset()) -> dict[str, list[Path]]:
    """A classifier's calibration candidates: ``records`` (the project's training images, in content-hash
    order) not in ``held_out``, grouped by first tag. Quantization-aware quick training calibrates on
    the very images the iteration's int8 export will use by default."""
    by_tag: dict[str, list[Path]] = {}
    for record in records:
        if record.id not in held_out:
            by_tag.setdefault(record.tags[0], []).append(Path(record.path))
    return by_tag


def select_calibration_images(groups: Mapping[str, list[Path]], limit: int, method: str = "balanced",
                              seed: int = 0) -> list[Path]:
    """Pick at most ``limit`` calibration images from ``groups`` (tag -> images).

    Args:
        groups: candidate images per tag, as :func:`calibration_groups` returns them.
        limit: how many to pick (all when fewer are available).
        method: ``balanced`` (default): round-robin across the tags (sorted by name), each tag's
            images in a seeded random order, so every tag gets ``limit / tags`` images (give or take
            one) and a rare tag is used up before the others repeat; ``random``: a seeded random
            sample of all candidates, tags in their natural proportions; ``first``: the first
            ``limit`` in content-hash order (training order), a naive baseline that can miss tags.
        seed: makes ``balanced`` and ``random`` reproducible (the same seed gives the same images).

    Returns:
        The chosen image paths, in calibration order.

    Raises:
        ValueError: an unknown method.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(CALIBRATION_METHODS)}")
    tags = sorted(groups)
    if method == "first":
        return sorted((p for t in tags for p in groups[t]), key=lambda p: p.name)[:limit]
    rng = np.random.default_rng(seed)
    if method == "random":
        flat = [p for t in tags for p in groups[t]]
        return [flat[i] for i in rng.permutation(len(flat))[:limit]]
    queues = [[groups[t][i] for i in rng.permutation(len(groups[t]))] for t in tags]
    out: list[Path] = []
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


def _calibration_images(iteration: Any, limit: int, method: str = "balanced", seed: int = 0) -> list[Path]:
    """Calibration images of ``iteration`` (hold-out excluded), picked by ``method``; at most ``limit``."""
    return select_calibration_images(calibration_groups(iteration), limit, method, seed)


def _synthetic_images(folder: Path, size: int, count: int = SYNTHETIC_IMAGES) -> list[Path]:
    """Solid, gradient and noise images: inputs far from the training set still must agree."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    arrays = [
        np.full((size, size, 3), 127, np.uint8),
        np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 64.0)], -1).astype(np.uint8),
        rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        np.zeros((size, size, 3), np.uint8),
    ]
    paths = []
    for i, arr in enumerate(arrays[:count]):
        p = folder / f"synthetic-{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def build_context(iteration: Any, out_dir: Path, scratch: Path) -> ExportContext:
    """The :class:`ExportContext` for ``iteration`` writing into ``out_dir`` (synthetic images go to ``scratch``)."""
    task = iteration.info["type"]
    truth = None
    if task == "detection":
        images, truth = _held_out_truth(iteration, MAX_VERIFICATION_IMAGES)
        targets = None
    else:
        images, targets = _held_out_images(iteration, MAX_VERIFICATION_IMAGES)
    size = int(iteration.input_size)
    return ExportContext(
        iteration=iteration,
        model=iteration.load_model(),
        labels=list(iteration.labels),
        tag_ids=list(iteration.info.get("tag_ids") or []),
        task=task,
        input_size=size,
        calibration_images=_calibration_images(iteration, MAX_CALIBRATION_IMAGES),
        verification_images=images + _synthetic_images(scratch, size),
        verification_targets=targets if targets is not None else np.zeros((0, len(iteration.labels)), np.float32),
        out_dir=out_dir,
        domain=str(iteration.info.get("domain", "")),
        project_name=iteration.project.name,
        iteration_name=str(iteration.number),
        detection=dict(iteration.nms) if task == "detection" else None,
        verification_truth=truth,
    )


# --------------------------------------------------------------------------- driver
def _replaceable(path: Path) -> bool:
    """An existing folder we may replace: empty, or a previous export (has manifest.json)."""
    return path.is_dir() and (not any(path.iterdir()) or (path / MANIFEST_FILE).exists())


def _staging_pattern(dest: Path) -> str:
    """Base names of ``dest``'s staging folders (``.<name>.staging-<hex>``; see :mod:`edgevision.store.staging`)."""
    return re.escape(f".{dest.name}.staging-") + "[0-9a-f]{8}"


def _move_into_place(staging: Path, dest: Path, zip_file: Path | None = None) -> None:
    """Put the complete export folder ``staging`` at ``dest`` (and ``zip_file`` at ``<dest>.zip``).

    Crash-safe order: a zip of the previous export is removed first (a zip beside a folder always
    holds that folder); the previous folder is renamed aside (into the staging's group, so a crash
    leaves it for the next export's sweep) rather than deleted in place, which a crash would leave
    half-deleted with its manifest.json still there. So at every moment ``dest`` is absent or one
    complete export, and the zip absent or complete.
    """
    from edgevision.store import staging as stagings

    stagings.fsync_tree(staging)
    if zip_file is not None:
        stagings.fsync_file(zip_file)
    zip_dest = dest.with_name(dest.name + ".zip")
    zip_dest.unlink(missing_ok=True)
    aside = None
    if dest.exists():
        aside = staging.with_name(staging.name + ".old")
        os.rename(dest, aside)
    os.replace(staging, dest)
    if zip_file is not None:
        os.replace(zip_file, zip_dest)
    stagings.fsync_dir(dest.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def export_iteration(iteration: Any, format: str, *, flavor: str | None = None, out: str | os.PathLike | None = None,
                     options: Mapping[str, Any] | None = None, zip: bool = False) -> ExportResult:
    """Export a trained iteration to ``format``, verify it, and put it in place.

    Args:
        iteration: an :class:`edgevision.iteration.Iteration`.
        format: a registered exporter name (``edgevision export --list``).
        flavor: one of the exporter's flavors (default: its ``default_flavor``).
        out: the export folder (default ``<project>/exports/<iteration>-<format>-<flavor>/``); an
            existing folder is replaced only when it is empty or a previous export.
        options: exporter options (strings from the CLI are converted to the option's type).
        zip: also write ``<out>.zip``.

    Returns:
        :class:`ExportResult` with the folder, manifest and verification.

    Raises:
        OptionsError: unknown format/flavor/option, a task the format does not support, or an ``out``
            folder that holds something else (exit code 2).
        ExportError: the conversion failed.
        VerificationError: the artefact does not match the trained model (exit code 3); the
            artefact is kept in ``<out>.failed/`` for inspection.
    """
    started = time.monotonic()
    cls = get_exporter(format)
    task = iteration.info["type"]
    if task not in cls.tasks:
        raise OptionsError(f"format {cls.name!r} does not export {task} models (it takes: {', '.join(cls.tasks)})")
    flavor = flavor or cls.default_flavor
    if flavor not in cls.flavors:
        from exporters.base import suggest

        raise OptionsError(f"format {cls.name!r} has no flavor {flavor!r}{suggest(flavor, cls.flavors)} "
                           f"(flavors: {', '.join(cls.flavors)})")
    if flavor == RAW_FLAVOR and task != "detection":
        raise OptionsError(f"flavor {RAW_FLAVOR!r} (no NMS inside) is for object detectors; this is a {task} model")
    parsed = cls.Options.parse(options or {})
    dest = Path(out) if out is not None else iteration.project.path / "exports" / f"{iteration.number}-{cls.name}-{flavor}"
    dest = dest.absolute()
    if dest.exists() and not _replaceable(dest):
        raise OptionsError(f"{dest} exists and is not an edgevision export; pick another --out or empty it")
    from edgevision.store import staging as stagings

    # Written in a staging folder beside ``dest`` and renamed into place when complete; the staging
    # folders of exports that crashed are removed here (those of live exports are locked: kept).
    stagings.sweep(dest.parent, _staging_pattern(dest))
    staging = stagings.create(dest.parent, f".{dest.name}.staging-")
    exporter = cls()
    zip_path = None
    try:
        with tempfile.TemporaryDirectory(prefix="edgevision-export-") as scratch:
            ctx = build_context(iteration, staging, Path(scratch))
            log.info("exporting %s iteration %s to %s/%s", ctx.project_name, ctx.iteration_name, cls.name, flavor)
            try:
                artifact = exporter.export(ctx, flavor, parsed)
            except (ExportError, VerificationError):
                raise
            except Exception as exc:
                raise ExportError(f"{cls.name} ({flavor}) conversion of {ctx.project_name} iteration "
                                  f"{ctx.iteration_name} failed: {exc}") from exc
            from exporters import metadata

            written = [artifact.model_file, *artifact.extra_files]
            written.append(metadata.write_labels(staging, ctx.labels))
            written.append(metadata.write_metadata_properties(staging, metadata.metadata_properties(ctx, flavor)))
            written.append(metadata.write_cvexport_manifest(staging, ctx, artifact, exporter))
            verification = exporter.verify(ctx, artifact, flavor)
            manifest = metadata.build_manifest(staging, ctx, artifact, exporter, parsed.to_dict(), verification, written)
            manifest.save(staging / MANIFEST_FILE)
        if verification.status == "failed":
            failed = dest.with_name(dest.name + ".failed")
            _move_into_place(staging, failed)
            figures = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in verification.details.items())
            raise VerificationError(
                f"{cls.name} ({flavor}) export of {ctx.project_name} iteration {ctx.iteration_name} does not match "
                f"the trained model: {verification.reason} [{figures}]; the artefact is kept in {failed} for inspection")
        zip_file = None
        if zip:
            from exporters.metadata import zip_folder

            zip_file = zip_folder(staging, staging.with_name(staging.name + ".zip"))
        _move_into_place(staging, dest, zip_file)
        zip_path = dest.with_name(dest.name + ".zip") if zip else None
    finally:
        stagings.discard(staging)  # what is left of it (nothing once it is in place), and its lock
    manifest.source = str(dest / MANIFEST_FILE)
    return ExportResult(dest, manifest, verification, zip_path, time.monotonic() - started)
