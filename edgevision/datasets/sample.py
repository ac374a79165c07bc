"""A small deterministic sample dataset (generated, no download) for ``edgevision demo`` and tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star")


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners = [angle + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    if kind == "triangle":
        corners = [angle + k * 2 * math.pi / 3 for k in range(3)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    if kind == "star":
        points = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = angle + k * math.pi / 5
            points.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return points
    raise ValueError(kind)


def make_image(kind: str, rng: np.random.Generator, size: int = 160) -> Image.Image:
    """Draw one shape of ``kind`` with random colour, size, position and rotation on a noisy background."""
    bg = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 18, size=(size, size, 3))
    gradient = np.linspace(-30, 30, size)[None, :, None] * rng.choice([-1, 1])
    pixels = np.clip(bg[None, None, :] + noise + gradient, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    fg = tuple(int(v) for v in (255 - bg + rng.integers(-60, 61, size=3)) % 256)
    r = float(rng.uniform(0.18, 0.38) * size)
    cx, cy = (float(rng.uniform(r, size - r)) for _ in range(2))
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, float(rng.uniform(0, 2 * math.pi))), fill=fg)
    return image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 1.2))))


def write_sample_dataset(dest: Path, per_tag: int = 12, tags: tuple[str, ...] = SHAPES, seed: int = 0) -> Path:
    """Write a folder-per-tag dataset of generated shape photos to ``dest`` and return it.

    The same ``seed`` always gives byte-identical files.
    """
    rng = np.random.default_rng(seed)
    for tag in tags:
        folder = dest / tag
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_tag):
            make_image(tag, rng).save(folder / f"{tag}-{i:03d}.png", optimize=False)
    return dest
