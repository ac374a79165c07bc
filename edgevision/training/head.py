"""The quick-training head: a linear softmax/sigmoid layer fitted on cached features (numpy, deterministic)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Weight-decay values tried by cross-validation in quick training.
L2_GRID = (1e-4, 1e-3, 1e-2)
STEPS = 400
LEARNING_RATE = 0.02


@dataclass
class LinearHead:
    """``probabilities = activation(features @ kernel + bias)``; softmax (multiclass) or sigmoid."""

    kernel: np.ndarray  # (D, C)
    bias: np.ndarray  # (C,)
    multilabel: bool

    def predict(self, features: np.ndarray) -> np.ndarray:
        return _activate(features @ self.kernel + self.bias, self.multilabel)


def _activate(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    if multilabel:
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def log_loss(probabilities: np.ndarray, targets: np.ndarray, multilabel: bool) -> float:
    """Mean cross-entropy (binary per tag for multilabel)."""
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    if multilabel:
        return float(-np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p)))
    return float(-np.mean(np.sum(targets * np.log(p), axis=1)))


def fit_linear_head(
    features: np.ndarray,
    targets: np.ndarray,
    *,
    multilabel: bool,
    l2: float = 1e-3,
    steps: int = STEPS,
    learning_rate: float = LEARNING_RATE,
    class_weight: bool = True,
) -> LinearHead:
    """Fit a linear head by full-batch Adam from zero weights (so the result is deterministic).

    The features are used raw — no standardisation folded into the weights — because a folded
    scale blows up the weight range and ruins int8 quantization later (FACTS.md).

    Args:
        features: (N, D) float32.
        targets: (N, C) 0/1; a multiclass row may be all zeros only if the project has no
            Negative class (such rows then pull every class down).
        multilabel: sigmoid + binary cross-entropy instead of softmax + cross-entropy.
        l2: weight decay on the kernel.
        class_weight: weight images so every tag counts the same however many images it has.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    n, d = x.shape
    c = y.shape[1]
    if class_weight and not multilabel:
        counts = np.maximum(y.sum(axis=0), 1.0)
        w = (y @ (n / (c * counts)))
        w = np.where(y.any(axis=1), w, 1.0)
    else:
        w = np.ones(n)
    w = w / w.sum()
    kernel = np.zeros((d, c))
    bias = np.zeros(c)
    m_k, v_k, m_b, v_b = (np.zeros_like(kernel), np.zeros_like(kernel), np.zeros_like(bias), np.zeros_like(bias))
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        p = _activate(x @ kernel + bias, multilabel)
        err = (p - y) * w[:, None]  # gradient of the weighted mean loss wrt the logits
        if multilabel:
            err = err / c
        g_k = x.T @ err + 2 * l2 * kernel
        g_b = err.sum(axis=0)
        lr = learning_rate * (0.5 * (1 + np.cos(np.pi * (t - 1) / steps)))  # cosine decay
        for param, grad, m, v in ((kernel, g_k, m_k, v_k), (bias, g_b, m_b, v_b)):
            m *= beta1
            m += (1 - beta1) * grad
            v *= beta2
            v += (1 - beta2) * grad * grad
            param -= lr * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
    return LinearHead(kernel.astype(np.float32), bias.astype(np.float32), multilabel)
