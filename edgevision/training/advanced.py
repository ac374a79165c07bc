"""Advanced training: fine-tune the top of the backbone from the quick head, with augmentation and a budget."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgevision.evaluation import classification_metrics
from edgevision.training.data import TrainingSet, stratified_split, subset
from edgevision.training.embeddings import load_batch
from edgevision.training.head import L2_GRID, fit_linear_head, log_loss

if TYPE_CHECKING:
    from edgevision.domains import Augmentation, Domain

log = logging.getLogger(__name__)

TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.15
MAX_EPOCHS = 30
PATIENCE = 4
BATCH = 16
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 1e-4
LABEL_SMOOTHING = 0.1
UNFREEZE_FRACTION = 0.3  # of the backbone's conv layers, counted from the top
Progress = Callable[[int, int, str], None]


def _augmenter(keras: Any, aug: "Augmentation", seed: int) -> Any:
    """Keras preprocessing layers for the domain's augmentation preset (pixel values stay 0..255)."""
    L = keras.layers
    steps: list[Any] = []
    flips = "horizontal_and_vertical" if aug.hflip and aug.vflip else "horizontal" if aug.hflip else "vertical" if aug.vflip else None
    if flips:
        steps.append(L.RandomFlip(flips, seed=seed))
    if aug.rotate:
        steps.append(L.RandomRotation(aug.rotate / 360.0, fill_mode="reflect", seed=seed + 1))
    if aug.zoom:
        steps.append(L.RandomZoom(aug.zoom, fill_mode="reflect", seed=seed + 2))
    if aug.shift:
        steps.append(L.RandomTranslation(aug.shift, aug.shift, fill_mode="reflect", seed=seed + 3))
    if aug.brightness:
        steps.append(L.RandomBrightness(aug.brightness, value_range=(0, 255), seed=seed + 4))
    if aug.contrast:
        steps.append(L.RandomContrast(aug.contrast, seed=seed + 5))
    return keras.Sequential(steps, name="augment")


class _Budget:
    """Stops training once the wall-clock budget is spent (checked after every batch)."""

    def __init__(self, keras: Any, seconds: float, progress: Progress | None, steps_per_epoch: int) -> None:
        deadline = time.monotonic() + seconds
        total = MAX_EPOCHS * steps_per_epoch

        class Callback(keras.callbacks.Callback):
            stopped_by_budget = False

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                if progress:
                    progress(self.epoch * steps_per_epoch + batch + 1, total, f"fine-tuning (epoch {self.epoch + 1})")
                if time.monotonic() > deadline:
                    Callback.stopped_by_budget = True
                    self.model.stop_training = True

            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self.epoch = epoch

        self.callback = Callback()

    @property
    def stopped(self) -> bool:
        return type(self.callback).stopped_by_budget


def _loss(keras: Any, multilabel: bool) -> Any:
    if multilabel:
        return keras.losses.BinaryCrossentropy()
    return keras.losses.CategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING)


