"""The exporter contract, parametrised over the registry: every exporter × every task it claims.

A new exporter (built-in or a plugin's entry point) is covered without touching this file. Tiny
models (32 px input, one conv layer) and generated solid-colour images keep it fast.
"""

from __future__ import annotations

import json
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporters import export_iteration, list_exporters
from exporters.metadata import CVEXPORT_FILE, IMAGE_PROPERTIES, LABELS_FILE, METADATA_PROPS_FILE
from runtimes.engines import ENGINE_SUFFIXES
from runtimes.manifest import Manifest

TINY_SIZE = 32
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
PER_TAG = 4


@dataclass
class _Record:
    id: str
    path: Path
    tags: tuple[str, ...]
    sha256: str = ""


@dataclass
class TinyProject:
    """The slice of :class:`edgevision.store.project.Project` the export driver reads."""

    name: str
    path: Path
    type: str
    records: list[_Record] = field(default_factory=list)
    domain: str = "general-compact"

    def get_image(self, image_id: str) -> _Record:
        return next(r for r in self.records if r.id == image_id)

    def training_images(self) -> list[_Record]:
        return list(self.records)

    def images(self, *_: Any, **__: Any) -> list[_Record]:
        return list(self.records)


class TinyIteration:
    """An iteration with a tiny trained tf_keras model, duck-typed like :class:`edgevision.iteration.Iteration`."""

    number = 1
    mode = "quick"

    def __init__(self, project: TinyProject, model: Any, labels: list[str], task: str) -> None:
        self.project, self._model, self.labels, self.id = project, model, labels, str(uuid.uuid4())
        self.created = "2026-11-21T10:00:00+00:00"
        self.info = {"type": task, "domain": "general-compact", "labels": labels, "mode": "quick",
                     "tag_ids": [f"tag-{i}" for i in range(len(labels))], "model_file": "model.h5",
                     "project": project.name, "id": self.id, "negative_class": False}
        self.input_size = TINY_SIZE
        self.path = project.path / "iterations" / "1"

    def load_model(self) -> Any:
        return self._model

    def predict_probabilities(self, images: list[Any]) -> np.ndarray:
        from runtimes.preprocess import preprocess

        batch = np.stack([preprocess(im, (TINY_SIZE, TINY_SIZE)) for im in images])
        return np.asarray(self._model(batch, training=False), np.float32)

    def summary(self) -> dict[str, Any]:
        return dict(self.info)


def make_tiny_iteration(root: Path, task: str) -> TinyIteration:
    """Generate images, train a one-conv model on them for a few steps, record an evaluation."""
    from PIL import Image

    from edgevision._tf import import_tf

    tf, keras = import_tf()
    keras.utils.set_random_seed(0)
    labels = list(COLOURS)
    project = TinyProject(f"tiny-{task}", root / f"tiny-{task}", task)
    rng = np.random.default_rng(0)
    images, targets = [], []
    for k, (tag, rgb) in enumerate(COLOURS.items()):
        for j in range(PER_TAG):
            arr = np.clip(np.array(rgb, np.float32) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            tags = (tag,)
            target = np.eye(len(labels), dtype=np.float32)[k]
            if task == "multilabel" and j == 0:  # a two-tag image: left half one colour, right half the next
                other = (k + 1) % len(labels)
                arr[:, 20:] = np.array(COLOURS[labels[other]], np.uint8)
                tags, target = (tag, labels[other]), target + np.eye(len(labels), dtype=np.float32)[other]
            path = project.path / "images" / f"{tag}-{j}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
            project.records.append(_Record(f"{tag}-{j}", path, tags))
            images.append(path)
            targets.append(target)
    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3), name="data")
    x = keras.layers.Rescaling(1 / 127.5, -1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    activation = "softmax" if task == "multiclass" else "sigmoid"
    outputs = keras.layers.Dense(len(labels), activation=activation, name="model_output")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    model.compile(keras.optimizers.Adam(0.05), "categorical_crossentropy" if task == "multiclass" else "binary_crossentropy")
    from runtimes.preprocess import preprocess

    x_train = np.stack([preprocess(p, (TINY_SIZE, TINY_SIZE)) for p in images])
    model.fit(x_train, np.stack(targets), epochs=30, verbose=0, batch_size=16)
    iteration = TinyIteration(project, model, labels, task)
    iteration.path.mkdir(parents=True)
    np.savez(iteration.path / "evaluation.npz", image_ids=np.array([r.id for r in project.records]),
             targets=np.stack(targets), probabilities=iteration.predict_probabilities(images))
    return iteration


@pytest.fixture(scope="module")
def tiny_iterations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyIteration]:
    root = tmp_path_factory.mktemp("tiny")
    return {task: make_tiny_iteration(root, task) for task in ("multiclass", "multilabel")}


