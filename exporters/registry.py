"""The exporter registry: built-in and third-party formats come in through the entry-point group
``edgevision.exporters``; :func:`register` adds one by hand. A name may be registered once."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from exporters.base import ExportError, Exporter, OptionsError, suggest

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "edgevision.exporters"

_registry: dict[str, type[Exporter]] = {}
#: Entry points that failed to load: name -> reason (reported when that name is asked for).
_broken: dict[str, str] = {}
_loaded = False


class DuplicateExporterError(ExportError):
    """Two exporters claim the same format name."""


def register(cls: type[Exporter]) -> type[Exporter]:
    """Add an exporter class (usable as a decorator).

    Raises:
        DuplicateExporterError: another class already has ``cls.name``.
        ExportError: the class is not an :class:`Exporter` with a name.
    """
    if not (isinstance(cls, type) and issubclass(cls, Exporter)) or not getattr(cls, "name", ""):
        raise ExportError(f"{cls!r} is not an Exporter subclass with a name")
    existing = _registry.get(cls.name)
    if existing is not None and existing is not cls:
        raise DuplicateExporterError(
            f"exporter name {cls.name!r} is registered twice: {existing.__module__}.{existing.__qualname__} "
            f"and {cls.__module__}.{cls.__qualname__}; uninstall or rename one")
    _registry[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove an exporter (tests use it to undo :func:`register`)."""
    _registry.pop(name, None)


def load_entry_points() -> None:
    """Import every exporter declared in the ``edgevision.exporters`` entry-point group (once).

    An entry point that fails to import is remembered with its error (asking for it then says why)
    rather than breaking every other format; a duplicate name raises.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken third-party plugin must not hide the built-ins
            log.warning("exporter %r (%s) failed to load: %s", ep.name, ep.value, exc)
            _broken[ep.name] = f"{ep.value} failed to load: {exc}"
            continue
        if getattr(cls, "name", None) != ep.name:
            log.warning("entry point %r loads an exporter named %r", ep.name, getattr(cls, "name", None))
        register(cls)


def get_exporter(name: str) -> type[Exporter]:
    """The exporter class for a format name.

    Raises:
        OptionsError: unknown name (with a "did you mean" suggestion), or its plugin failed to load.
    """
    load_entry_points()
    if name in _registry:
        return _registry[name]
    if name in _broken:
        raise ExportError(f"format {name!r} is installed but cannot be used: {_broken[name]}")
    raise OptionsError(f"unknown export format {name!r}{suggest(name, sorted(_registry))}")


def list_exporters() -> list[type[Exporter]]:
    """All registered exporter classes, sorted by name."""
    load_entry_points()
    return [_registry[n] for n in sorted(_registry)]
