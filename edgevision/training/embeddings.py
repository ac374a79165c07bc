"""Frozen-backbone embeddings, computed once per image and cached by (image hash, backbone, view)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from runtimes.preprocess import load_image, resize

if TYPE_CHECKING:
    from edgevision.domains import Domain
    from edgevision.store.project import ImageRecord

# Bump when the feature computation changes so stale cache rows are never reused.
FEATURE_VERSION = 2
#: How many stage outputs below the top are pooled into the features (see feature_model).
EXTRA_STAGES = 3
BATCH = 32
VIEWS = ("plain", "hflip")


class EmbeddingCache:
    """A per-project SQLite table of float32 vectors keyed by (sha256, key)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS embeddings (sha256 TEXT NOT NULL, key TEXT NOT NULL, vec BLOB NOT NULL,"
            " PRIMARY KEY (sha256, key))"
        )

    def get(self, key: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(hashes), 500):
            chunk = list(hashes[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for sha, blob in self._conn.execute(
                f"SELECT sha256, vec FROM embeddings WHERE key = ? AND sha256 IN ({marks})", [key, *chunk]
            ):
                out[sha] = np.frombuffer(blob, dtype=np.float32)
        return out

    def put(self, key: str, rows: dict[str, np.ndarray]) -> None:
        with self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO embeddings(sha256, key, vec) VALUES (?, ?, ?)",
                [(sha, key, np.asarray(v, dtype=np.float32).tobytes()) for sha, v in rows.items()],
            )

    def close(self) -> None:
        self._conn.close()


def load_batch(paths: Sequence[Path], size: int, hflip: bool = False) -> np.ndarray:
    """Decode and resize images with the shared runtime preprocessing; (N, size, size, 3) float32 0..255."""
    out = np.empty((len(paths), size, size, 3), dtype=np.float32)
    for i, path in enumerate(paths):
        image = resize(load_image(path), (size, size))
        arr = np.asarray(image, dtype=np.float32)
        out[i] = arr[:, ::-1] if hflip else arr
    return out


def feature_model(backbone: Any) -> Any:
    """The backbone with the pooled outputs of its last stages concatenated to the pooled top.

    Images far from ImageNet (greyscale product shots, textures) are better separated by mid-level
    features: on the Fashion-MNIST benchmark (bench/) adding the last three stage outputs raised
    linear-probe top-1 by ~1.5 points. Only built-in layers are added, so the model still saves,
    loads and converts without custom objects.
    """
    from edgevision._tf import import_tf

    _, keras = import_tf()
    names = {layer.name for layer in backbone.layers}
    blocks = sorted(int(n[5:-len("_project_bn")]) for n in names if n.startswith("block") and n.endswith("_project_bn"))

    def output(i: int) -> Any:  # a block's output: after its residual add when it has one
        return backbone.get_layer(f"block{i}_add" if f"block{i}_add" in names else f"block{i}_project_bn").output

    channels = {i: output(i).shape[-1] for i in blocks}
    stage_ends = [i for i, j in zip(blocks, blocks[1:]) if channels[i] != channels[j]]
    pooled = [keras.layers.GlobalAveragePooling2D(name=f"pool_block{i}")(output(i)) for i in stage_ends[-EXTRA_STAGES:]]
    features = keras.layers.Concatenate(name="features")([backbone.output, *pooled])
    return keras.Model(backbone.input, features, name=f"{backbone.name}_features")


class FeatureExtractor:
    """Runs a domain's pretrained backbone (frozen) and caches pooled features per image."""

    def __init__(self, domain: "Domain", cache_path: Path | None, *, int8_grid: bool = False) -> None:
        """Args:
            domain: whose pretrained backbone embeds the images.
            cache_path: the project's feature cache (SQLite), or None for none.
            int8_grid: snap the backbone's weights onto TFLite's int8 grid first
                (:func:`edgevision.training.quantization.snap_to_int8_grid`; cached apart).
        """
        from edgevision._tf import import_tf

        tf, _ = import_tf()
        self.domain = domain
        self.int8_grid = int8_grid
        self.model: Any = feature_model(domain.backbone.build(include_top=False))
        if int8_grid:
            from edgevision.training.quantization import snap_to_int8_grid

            self.grid = snap_to_int8_grid(self.model)
        # A compiled call is ~2x faster than eager Model.__call__ on CPU; reduce_retracing keeps
        # the short last batch from compiling a second graph.
        self._run = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        self.cache = EmbeddingCache(cache_path) if cache_path else None

    def key(self, view: str) -> str:
        b = self.domain.backbone
        return f"{b.name}@{b.input_size}/v{FEATURE_VERSION}{'/int8grid' if self.int8_grid else ''}/{view}"

    def embed(
        self,
        records: Sequence["ImageRecord"],
        view: str = "plain",
        progress: Callable[[int, int, str], None] | None = None,
    ) -> np.ndarray:
        """Features (N, D) for ``records`` in order; computed in batches for images not yet cached."""
        key = self.key(view)
        hashes = [r.sha256 for r in records]
        have = self.cache.get(key, hashes) if self.cache else {}
        missing = [r for r in dict((r.sha256, r) for r in records).values() if r.sha256 not in have]
        done = len(records) - len(missing)
        for start in range(0, len(missing), BATCH):
            chunk = missing[start : start + BATCH]
            if progress:
                progress(start, len(missing), f"embedding images ({view})")
            batch = load_batch([r.path for r in chunk], self.domain.input_size, hflip=view == "hflip")
            feats = np.asarray(self._run(batch), dtype=np.float32)
            new = {r.sha256: f for r, f in zip(chunk, feats)}
            have.update(new)
            if self.cache:
                self.cache.put(key, new)  # committed per batch: Ctrl-C keeps the work done so far
        if progress:
            progress(len(missing), max(len(missing), 1), f"embedded {len(missing)} new, {done} cached")
        return np.stack([have[h] for h in hashes]) if hashes else np.zeros((0, 0), np.float32)

    def close(self) -> None:
        if self.cache:
            self.cache.close()
