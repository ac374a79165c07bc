"""Request bodies of the prediction server: multipart/form-data, /image and /url bodies, image decoding."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from PIL import Image

from runtimes.http_errors import ApiError
from runtimes.preprocess import ImageDecodeError, load_image, open_image

__all__ = [
    "MAX_ASPECT",
    "MAX_SIDE",
    "FormPart",
    "decode_image",
    "image_from_body",
    "parse_header_params",
    "parse_multipart",
    "url_from_body",
]

#: Largest accepted image side and aspect ratio, the hosted service's limits. Checked from the image
#: header before any pixel is decoded, so a small file declaring a huge image (a decompression bomb)
#: costs nothing.
MAX_SIDE = 10_240
MAX_ASPECT = 25.0
_MAX_PARTS = 32
_MAX_URL = 4096
_MAX_PART_HEADER = 16 * 1024


@dataclass(frozen=True)
class FormPart:
    """One part of a multipart/form-data body; ``data`` is never decoded as text."""

    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(r';\s*(' + _TOKEN + r')\s*=\s*("(?:[^"\\\r\n]|\\.)*"|[^;\s"]*)\s*')
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


def parse_header_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type/sub; a=1; b="x;y"`` into the lower-cased main value and its parameters.

    Quoted values may hold ``;`` and backslash escapes; parameter names are lower-cased.

    Raises:
        ApiError: 400 when the parameters do not parse.
    """
    main, _, _ = value.partition(";")
    rest = value[len(main):].rstrip().rstrip(";")  # a trailing ";" is common and harmless
    params: dict[str, str] = {}
    at = 0
    while at < len(rest):
        match = _PARAM.match(rest, at)
        if not match:
            raise ApiError(400, "BadRequest", f"cannot parse header parameters {value[:200]!r}")
        raw = match.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[match.group(1).lower()] = raw
        at = match.end()
    return main.strip().lower(), params


def _boundary_line_end(body: bytes, after: int) -> tuple[int, bool] | None:
    """Where the part after a delimiter ending at ``after`` starts, and whether it was the closing one."""
    if body.startswith(b"--", after):
        return after + 2, True
    # Between the boundary and its CRLF only transport padding (spaces, tabs) may stand.
    eol = body.find(b"\r\n", after, after + 256)
    if eol >= 0 and not body[after:eol].strip(b" \t"):
        return eol + 2, False
    return None


def _find_delimiter(body: bytes, delimiter: bytes, start: int) -> tuple[int, int, bool]:
    """Find the next ``CRLF--boundary`` line at or after ``start``.

    Returns:
        (where the part content ends, where the next part starts, whether it was the closing one).
    """
    marker = b"\r\n" + delimiter
    at = start
    while True:
        found = body.find(marker, at)
        if found < 0:
            raise ApiError(400, "BadRequest", "multipart body is not terminated by its closing boundary")
        tail = _boundary_line_end(body, found + len(marker))
        if tail is not None:
            return found, tail[0], tail[1]
        at = found + 1  # content that merely starts like the boundary: keep looking


def parse_multipart(body: bytes, boundary: str, *, max_parts: int = _MAX_PARTS) -> list[FormPart]:
    """Parse a multipart/form-data body strictly (RFC 7578 / 2046): CRLF line ends, preamble and
    epilogue ignored, every part needing a ``Content-Disposition: form-data`` header.

    Args:
        body: the whole request body.
        boundary: the ``boundary`` parameter of the Content-Type, unquoted.

    Returns:
        The parts in order.

    Raises:
        ApiError: 400 ``BadRequest`` naming what is malformed.
    """
    if not _BOUNDARY.fullmatch(boundary):
        raise ApiError(400, "BadRequest", f"invalid multipart boundary {boundary!r}")
    delimiter = b"--" + boundary.encode("ascii")
    # The first delimiter opens the body, or ends a preamble (and then follows a CRLF).
    tail = _boundary_line_end(body, len(delimiter)) if body.startswith(delimiter) else None
    if tail is None:
        _, pos, closing = _find_delimiter(body, delimiter, 0)
    else:
        pos, closing = tail
    parts: list[FormPart] = []
    while not closing:
        content_end, next_pos, closing = _find_delimiter(body, delimiter, pos)
        parts.append(_parse_part(body[pos:content_end]))
        if len(parts) > max_parts:
            raise ApiError(400, "BadRequest", f"multipart body has more than {max_parts} parts")
        pos = next_pos
    return parts


