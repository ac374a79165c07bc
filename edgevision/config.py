"""Where projects live, and the limits modelled on the hosted custom-vision service."""

from __future__ import annotations

import os
import re
from pathlib import Path

from edgevision.errors import UsageError

#: Environment variable naming the folder that holds all projects (default ``~/.edgevision``).
HOME_ENV = "EDGEVISION_HOME"

# Limits (FACTS.md, the hosted service's documented limits).
MIN_IMAGES_PER_TAG = 5
MIN_TAGS = 2
MAX_SIDE = 10_240
MAX_ASPECT = 25.0
MAX_TRAIN_IMAGE_BYTES = 6 * 1024 * 1024
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")
NEGATIVE_TAG = "Negative"

_PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def home(override: str | os.PathLike | None = None) -> Path:
    """Return the edgevision home folder: ``override``, else ``$EDGEVISION_HOME``, else ``~/.edgevision``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".edgevision"


def check_project_name(name: str) -> str:
    """Validate a project name: it becomes a folder name, so no separators, dots first or spaces.

    Raises:
        UsageError: the name is not 1-64 letters, digits, '.', '_' or '-' starting with a letter/digit.
    """
    if not isinstance(name, str) or not _PROJECT_NAME.match(name):
        raise UsageError(
            f"invalid project name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. 'flowers-v2')"
        )
    return name