def _set_trainable(backbone: Any, keras: Any) -> int:
    """Unfreeze the top convolutions; BatchNorm stays frozen (few images make its statistics noisy)."""
    convs = [l for l in backbone.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    cut = convs[int(len(convs) * (1 - UNFREEZE_FRACTION))]
    backbone.trainable = True
    trainable, reached = 0, False
    for layer in backbone.layers:
        reached = reached or layer is cut
        layer.trainable = reached and not isinstance(layer, keras.layers.BatchNormalization)
        trainable += int(layer.trainable and bool(layer.weights))
    return trainable


def _validation_score(probabilities: np.ndarray, ts: TrainingSet, idx: np.ndarray) -> float:
    """Top-1 accuracy (multiclass) or mean AP (multilabel) on the validation images; higher is better."""
    m = classification_metrics(probabilities, ts.targets[idx], ts.labels, multiclass=ts.multiclass, scored=ts.scored)
    value = m.accuracy if ts.multiclass else m.mean_average_precision
    return -1.0 if value is None or np.isnan(value) else float(value)


def fine_tune(
    ts: TrainingSet,
    features: np.ndarray,
    backbone: Any,
    domain: "Domain",
    *,
    seed: int,
    budget_s: float,
    started: float | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fine-tune and evaluate on a stratified hold-out; see :func:`edgevision.training.train`.

    The budget counts from ``started`` (the start of the whole training, embedding included);
    only saving and scoring the hold-out come after it.
    """
    from edgevision._tf import import_tf
    from edgevision.training import assemble_classifier

    tf, keras = import_tf()
    started = time.monotonic() if started is None else started
    multilabel = not ts.multiclass
    strata = ts.strata()
    rest, test = stratified_split(strata, TEST_FRACTION, seed)
    fit_rel, val_rel = stratified_split(strata[rest], VALIDATION_FRACTION, seed + 1)
    train_idx, val_idx = rest[fit_rel], rest[val_rel]

    # 1. the quick head on the training part, weight decay chosen on the validation part
    candidates = []
    for l2 in L2_GRID:
        head = fit_linear_head(features[train_idx], ts.targets[train_idx], multilabel=multilabel, l2=l2)
        candidates.append((log_loss(head.predict(features[val_idx]), ts.targets[val_idx], multilabel), l2, head))
    quick_val_loss, l2, head = min(candidates, key=lambda c: c[0])
    quick_val_score = _validation_score(head.predict(features[val_idx]), ts, val_idx)
    original = backbone.get_weights()
    model = assemble_classifier(backbone, head)

    # 2. fine-tune from there
    size = domain.input_size
    x_train = load_batch([r.path for r in subset(ts.records, train_idx)], size).astype(np.uint8)
    x_val = load_batch([r.path for r in subset(ts.records, val_idx)], size)
    y_train, y_val = ts.targets[train_idx], ts.targets[val_idx]
    augment = _augmenter(keras, domain.augmentation, seed)

    def aug(x: Any, y: Any) -> tuple[Any, Any]:
        return augment(tf.cast(x, tf.float32)[None], training=True)[0], y

    data = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
        .map(aug)  # sequential map: parallel calls would make the random draws order-dependent
        .batch(BATCH)
        .prefetch(2)
    )
    steps = int(np.ceil(len(x_train) / BATCH))
    trainable = _set_trainable(backbone, keras)
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, decay_steps=MAX_EPOCHS * steps)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=WEIGHT_DECAY), loss=_loss(keras, multilabel))
    remaining = max(budget_s - (time.monotonic() - started), 1.0)
    budget = _Budget(keras, remaining, progress, steps)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=PATIENCE, restore_best_weights=True)
    history = model.fit(data, validation_data=(x_val, y_val), epochs=MAX_EPOCHS, callbacks=[budget.callback, stopper],
                        verbose=0)
    epochs = len(history.history.get("loss", []))
    tuned_val = model.predict(x_val, batch_size=BATCH, verbose=0)
    tuned_val_score = _validation_score(tuned_val, ts, val_idx)

    # 3. keep whichever does better on validation; never ship a fine-tune that made it worse.
    # Compared by accuracy (multiclass) or mAP (multilabel), not by loss: label smoothing makes
    # the fine-tuned model's probabilities less extreme, which raises its loss even when it ranks
    # and classifies better.
    kept = "fine-tuned" if tuned_val_score > quick_val_score else "quick head"
    if kept == "quick head":
        backbone.set_weights(original)
        model = assemble_classifier(backbone, head)
    what = "accuracy" if ts.multiclass else "mAP"
    note = (f"fine-tuning ran {epochs} epochs ({'stopped by the time budget' if budget.stopped else 'early stopping'});"
            f" validation {what} quick {quick_val_score:.4f} vs fine-tuned {tuned_val_score:.4f}: kept the {kept}")
    log.info(note)

    x_test = load_batch([r.path for r in subset(ts.records, test)], size)
    probs = np.asarray(model.predict(x_test, batch_size=BATCH, verbose=0), dtype=np.float32)
    metrics = classification_metrics(probs, ts.targets[test], ts.labels, multiclass=ts.multiclass, scored=ts.scored)
    metrics.method = f"stratified hold-out ({len(test)} images never used in training)"
    for layer in model.layers:
        layer.trainable = True
    return {
        "model": model,
        "note": note,
        "hyperparameters": {
            "head": "linear", "l2": l2, "epochs_run": epochs, "max_epochs": MAX_EPOCHS, "batch": BATCH,
            "learning_rate": LEARNING_RATE, "schedule": "cosine", "weight_decay": WEIGHT_DECAY,
            "label_smoothing": 0.0 if multilabel else LABEL_SMOOTHING, "unfrozen_layers": trainable,
            "batchnorm": "frozen", "early_stopping_patience": PATIENCE, "budget_s": round(budget_s),
            "stopped_by_budget": budget.stopped, "kept": kept, "augmentation": vars(domain.augmentation),
            "split": {"train": len(train_idx), "validation": len(val_idx), "test": len(test)},
        },
        "evaluation_method": metrics.method,
        "metrics": metrics.to_dict(),
        "evaluation": {
            "probabilities": probs,
            "targets": ts.targets[test],
            "image_ids": np.array([r.id for r in subset(ts.records, test)]),
            "labels": np.array(ts.labels),
        },
    }