def _parse_part(raw: bytes) -> FormPart:
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0 or head_end > _MAX_PART_HEADER:
        raise ApiError(400, "BadRequest", "multipart part has no header block ended by an empty line")
    headers: dict[str, str] = {}
    # Headers only are decoded; browsers put raw UTF-8 in filenames. The content stays bytes.
    for line in raw[:head_end].decode("utf-8", "replace").split("\r\n"):
        if line[:1] in (" ", "\t") and headers:  # obsolete line folding: continue the last header
            last = next(reversed(headers))
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise ApiError(400, "BadRequest", f"malformed multipart part header {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    disposition, params = parse_header_params(headers.get("content-disposition", ""))
    if disposition != "form-data":
        raise ApiError(400, "BadRequest", "multipart part without 'Content-Disposition: form-data'")
    return FormPart(params.get("name"), params.get("filename"), headers.get("content-type"), raw[head_end + 4 :])


def image_from_body(body: bytes, content_type: str | None) -> bytes:
    """Pick the image bytes out of an /image request body.

    Args:
        body: the request body.
        content_type: its Content-Type header, or None.

    Returns:
        The ``imageData`` part of a multipart/form-data body (with or without a filename or a part
        Content-Type), or the whole body for application/octet-stream, image/* or no Content-Type.

    Raises:
        ApiError: 400 ``BadRequestImageStream`` when there is no image, 400 ``BadRequest`` for a
            malformed multipart body, 415 ``UnsupportedMediaType`` for other content types.
    """
    mime, params = parse_header_params(content_type or "")
    if mime == "multipart/form-data":
        if "boundary" not in params:
            raise ApiError(400, "BadRequest", "multipart/form-data Content-Type without a boundary")
        if not body:  # no image, rather than a form missing its closing boundary
            raise ApiError(400, "BadRequestImageStream", "the request carried no image data")
        parts = parse_multipart(body, params["boundary"])
        images = [p for p in parts if p.name == "imageData"]
        if not images:  # be lenient about the field name's case only
            images = [p for p in parts if (p.name or "").lower() == "imagedata"]
        if len(images) != 1:
            found = ", ".join(repr(p.name) for p in parts) or "none"
            raise ApiError(
                400, "BadRequestImageStream",
                f"expected exactly one multipart part named 'imageData', found {len(images)} (parts: {found})",
            )
        data = images[0].data
    elif mime in ("", "application/octet-stream") or mime.startswith("image/"):
        data = body
    else:
        raise ApiError(
            415, "UnsupportedMediaType",
            f"cannot take an image from a body of type {mime}: send the image bytes as application/octet-stream "
            "(or image/*), or as the multipart/form-data field 'imageData'; for a URL use /url",
        )
    if not data:
        raise ApiError(400, "BadRequestImageStream", "the request carried no image data")
    return data


def url_from_body(body: bytes) -> str:
    """Read ``{"url": ...}`` (or ``"Url"``) from a /url request body.

    Raises:
        ApiError: 400 when the body is not that JSON object or the url is missing.
    """
    try:
        payload = json.loads(body.decode("utf-8-sig")) if body.strip() else {}
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: [[[[...]]]] nested too deep
        raise ApiError(400, "BadRequest", 'the body must be JSON like {"url": "https://..."}') from None
    if not isinstance(payload, dict):
        raise ApiError(400, "BadRequest", 'the body must be a JSON object like {"url": "https://..."}')
    # The SDK sends "url", the container's docs "Url": take the key whatever its case.
    url = next((value for key, value in payload.items() if key.lower() == "url"), None)
    if not isinstance(url, str) or not url.strip():
        raise ApiError(400, "BadRequestImageUrl", 'the JSON body has no "url" string')
    if len(url) > _MAX_URL:
        raise ApiError(400, "BadRequestImageUrl", f"the url is longer than {_MAX_URL} characters")
    return url.strip()


def decode_image(data: bytes) -> Image.Image:
    """Check an image's declared size from its header, then decode it (EXIF-oriented RGB).

    Raises:
        ApiError: 400 ``BadRequestImageDimensions`` for a side over :data:`MAX_SIDE` or an aspect
            over :data:`MAX_ASPECT` (before any pixel is decoded), 400 ``BadRequestImageFormat`` for
            data that is not a readable image.
    """
    try:
        image = open_image(data)
    except ImageDecodeError as exc:
        if isinstance(exc.__cause__, Image.DecompressionBombError):  # Pillow's own, larger, limit
            raise ApiError(400, "BadRequestImageDimensions", f"the image is too large: {exc.__cause__}") from None
        raise ApiError(
            400, "BadRequestImageFormat", "the data is not an image that can be read (JPEG, PNG, BMP, GIF, WebP, ...)"
        ) from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ApiError(400, "BadRequestImageDimensions", f"the image declares an empty size {width}x{height}")
    if max(width, height) > MAX_SIDE:
        raise ApiError(
            400, "BadRequestImageDimensions",
            f"the image is {width}x{height} px; sides up to {MAX_SIDE} px are accepted",
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ApiError(
            400, "BadRequestImageDimensions",
            f"the image is {width}x{height} px; aspect ratios up to {MAX_ASPECT:g}:1 are accepted",
        )
    try:
        return load_image(image)
    except ImageDecodeError:
        raise ApiError(400, "BadRequestImageFormat", "the image data is corrupt or truncated") from None