CASES = [pytest.param(e.name, task, id=f"{e.name}-{task}") for e in list_exporters() for task in e.tasks
         if task in ("multiclass", "multilabel")]


@pytest.mark.parametrize(("fmt", "task"), CASES)
def test_exporter_contract(fmt: str, task: str, tiny_iterations: dict[str, TinyIteration], tmp_path: Path) -> None:
    """Every export folder holds the S1 files and a valid, verified manifest; the runtime agrees with Keras."""
    from exporters import get_exporter

    iteration = tiny_iterations[task]
    cls = get_exporter(fmt)
    out = tmp_path / fmt
    result = export_iteration(iteration, fmt, out=out, zip=True)
    assert result.path == out.absolute()
    for name in (LABELS_FILE, "manifest.json", CVEXPORT_FILE, METADATA_PROPS_FILE):
        assert (out / name).is_file(), f"{fmt} export lacks {name}"
    assert (out / LABELS_FILE).read_text().splitlines() == iteration.labels

    manifest = Manifest.load(out)
    manifest.verify_files(out)
    assert manifest.task == task and manifest.labels == iteration.labels
    assert manifest.exporter.name == fmt and manifest.exporter.options["flavor"] == cls.default_flavor
    assert (out / manifest.model_file).exists()
    assert manifest.files and LABELS_FILE in manifest.files
    assert manifest.verification.status in ("ok", "unverified")
    if manifest.verification.status == "unverified":
        assert manifest.verification.reason, "unverified needs a reason"
    assert manifest.verification.to_dict() == result.verification.to_dict()

    cv = json.loads((out / CVEXPORT_FILE).read_text())
    assert {"DomainType", "Platform", "Flavor", "ExporterVersion", "ExportedDate", "IterationId", "ModelFileName",
            "LabelFileName", "MetadataPropsFileName", "SchemaVersion"} <= set(cv)
    assert cv["Flavor"] == cls.default_flavor
    props = json.loads((out / METADATA_PROPS_FILE).read_text())
    assert IMAGE_PROPERTIES.items() <= props.items()

    assert result.zip_path is not None
    with zipfile.ZipFile(result.zip_path) as zf:
        assert "manifest.json" in zf.namelist() and manifest.model_file.split("/")[0] in {n.split("/")[0] for n in zf.namelist()}

    # The device runtime predicts the same as the trained model.
    if manifest.verification.status == "ok" and Path(manifest.model_file).suffix in ENGINE_SUFFIXES:
        import runtimes

        image = iteration.project.records[1].path
        with runtimes.load(out) as predictor:
            prediction = predictor.predict(image)
        got = {p.tag_name: p.probability for p in prediction.predictions}
        want = dict(zip(iteration.labels, iteration.predict_probabilities([image])[0]))
        for tag, probability in want.items():
            assert got[tag] == pytest.approx(probability, abs=1e-2)


def test_every_exporter_declares_its_table_row() -> None:
    """--list and the benchmark are driven by these attributes; a plugin must fill them in."""
    for e in list_exporters():
        assert e.name and e.flavors and e.default_flavor in e.flavors and e.tasks and e.runs_on
        assert set(e.tasks) <= {"multiclass", "multilabel", "detection"}
