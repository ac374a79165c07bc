"""Checks an image file against the training limits before it enters a project."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from edgevision import config
from edgevision.errors import ImageRejectedError
from runtimes.preprocess import ImageDecodeError, load_image

# The limits below stop oversized images before Pillow decodes them; Pillow's own bomb guard would
# only warn at ~89 Mpx and our 10,240 px sides allow ~105 Mpx.
Image.MAX_IMAGE_PIXELS = config.MAX_SIDE * config.MAX_SIDE

_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp"}


@dataclass(frozen=True)
class ImageInfo:
    """What a project records of an accepted image file."""

    sha256: str
    format: str
    width: int
    height: int
    size_bytes: int

    @property
    def extension(self) -> str:
        return _EXTENSIONS[self.format]


def inspect_image(path: Path, data: bytes | None = None) -> ImageInfo:
    """Validate one image file for training and describe it.

    Args:
        path: the file (named in errors).
        data: its bytes, if already read.

    Returns:
        The image's hash, format and size (after EXIF orientation).

    Raises:
        ImageRejectedError: unreadable, truncated, unsupported format, over 6 MB, a side over
            10,240 px or an aspect ratio over 25:1. The message names the file and the limit.
    """
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageRejectedError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if not data:
        raise ImageRejectedError(f"{path}: empty file")
    if len(data) > config.MAX_TRAIN_IMAGE_BYTES:
        raise ImageRejectedError(
            f"{path}: {len(data) / 2**20:.1f} MB is over the {config.MAX_TRAIN_IMAGE_BYTES // 2**20} MB limit "
            "for training images; resize or recompress it"
        )
    try:
        with Image.open(_bytes_io(data)) as header:
            fmt = (header.format or "").upper()
            width, height = header.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageRejectedError(f"{path}: not a readable image ({exc})") from exc
    if fmt not in config.ACCEPTED_FORMATS:
        raise ImageRejectedError(
            f"{path}: {fmt or 'unknown'} images are not accepted; use one of {', '.join(config.ACCEPTED_FORMATS)}"
        )
    if max(width, height) > config.MAX_SIDE:
        raise ImageRejectedError(f"{path}: {width}x{height} px has a side over {config.MAX_SIDE} px; downscale it")
    if min(width, height) < 1 or max(width, height) / min(width, height) > config.MAX_ASPECT:
        raise ImageRejectedError(
            f"{path}: {width}x{height} px has an aspect ratio over {config.MAX_ASPECT:g}:1; crop it"
        )
    try:
        decoded = load_image(data)  # full decode: catches truncated and corrupt files now, not at training
    except ImageDecodeError as exc:
        raise ImageRejectedError(f"{path}: cannot decode image ({exc.__cause__ or exc})") from exc
    return ImageInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        width=decoded.width,
        height=decoded.height,
        size_bytes=len(data),
    )


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)
