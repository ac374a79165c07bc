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
FEATURE_VERSION = 1
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


class FeatureExtractor:
    """Runs a domain's pretrained backbone (frozen) and caches pooled features per image."""

    def __init__(self, domain: "Domain", cache_path: Path | None) -> None:
        self.domain = domain
        self.model: Any = domain.backbone.build(include_top=False)
        self.cache = EmbeddingCache(cache_path) if cache_path else None

    def key(self, view: str) -> str:
        b = self.domain.backbone
        return f"{b.name}@{b.input_size}/v{FEATURE_VERSION}/{view}"

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
            feats = np.asarray(self.model(batch, training=False), dtype=np.float32)
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
