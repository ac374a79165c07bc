"""Docker exporter: a folder that builds into a small prediction container (linux/amd64, linux/arm64,
linux/arm/v7) serving the model over HTTP with the hosted Custom Vision container's routes.

Bundle layout (``out_dir``)::

    Dockerfile          python:3.11-slim, non-root user, HEALTHCHECK on /health, EXPOSE 80, CMD python serve.py
    .dockerignore
    requirements.txt    pinned runtime only: numpy, Pillow, ai-edge-litert (TFLite) or onnxruntime (ONNX)
    serve.py            the CMD: ``runtimes.cli serve model/`` on $HOST:$PORT (defaults 0.0.0.0:80)
    README.md           buildx / run lines, routes, per-platform notes
    model/              a complete, verified tflite (default) or onnx export (its own manifest.json)
    runtimes/           a copy of edgevision's runtime package (never edgevision/ or exporters/)
    + labels.txt, manifest.json, cvexport.manifest, metadata_properties.json (written by the driver;
      the top-level manifest points at model/<model file>, so ``runtimes.load(bundle)`` works too)

The model inside is produced by the registered ``tflite``/``onnx`` exporter with the same context,
verified through ``runtimes/`` exactly as a standalone export; the bundle's verification is that
result (a failed check fails the Docker export too).

Pins are the versions installed where the export runs (the versions the verification used), with
fallbacks when a package is missing. linux/arm/v7: PyPI has no 32-bit ARM wheel of ai-edge-litert,
onnxruntime, numpy or Pillow (checked 2026-11 with ``pip download --platform``), but it has
``tflite-runtime 2.14.0`` for CPython 3.11 (manylinux_2_34_armv7l, built against NumPy 1.x): the
requirements select it and ``numpy 1.26.4`` on armv7l by environment marker, and the Dockerfile takes
numpy/Pillow wheels from piwheels there. An ONNX bundle cannot run on arm/v7 (no onnxruntime wheel):
its build for that platform stops at ``pip install`` with "no matching distribution".
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import string
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Literal, Optional

from exporters.base import Artifact, ExportContext, ExportError, Exporter, Options, OptionsError
from runtimes.manifest import Verification

log = logging.getLogger(__name__)

MODEL_DIR = "model"
RUNTIME_PACKAGE = "runtimes"
BUNDLE_FILES = ("Dockerfile", ".dockerignore", "requirements.txt", "serve.py", "README.md")
PLATFORMS = ("linux/amd64", "linux/arm64", "linux/arm/v7")
DEFAULT_PORT = 80

#: Fallback pins when a package is not installed where the export runs (FACTS.md versions).
FALLBACK_PINS = {"numpy": "2.4.6", "pillow": "13.0.0", "ai-edge-litert": "2.3.0", "onnxruntime": "1.31.1"}
#: linux/arm/v7 (armv7l): the last tflite-runtime with a CPython 3.11 armv7l wheel on PyPI, and the
#: NumPy 1.x it was built against (NumPy 2 refuses extension modules compiled for 1.x).
ARMV7_TFLITE_RUNTIME = "2.14.0"
ARMV7_NUMPY = "1.26.4"
_ARMV7 = 'platform_machine == "armv7l"'
_NOT_ARMV7 = 'platform_machine != "armv7l"'


@dataclass(frozen=True)
class DockerOptions(Options):
    """Options of the ``docker`` exporter.

    Attributes:
        model: the model inside: ``tflite`` (default; runs on all three platforms) or ``onnx``
            (amd64 and arm64 only).
        model_flavor: that exporter's flavor (default: its own default, float32); e.g. ``int8``.
        port: the port the container listens on and EXPOSEs (default 80, as the hosted exports).
        image: the image name used in the README's commands (default: ``<project>-<iteration>``).
    """

    model: Literal["tflite", "onnx"] = "tflite"
    model_flavor: Optional[str] = None
    port: int = DEFAULT_PORT
    image: Optional[str] = None

    def validate(self) -> None:
        if not 1 <= self.port <= 65535:
            raise OptionsError(f"option port={self.port}: expected 1..65535")
        if self.image is not None and not re.fullmatch(r"[a-z0-9][a-z0-9._/:-]*", self.image):
            raise OptionsError(f"option image={self.image!r}: an image name is lowercase letters, digits and . _ - / :")


def _pin(dist: str) -> str:
    """The installed version of ``dist`` (what the verification ran), or the fallback pin."""
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return FALLBACK_PINS[dist]


def requirements(model: str) -> str:
    """The bundle's ``requirements.txt`` for a ``tflite`` or ``onnx`` model (pinned, runtime only)."""
    lines = ["# edgevision prediction container: runtime only (no TensorFlow). Pinned to the versions the",
             "# export was verified with."]
    if model == "tflite":
        lines += ["# armv7l (linux/arm/v7) has no ai-edge-litert wheel: tflite-runtime + NumPy 1.x there (README.md).",
                  f"numpy=={_pin('numpy')}; {_NOT_ARMV7}",
                  f"numpy=={ARMV7_NUMPY}; {_ARMV7}",
                  f"pillow=={_pin('pillow')}",
                  f"ai-edge-litert=={_pin('ai-edge-litert')}; {_NOT_ARMV7}",
                  f"tflite-runtime=={ARMV7_TFLITE_RUNTIME}; {_ARMV7}"]
    else:
        # No marker: onnxruntime has no armv7l wheel, and a build that fails at pip install is
        # better than an image that starts and cannot load its model.
        lines += ["# linux/arm/v7 is not supported with an ONNX model: onnxruntime has no armv7l wheel.",
                  f"numpy=={_pin('numpy')}", f"pillow=={_pin('pillow')}", f"onnxruntime=={_pin('onnxruntime')}"]
    return "\n".join(lines) + "\n"


def runtime_sources() -> list[Path]:
    """The runtime package's modules to copy (``*.py`` of ``runtimes/``; never edgevision/ or exporters/)."""
    import runtimes

    root = Path(runtimes.__file__).resolve().parent
    files = sorted(p for p in root.glob("*.py"))
    if not any(p.name == "server.py" for p in files):
        raise ExportError(f"{root}: the runtime package has no server.py; reinstall edgevision")
    return files


def _image_name(ctx: ExportContext, options: DockerOptions) -> str:
    if options.image:
        return options.image
    base = re.sub(r"[^a-z0-9._-]+", "-", f"{ctx.project_name}-{ctx.iteration_name}".lower()).strip("-._")
    return base or "edgevision-model"


class DockerExporter(Exporter):
    """A Docker build folder: Dockerfile, pinned requirements, the runtime, the model and a README."""

    name = "docker"
    suffix = ""
    flavors = ("linux",)
    tasks = ("multiclass", "multilabel", "detection")
    default_flavor = "linux"
    runs_on = "Docker: linux/amd64, linux/arm64, linux/arm/v7 (Raspberry Pi)"
    description = "prediction container (HTTP, Custom Vision container routes) around a tflite or onnx model"
    Options = DockerOptions
    hosted_exports = {("DockerFile", ""): "linux", ("DockerFile", "Linux"): "linux", ("DockerFile", "ARM"): "linux"}

    def __init__(self) -> None:
        self._model_verification: Verification | None = None

    def export(self, ctx: ExportContext, flavor: str, options: Options) -> Artifact:
        assert isinstance(options, DockerOptions)
        from exporters import metadata
        from exporters.registry import get_exporter

        inner_cls = get_exporter(options.model)
        inner_flavor = options.model_flavor or inner_cls.default_flavor
        if inner_flavor not in inner_cls.flavors:
            raise OptionsError(f"option model_flavor={inner_flavor!r}: the {options.model} exporter's flavors are "
                               f"{', '.join(inner_cls.flavors)}")
        if ctx.task not in inner_cls.tasks:
            raise OptionsError(f"the {options.model} exporter does not export {ctx.task} models")

        # 1. model/: a complete export of the inner format, verified like a standalone one. The
        # context is shared (same images, cached concrete function and reference probabilities).
        model_dir = ctx.out_dir / MODEL_DIR
        model_dir.mkdir()
        inner_ctx = dataclasses.replace(ctx, out_dir=model_dir)
        inner = inner_cls()
        inner_options = inner_cls.Options.parse({})
        art = inner.export(inner_ctx, inner_flavor, inner_options)
        written = [art.model_file, *art.extra_files,
                   metadata.write_labels(model_dir, ctx.labels),
                   metadata.write_metadata_properties(model_dir, metadata.metadata_properties(ctx, inner_flavor)),
                   metadata.write_cvexport_manifest(model_dir, ctx, art, inner)]
        verification = inner.verify(inner_ctx, art, inner_flavor)
        verification = Verification(verification.status, verification.reason,
                                    {**verification.details, "model": options.model})
        metadata.build_manifest(model_dir, ctx, art, inner, inner_options.to_dict(), verification,
                                written).save(model_dir)
        self._model_verification = verification

        # 2. runtimes/: only the runtime package's modules.
        runtime_dir = ctx.out_dir / RUNTIME_PACKAGE
        runtime_dir.mkdir()
        for source in runtime_sources():
            shutil.copy2(source, runtime_dir / source.name)

        # 3. Dockerfile, serve.py, requirements.txt, README.md, .dockerignore.
        self._write_templates(ctx, options, art.model_file)
        return Artifact(
            model_file=f"{MODEL_DIR}/{art.model_file}",
            input=art.input,
            outputs=list(art.outputs),
            platform="DockerFile",
            flavor=flavor,
            extra_files=[MODEL_DIR, RUNTIME_PACKAGE, *BUNDLE_FILES],
            runnable_here=art.runnable_here,
        )

    def _write_templates(self, ctx: ExportContext, options: DockerOptions, model_file: str) -> None:
        from exporters import docker_template as t

        tflite = options.model == "tflite"
        values = {
            "project_name": ctx.project_name, "iteration_name": ctx.iteration_name, "domain": ctx.domain,
            "task": ctx.task, "labels_count": len(ctx.labels), "labels": ", ".join(ctx.labels),
            "model_kind": "TFLite" if tflite else "ONNX", "model_file": model_file,
            "engine": "ai-edge-litert (tflite-runtime on arm/v7)" if tflite else "onnxruntime",
            "image": _image_name(ctx, options), "port": options.port,
            "engine_amd64": f"ai-edge-litert {_pin('ai-edge-litert')}" if tflite else f"onnxruntime {_pin('onnxruntime')}",
            "engine_arm64": f"ai-edge-litert {_pin('ai-edge-litert')}" if tflite else f"onnxruntime {_pin('onnxruntime')}",
            "engine_armv7": f"tflite-runtime {ARMV7_TFLITE_RUNTIME}" if tflite else "none",
            "armv7_note": (f"ai-edge-litert publishes no armv7 wheel: tflite-runtime {ARMV7_TFLITE_RUNTIME} "
                           f"(PyPI) with NumPy {ARMV7_NUMPY}; numpy and Pillow wheels come from piwheels. "
                           "Not built on our machines (no Docker engine there)." if tflite else
                           "not supported: onnxruntime publishes no 32-bit ARM wheel, so this platform's build "
                           "stops at pip install; export with the default `model=tflite` for a Raspberry Pi "
                           "on 32-bit OS."),
        }
        files = {"Dockerfile": t.DOCKERFILE, "serve.py": t.SERVE_PY, "README.md": t.README,
                 ".dockerignore": t.DOCKERIGNORE}
        for name, template in files.items():
            (ctx.out_dir / name).write_text(string.Template(template).substitute(values), encoding="utf-8")
        (ctx.out_dir / "requirements.txt").write_text(requirements(options.model), encoding="utf-8")

    def verify(self, ctx: ExportContext, artifact: Artifact, flavor: str) -> Verification:
        """The bundled model's own verification (through ``runtimes/``, as a standalone export).

        Falls back to running the bundled model through the framework's check when ``export`` did
        not run in this instance.
        """
        if self._model_verification is not None:
            return self._model_verification
        return super().verify(ctx, artifact, flavor)
