"""Training API routes for training, iterations, performance, publishing, quick tests, exports and prediction.

Shapes follow the hosted Training API v3.x (``Iteration``, ``IterationPerformance``, ``Export``,
``ImagePrediction``); edgevision's additions are prefixed ``edgevision`` (``edgevisionProgress``,
``edgevisionVerification``, ...). docs/training-api.md lists the routes.

Where things live:

* trained iterations are the project's own (``Project.iterations()``); a training that is queued,
  running or failed exists only as a job of this process plus an entry in ``<project>/api-state.json``;
* ``api-state.json`` (written atomically, by this module only) keeps what the hosted API has and
  the store does not: iteration names, publish names, training type and budget, failed trainings
  and the export records;
* exports are ``Iteration.export(..., zip=True)`` folders under ``<project>/exports/`` and served
  as ``/edgevision/exports/{projectId}/{iterationId}/{format}-{flavor}.zip``.

Training and exports run in background job queues (:mod:`edgevision.api.jobs`), one job at a
time each, with their own ``Project`` objects; request handlers hold ``app.lock`` only while they
read or write the store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from edgevision.api.app import ApiApp, Request, Response, RouteTable
from edgevision.api.jobs import Job, JobQueue, utc_now
from edgevision.errors import IterationNotFoundError, NotEnoughDataError
from runtimes.http_errors import ApiError

log = logging.getLogger(__name__)

ROUTES = RouteTable()

STATE_FILE = "api-state.json"
#: Loaded models kept for the prediction routes (least recently used dropped first).
MODEL_CACHE_SIZE = 4
#: How long ``ApiApp.stop`` waits for a running training or export to notice it must stop.
STOP_GRACE_S = 20.0
_PUBLISH_NAME = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,100}$")
_VERSION = re.compile(r"^v3\.\d+$", re.IGNORECASE)
_STATE_KEY = "edgevision.api.routes_training"
_TRAINING_TYPES = {"regular": "quick", "advanced": "advanced"}


# =========================================================================== module state
class _State:
    """This module's share of ``app.state``: job queues, the model cache, the state-file lock."""

    def __init__(self) -> None:
        self.training = JobQueue("training")
        self.exports = JobQueue("export")
        self.jobs: dict[str, Job] = {}  # training jobs by iteration id (lower case)
        self.export_jobs: dict[str, Job] = {}  # export jobs by "<iteration id>/<format>-<flavor>"
        self.file_lock = threading.Lock()  # read-modify-write of api-state.json files
        self.predict_lock = threading.Lock()  # one model call at a time (TF's own threads do the rest)
        self.cache_lock = threading.Lock()  # the models dict only (never held while predicting)
        self.models: OrderedDict[str, Any] = OrderedDict()  # iteration id -> Iteration with its model loaded

    def stop(self) -> None:
        """Ask both queues to stop, then give their running jobs ``STOP_GRACE_S`` seconds in all."""
        deadline = time.monotonic() + STOP_GRACE_S
        for queue in (self.training, self.exports):
            queue.request_stop()
        for queue in (self.training, self.exports):
            queue.join(deadline - time.monotonic())


def _state(app: ApiApp) -> _State:
    with app.lock:
        state = app.state.get(_STATE_KEY)
        if state is None:
            state = app.state[_STATE_KEY] = _State()
            app.on_stop.append(state.stop)
        return state


# ------------------------------------------------------------------ api-state.json
def _read_state(project_path: Path) -> dict[str, Any]:
    try:
        data = json.loads((project_path / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable, starting afresh: %s", project_path / STATE_FILE, exc)
        data = {}
    if not isinstance(data, dict):
        data = {}
    data.setdefault("iterations", {})
    return data


def _write_state(project_path: Path, data: dict[str, Any]) -> None:
    path = project_path / STATE_FILE
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _iteration_meta(app: ApiApp, project_path: Path, iteration_id: str) -> dict[str, Any]:
    with _state(app).file_lock:
        return dict(_read_state(project_path)["iterations"].get(iteration_id.lower(), {}))


def _update_meta(app: ApiApp, project_path: Path, iteration_id: str, **changes: Any) -> dict[str, Any]:
    """Merge ``changes`` into one iteration's entry (a value of None removes the key)."""
    with _state(app).file_lock:
        data = _read_state(project_path)
        entry = data["iterations"].setdefault(iteration_id.lower(), {})
        for key, value in changes.items():
            if value is None:
                entry.pop(key, None)
            else:
                entry[key] = value
        entry["lastModified"] = utc_now()
        _write_state(project_path, data)
        return dict(entry)


def _drop_meta(app: ApiApp, project_path: Path, iteration_id: str) -> None:
    with _state(app).file_lock:
        data = _read_state(project_path)
        if data["iterations"].pop(iteration_id.lower(), None) is not None:
            _write_state(project_path, data)


# =========================================================================== iterations as JSON
def _exporters() -> list[Any]:
    from exporters import list_exporters

    return list_exporters()


def _exportable_to(task: str) -> list[str]:
    """The hosted platform names this task can be exported to."""
    from edgevision.api.routes_data import export_platforms

    return export_platforms(task)


def _domain_id(domain: str, task: str) -> str | None:
    from edgevision.api.domains import domain_id

    try:
        return domain_id(domain, task)
    except KeyError:
        return None


def _classification_type(task: str) -> str | None:
    return {"multiclass": "Multiclass", "multilabel": "Multilabel"}.get(task)


def _completed_json(project: Any, it: Any, meta: dict[str, Any]) -> dict[str, Any]:
    info = it.info
    task = info.get("type", project.type)
    duration = float(info.get("duration_s") or 0.0)
    mode = info.get("mode", "quick")
    return {
        "id": it.id,
        "name": meta.get("name") or f"Iteration {it.number}",
        "status": "Completed",
        "created": meta.get("created") or it.created,
        "lastModified": meta.get("lastModified") or it.created,
        "trainedAt": it.created,
        "projectId": project.id,
        "exportable": True,
        "exportableTo": _exportable_to(task),
        "domainId": _domain_id(info.get("domain", project.domain), task),
        "classificationType": _classification_type(task),
        "trainingType": "Advanced" if mode == "advanced" else "Regular",
        "reservedBudgetInHours": int(meta.get("reservedBudgetInHours", 0)),
        "trainingTimeInMinutes": int(math.ceil(duration / 60.0)) if duration else 0,
        "publishName": meta.get("publishName"),
        "originalPublishResourceId": meta.get("publishResourceId"),
        "customBaseModelInfo": None,
        "trainingErrorDetails": None,
        "edgevisionNumber": it.number,
        "edgevisionMode": mode,
        "edgevisionInt8Ready": bool(info.get("int8_ready")),
    }


def _pending_json(project: Any, iteration_id: str, meta: dict[str, Any], job: Job | None,
                  queue: JobQueue | None = None) -> dict[str, Any]:
    """An iteration that is not (yet) in the store: training, queued or failed."""
    if job is not None and job.active:
        status, error = "Training", None
    else:
        status = "Failed"
        error = meta.get("error") or (job.error if job is not None else "") or \
            "the training did not finish: the server stopped while it ran; train again"
    out = {
        "id": iteration_id,
        "name": meta.get("name") or "Iteration (training)",
        "status": status,
        "created": meta.get("created"),
        "lastModified": meta.get("lastModified") or meta.get("created"),
        "trainedAt": None,
        "projectId": project.id,
        "exportable": False,
        "exportableTo": [],
        "domainId": _domain_id(project.domain, project.type),
        "classificationType": _classification_type(project.type),
        "trainingType": meta.get("trainingType", "Regular"),
        "reservedBudgetInHours": int(meta.get("reservedBudgetInHours", 0)),
        "trainingTimeInMinutes": 0,
        "publishName": None,
        "originalPublishResourceId": None,
        "customBaseModelInfo": None,
        "trainingErrorDetails": error,
        "edgevisionNumber": None,
        "edgevisionMode": _TRAINING_TYPES.get(str(meta.get("trainingType", "Regular")).lower(), "quick"),
        "edgevisionInt8Ready": bool(meta.get("int8Ready")),
    }
    if status == "Training":
        progress = job.progress_json() if job is not None else {"done": 0, "total": 0, "stage": "queued"}
        if job is not None and job.status == "queued":
            progress["stage"] = "queued"
            progress["ahead"] = queue.position(job) if queue is not None else 0
        out["edgevisionProgress"] = progress
    return out


def _all_iterations(app: ApiApp, project: Any) -> list[dict[str, Any]]:
    """Every iteration of a project as Iteration JSON, newest first (call under ``app.lock``)."""
    state = _state(app)
    with state.file_lock:
        metas = _read_state(project.path)["iterations"]
    stored = project.iterations()
    known = {it.id.lower() for it in stored}
    out = [_completed_json(project, it, metas.get(it.id.lower(), {})) for it in stored]
    for iteration_id, meta in metas.items():
        if iteration_id in known or not meta.get("pending"):
            continue
        out.append(_pending_json(project, iteration_id, meta, state.jobs.get(iteration_id), state.training))
    out.sort(key=lambda j: j.get("created") or "", reverse=True)
    return out


def _find_iteration(app: ApiApp, project: Any, iteration_id: str) -> Any:
    """The stored (completed) Iteration with this id, or None."""
    key = iteration_id.strip().lower()
    for it in project.iterations():
        if it.id.lower() == key:
            return it
    return None


def _iteration_json(app: ApiApp, project: Any, iteration_id: str) -> dict[str, Any]:
    for item in _all_iterations(app, project):
        if item["id"].lower() == iteration_id.strip().lower():
            return item
    raise ApiError(404, "NotFound", f"project {project.name!r} has no iteration with id {iteration_id!r}; "
                                    "GET .../iterations lists them")


def _completed(app: ApiApp, project: Any, iteration_id: str) -> Any:
    """The completed Iteration, or 404 / 400 (``BadRequestIterationNotCompleted``) naming why not."""
    it = _find_iteration(app, project, iteration_id)
    if it is None:
        found = _iteration_json(app, project, iteration_id)  # 404 when unknown
        raise ApiError(400, "BadRequestIterationNotCompleted",
                       f"iteration {iteration_id} is {found['status']}, not Completed"
                       + (f": {found['trainingErrorDetails']}" if found.get("trainingErrorDetails") else ""))
    return it


# =========================================================================== training
def _fingerprint(project: Any) -> str:
    """A hash of what a training would learn from (images, tags, regions, domain)."""
    digest = hashlib.sha256(f"{project.type}|{project.domain}".encode())
    if project.type == "detection":
        regions = project.image_regions()
        for record in sorted(project.images(), key=lambda r: r.sha256):
            boxes = sorted((r.tag, round(r.left, 5), round(r.top, 5), round(r.width, 5), round(r.height, 5))
                           for r in regions.get(record.id, []))
            digest.update(f"{record.sha256}:{boxes}\n".encode())
    else:
        for record in project.training_images():
            digest.update(f"{record.sha256}:{sorted(t.lower() for t in record.tags)}\n".encode())
    return digest.hexdigest()


def _validate_training(project: Any) -> None:
    """The minimum-data checks training makes first, before anything is queued."""
    try:
        if project.type == "detection":
            project.check_detection_ready()
        else:
            from edgevision.training.data import build_training_set

            build_training_set(project)
    except NotEnoughDataError as exc:
        raise ApiError(400, "BadRequestTrainingValidationFailed", str(exc)) from None


@ROUTES.training("POST", "projects/{projectId}/train")
def train_project(app: ApiApp, request: Request) -> dict[str, Any]:
    """Queue a training; answers the new iteration (status Training) at once."""
    project = app.project(request.params["projectId"])
    kind = (request.arg("trainingType") or "Regular").strip()
    mode = _TRAINING_TYPES.get(kind.lower())
    if mode is None:
        raise ApiError(400, "BadRequestInvalidTrainingType", f"trainingType={kind!r}: use Regular or Advanced")
    hours = request.number("reservedBudgetInHours", 0, low=0, high=24 * 7)
    minutes = request.number("edgevisionBudgetMinutes", 0, low=0, high=24 * 60 * 7)
    force = request.flag("forceTrain")
    int8_ready = request.flag("edgevisionInt8Ready")
    if int8_ready:
        from edgevision.errors import UsageError
        from edgevision.training.quantization import check_request

        try:
            check_request(project.type, int8_ready=True, mode=mode)
        except UsageError as exc:
            raise ApiError(400, "BadRequestNotSupported", f"edgevisionInt8Ready=true: {exc}") from exc
    body = request.json(required=False)
    if isinstance(body, dict) and (body.get("selectedTags") or body.get("customBaseModelInfo")):
        raise ApiError(400, "BadRequestNotSupported",
                       "selectedTags and customBaseModelInfo are not supported here: training uses every tag "
                       "(delete or untag what should be left out)")
    budget = None
    if mode == "advanced":
        budget = minutes or (hours * 60.0) or None  # None: the default budget
    _validate_training(project)
    state = _state(app)
    for job in state.jobs.values():
        if job.active and job.info["projectId"] == project.id:
            raise ApiError(400, "BadRequestTrainingAlreadyInProgress",
                           f"project {project.name!r} is already training (iteration {job.id}); wait for it")
    fingerprint = _fingerprint(project)
    if not force:
        with state.file_lock:
            metas = _read_state(project.path)["iterations"]
        stored = project.iterations()
        last = metas.get(stored[-1].id.lower(), {}) if stored else {}
        if stored and last.get("fingerprint") == fingerprint \
                and last.get("trainingType", "Regular").lower() == kind.lower() \
                and bool(last.get("int8Ready")) == int8_ready:
            raise ApiError(400, "BadRequestTrainingNotNeeded",
                           "nothing changed since the last training (same images, tags and training type); "
                           "pass forceTrain=true to train again")
    iteration_id = str(uuid.uuid4())
    number_guess = (max((it.number for it in project.iterations()), default=0) + 1)
    created = utc_now()
    canonical = "Advanced" if mode == "advanced" else "Regular"
    _update_meta(app, project.path, iteration_id, pending=True, created=created, trainingType=canonical,
                 reservedBudgetInHours=int(hours), fingerprint=fingerprint, name=f"Iteration {number_guess}",
                 budgetMinutes=budget, int8Ready=int8_ready or None)
    job = Job(iteration_id, _training_runner(app, project.path, iteration_id, mode, budget, int8_ready),
              info={"projectId": project.id, "projectPath": str(project.path)})
    state.jobs[iteration_id] = job
    state.training.submit(job)
    return _iteration_json(app, project, iteration_id)


def _training_runner(app: ApiApp, project_path: Path, iteration_id: str, mode: str, budget: float | None,
                     int8_ready: bool = False) -> Any:
    def run(job: Job) -> str:
        from edgevision.store.project import Project
        from edgevision.training import train

        try:
            with Project(project_path) as project:
                it = train(project, mode, budget=budget, progress=job.progress, iteration_id=iteration_id,
                           int8_ready=int8_ready)
                number = it.number
        except BaseException as exc:
            from edgevision.api.jobs import JobCancelled

            message = ("the server stopped during the training; train again" if isinstance(exc, JobCancelled)
                       else (str(exc).strip() or type(exc).__name__))
            if project_path.is_dir():
                _update_meta(app, project_path, iteration_id, error=message, failedAt=utc_now())
            raise
        _update_meta(app, project_path, iteration_id, pending=None, trainedNumber=number)
        return iteration_id

    return run


# =========================================================================== iterations
@ROUTES.training("GET", "projects/{projectId}/iterations")
def get_iterations(app: ApiApp, request: Request) -> list[dict[str, Any]]:
    return _all_iterations(app, app.project(request.params["projectId"]))


@ROUTES.training("GET", "projects/{projectId}/iterations/{iterationId}")
def get_iteration(app: ApiApp, request: Request) -> dict[str, Any]:
    return _iteration_json(app, app.project(request.params["projectId"]), request.params["iterationId"])


@ROUTES.training("PATCH", "projects/{projectId}/iterations/{iterationId}")
def update_iteration(app: ApiApp, request: Request) -> dict[str, Any]:
    """Rename an iteration (the only field the hosted API lets a client change)."""
    project = app.project(request.params["projectId"])
    iteration_id = request.params["iterationId"]
    _iteration_json(app, project, iteration_id)  # 404 when unknown
    body = request.json()
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise ApiError(400, "BadRequestInvalidIterationName", 'send {"name": "..."} with 1-100 characters')
    _update_meta(app, project.path, iteration_id, name=name.strip())
    return _iteration_json(app, project, iteration_id)


@ROUTES.training("DELETE", "projects/{projectId}/iterations/{iterationId}")
def delete_iteration(app: ApiApp, request: Request) -> None:
    project = app.project(request.params["projectId"])
    iteration_id = request.params["iterationId"].strip().lower()
    found = _iteration_json(app, project, iteration_id)  # 404 when unknown
    state = _state(app)
    job = state.jobs.get(iteration_id)
    if job is not None and job.active:
        if not state.training.cancel(job):
            raise ApiError(400, "BadRequestIterationIsTraining",
                           f"iteration {iteration_id} is training; delete it when it has finished")
    if found.get("publishName"):
        raise ApiError(400, "BadRequestIterationIsPublished",
                       f"iteration {iteration_id} is published as {found['publishName']!r}; unpublish it first")
    if any(j.active and j.info.get("iterationId") == iteration_id for j in state.export_jobs.values()):
        raise ApiError(400, "BadRequestExportAlreadyInProgress",
                       f"iteration {iteration_id} is being exported; delete it when the export has finished")
    it = _find_iteration(app, project, iteration_id)
    if it is not None:
        project.delete_iteration(it.number)
        _remove_exports(project.path, it.number)
    _drop_meta(app, project.path, iteration_id)
    state.jobs.pop(iteration_id, None)
    _forget_model(app, iteration_id)


def _remove_exports(project_path: Path, number: int) -> None:
    """An iteration's export folders and zips (its number may be reused by the next training)."""
    base = project_path / "exports"
    if not base.is_dir():
        return
    for path in base.iterdir():
        if path.name.startswith(f"{number}-"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


# =========================================================================== performance
def _figure(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


@ROUTES.training("GET", "projects/{projectId}/iterations/{iterationId}/performance")
def get_iteration_performance(app: ApiApp, request: Request) -> dict[str, Any]:
    """Per-tag precision/recall/AP at ``threshold`` (and ``overlapThreshold``), from the stored evaluation."""
    from edgevision.detection_metrics import DEFAULT_OVERLAP
    from edgevision.evaluation import DEFAULT_THRESHOLD

    project = app.project(request.params["projectId"])
    threshold = request.number("threshold", DEFAULT_THRESHOLD, low=0.0, high=1.0)
    overlap = request.number("overlapThreshold", DEFAULT_OVERLAP, low=0.0, high=1.0)
    it = _completed(app, project, request.params["iterationId"])
    try:
        metrics = it.evaluate(threshold=threshold, overlap=overlap)
    except FileNotFoundError:
        raise ApiError(400, "BadRequest", f"iteration {it.id} has no stored evaluation") from None
    return performance_json(it, metrics)


def performance_json(it: Any, metrics: Any) -> dict[str, Any]:
    """Hosted ``IterationPerformance`` from edgevision metrics (undefined figures are null)."""
    ids = dict(zip(it.labels, it.info.get("tag_ids") or []))
    folds = getattr(metrics, "folds", None) or {}
    detector = it.is_detector

    def std(key: str) -> float:
        return float(folds.get(key, {}).get("std", 0.0))

    tags = []
    for t in metrics.tags:
        entry = {
            "id": ids.get(t.name),
            "name": t.name,
            "precision": _figure(t.precision),
            "precisionStdDeviation": 0.0,
            "recall": _figure(t.recall),
            "recallStdDeviation": 0.0,
            "averagePrecision": _figure(t.average_precision),
            "edgevisionPredicted": t.predicted,
        }
        if detector:
            entry["edgevisionRegions"] = t.ground_truth
            entry["edgevisionAveragePrecision50To95"] = _figure(t.average_precision_50_95)
        else:
            entry["edgevisionImages"] = t.positives
        tags.append(entry)
    out = {
        "perTagPerformance": tags,
        "precision": _figure(metrics.precision),
        "precisionStdDeviation": std("precision"),
        "recall": _figure(metrics.recall),
        "recallStdDeviation": std("recall"),
        "averagePrecision": _figure(metrics.mean_average_precision),
        "edgevisionThreshold": metrics.threshold,
        "edgevisionImages": metrics.images,
        "edgevisionMethod": metrics.method,
    }
    if detector:
        out["edgevisionOverlapThreshold"] = metrics.overlap
        out["edgevisionMeanAveragePrecision50To95"] = _figure(metrics.mean_average_precision_50_95)
    elif getattr(metrics, "accuracy", None) is not None:
        out["edgevisionAccuracy"] = _figure(metrics.accuracy)
    return out


def _image_performances(request: Request, project: Any, it: Any) -> list[dict[str, Any]]:
    """Hosted ``ImagePerformance`` for each held-out image of the stored evaluation, filtered by ``tagIds``."""
    import numpy as np

    stored = np.load(it.path / "evaluation.npz")
    labels = it.labels
    ids = list(it.info.get("tag_ids") or [None] * len(labels))
    images = {r.id: r for r in project.images()}
    base = f"{request.base_url}/edgevision/projects/{project.id}/images"
    out = []
    if it.is_detector:
        from edgevision.training.detection import split_evaluation

        preds, truth = split_evaluation(stored)
        rows = []
        for image_id, (boxes, classes, scores), (gt_boxes, gt_classes) in zip(stored["image_ids"], preds, truth):
            predictions = [{"probability": float(sc), "tagId": ids[int(c)], "tagName": labels[int(c)],
                            "boundingBox": _box(b), "tagType": "Regular"}
                           for b, c, sc in sorted(zip(boxes, classes, scores), key=lambda x: -float(x[2]))]
            regions = [{"regionId": None, "tagName": labels[int(c)], "created": None, "tagId": ids[int(c)], **_box(b)}
                       for b, c in zip(gt_boxes, gt_classes)]
            rows.append((str(image_id), {int(c) for c in gt_classes}, predictions, [], regions))
    else:
        rows = []
        for image_id, probs, target in zip(stored["image_ids"], stored["probabilities"], stored["targets"]):
            present = {int(c) for c in np.nonzero(target)[0]}
            predictions = sorted(({"probability": float(p), "tagId": ids[c], "tagName": labels[c], "boundingBox": None,
                                   "tagType": "Regular"} for c, p in enumerate(probs)), key=lambda x: -x["probability"])
            tags = [{"tagId": ids[c], "tagName": labels[c], "created": None} for c in sorted(present)]
            rows.append((str(image_id), present, predictions, tags, None))
    wanted = {t.lower() for t in request.args("tagIds")}
    for image_id, present, predictions, tags, regions in rows:
        if wanted and not any(str(ids[c]).lower() in wanted for c in present):
            continue
        record = images.get(image_id)
        out.append({
            "id": image_id,
            "created": record.created if record else None,
            "width": record.width if record else None,
            "height": record.height if record else None,
            "imageUri": f"{base}/{image_id}/original" if record else None,
            "thumbnailUri": f"{base}/{image_id}/thumbnail" if record else None,
            "tags": tags,
            "regions": regions,
            "predictions": predictions,
        })
    order = (request.arg("orderBy") or "Newest").lower()
    if order not in ("newest", "oldest"):
        raise ApiError(400, "BadRequest", f"orderBy={request.arg('orderBy')!r}: use Newest or Oldest")
    out.sort(key=lambda x: x["created"] or "", reverse=order == "newest")
    return out


def _box(b: Any) -> dict[str, float]:
    x1, y1, x2, y2 = (float(v) for v in b)
    return {"left": x1, "top": y1, "width": x2 - x1, "height": y2 - y1}


@ROUTES.training("GET", "projects/{projectId}/iterations/{iterationId}/performance/images")
def get_image_performances(app: ApiApp, request: Request) -> list[dict[str, Any]]:
    """The held-out images the figures were computed on, with the iteration's predictions (``take``/``skip``)."""
    project = app.project(request.params["projectId"])
    it = _completed(app, project, request.params["iterationId"])
    take = int(request.number("take", 50, low=0, high=256))
    skip = int(request.number("skip", 0, low=0, high=2**31))
    return _image_performances(request, project, it)[skip:skip + take]


@ROUTES.training("GET", "projects/{projectId}/iterations/{iterationId}/performance/images/count")
def get_image_performance_count(app: ApiApp, request: Request) -> int:
    project = app.project(request.params["projectId"])
    it = _completed(app, project, request.params["iterationId"])
    return len(_image_performances(request, project, it))


# =========================================================================== publish
@ROUTES.training("POST", "projects/{projectId}/iterations/{iterationId}/publish")
def publish_iteration(app: ApiApp, request: Request) -> bool:
    """Publish a completed iteration under ``publishName`` (served by the prediction routes)."""
    project = app.project(request.params["projectId"])
    it = _completed(app, project, request.params["iterationId"])
    name = (request.arg("publishName") or "").strip()
    if not _PUBLISH_NAME.fullmatch(name):
        raise ApiError(400, "BadRequestInvalidPublishName",
                       "publishName must be 1-100 characters without '/', '\\' or control characters")
    resource = request.arg("predictionId") or ""
    overwrite = request.flag("overwrite")
    state = _state(app)
    with state.file_lock:
        data = _read_state(project.path)
        holders = [k for k, v in data["iterations"].items()
                   if k != it.id.lower() and str(v.get("publishName", "")).lower() == name.lower()]
        if holders and not overwrite:
            raise ApiError(400, "BadRequestPublishNameNotUnique",
                           f"another iteration of this project is published as {name!r}; unpublish it, "
                           "choose another name or pass overwrite=true")
        for other in holders:
            data["iterations"][other].pop("publishName", None)
            data["iterations"][other].pop("publishResourceId", None)
        entry = data["iterations"].setdefault(it.id.lower(), {})
        entry.update(publishName=name, publishResourceId=resource, publishedAt=utc_now(), lastModified=utc_now())
        _write_state(project.path, data)
    return True


@ROUTES.training("DELETE", "projects/{projectId}/iterations/{iterationId}/publish")
def unpublish_iteration(app: ApiApp, request: Request) -> None:
    project = app.project(request.params["projectId"])
    found = _iteration_json(app, project, request.params["iterationId"])
    if not found.get("publishName"):
        raise ApiError(400, "BadRequestIterationNotPublished", f"iteration {found['id']} is not published")
    _update_meta(app, project.path, found["id"], publishName=None, publishResourceId=None, publishedAt=None)
    _forget_model(app, found["id"])


# =========================================================================== prediction
def _loaded(app: ApiApp, it: Any) -> Any:
    """The cached Iteration for ``it`` (its model is loaded by the first predict and kept)."""
    state = _state(app)
    key = it.id.lower()
    with state.cache_lock:
        cached = state.models.get(key)
        if cached is None:
            cached = state.models[key] = it
            while len(state.models) > MODEL_CACHE_SIZE:
                state.models.popitem(last=False)
        else:
            state.models.move_to_end(key)
        return cached


def _forget_model(app: ApiApp, iteration_id: str) -> None:
    state = _state(app)
    with state.cache_lock:
        state.models.pop(iteration_id.lower(), None)


def _predict(app: ApiApp, project: Any, it: Any, data: bytes) -> dict[str, Any]:
    """ImagePrediction JSON for image bytes (project/iteration named by id, as the hosted API does)."""
    from edgevision import config
    from runtimes.http_body import decode_image

    if len(data) > config.MAX_TRAIN_IMAGE_BYTES:
        raise ApiError(400, "BadRequestImageSizeBytes",
                       f"the image is {len(data)} bytes; the limit is {config.MAX_TRAIN_IMAGE_BYTES} (6 MB)")
    image = decode_image(data)  # 400 for unreadable or oversized images
    state = _state(app)
    try:
        model = _loaded(app, it)
        with state.predict_lock:
            result = model.predict([image])[0]
        payload = result.to_dict()
        json.dumps(payload, allow_nan=False)
    except ApiError:
        raise
    except Exception:
        log.exception("iteration %s failed on a %dx%d image", it.id, *image.size)
        raise ApiError(500, "ErrorPrediction", "the model failed on this image; see the server's log") from None
    payload["project"] = project.id
    payload["iteration"] = it.id
    return payload


def _image_bytes(app: ApiApp, request: Request, source: str) -> bytes:
    from runtimes.http_body import image_from_body, url_from_body
    from runtimes.url_fetch import fetch_image_url

    if source == "url":
        # Only public addresses (fetch_image_url's default check): the server's own network is off limits.
        return fetch_image_url(url_from_body(request.body()), max_bytes=6 * 1024 * 1024)
    return image_from_body(request.body(), request.headers.get("Content-Type"))


def _store(app: ApiApp, project: Any, data: bytes, iteration_id: str, payload: dict[str, Any]) -> None:
    """Keep the image and the answer as a stored prediction (the answer's ``id`` becomes its id)."""
    from edgevision.errors import ImageRejectedError
    from edgevision.store.predictions import store_prediction

    try:
        # Under the store lock, and only while the project still exists: a DELETE of the project
        # during the inference must not be undone by writing into its removed folder.
        with app.lock:
            if not (project.path / "project.sqlite").is_file():
                return
            payload["id"] = store_prediction(project, data, iteration_id=iteration_id, predictions=payload["predictions"])
    except ImageRejectedError as exc:  # the model could read it, the store cannot keep it: answer all the same
        log.warning("prediction for %s not stored: %s", project.name, exc)


def _published(app: ApiApp, project: Any, name: str) -> Any:
    with _state(app).file_lock:
        metas = _read_state(project.path)["iterations"]
    wanted = [k for k, v in metas.items() if str(v.get("publishName", "")).lower() == name.lower()]
    for it in project.iterations():
        if it.id.lower() in wanted:
            return it
    raise ApiError(404, "NotFound", f"project {project.id} has no iteration published as {name!r}; publish one "
                                    "with POST .../iterations/{iterationId}/publish?publishName=...")


def _prediction(app: ApiApp, request: Request) -> Response:
    p = request.params
    if not _VERSION.fullmatch(p["version"]):
        raise ApiError(404, "NotFound", f"no route {request.path[:200]}: the version must be v3.N")
    kind, source = p["kind"].lower(), p["source"].lower()
    if kind not in ("classify", "detect") or source not in ("image", "url"):
        raise ApiError(404, "NotFound", f"no route {request.path[:200]}; use .../classify|detect/iterations/"
                                        "{publishName}/image|url[/nostore]")
    app.check_key(request, "Prediction-Key")
    with app.lock:
        project = app.project(p["projectId"])
        it = _published(app, project, p["publishName"])
    if kind == "classify" and it.is_detector:
        raise ApiError(400, "BadRequestNotSupported", "this iteration is an object detector: use the /detect/ route")
    if kind == "detect" and not it.is_detector:
        raise ApiError(400, "BadRequestNotSupported", "this iteration is a classifier: use the /classify/ route")
    data = _image_bytes(app, request, source)
    payload = _predict(app, project, it, data)
    if not request.path.rstrip("/").lower().endswith("/nostore"):
        _store(app, project, data, it.id, payload)
    return Response.json(payload)


_PREDICTION = "/customvision/{version}/prediction/{projectId}/{kind}/iterations/{publishName}/{source}"
ROUTES.path("POST", _PREDICTION, locked=False)(_prediction)
ROUTES.path("POST", _PREDICTION + "/nostore", locked=False)(_prediction)


def _quick_test(app: ApiApp, request: Request, source: str) -> Response:
    with app.lock:
        project = app.project(request.params["projectId"])
        wanted = request.arg("iterationId")
        if wanted:
            it = _completed(app, project, wanted)
        else:
            stored = project.iterations()
            if not stored:
                raise ApiError(400, "BadRequestNoIteration", f"project {project.name!r} has no trained iteration yet")
            it = stored[-1]
    store = request.flag("store", True)
    if source == "image":
        parts = [part for part in request.form() if part.name == "imageData"]
        if len(parts) != 1:
            raise ApiError(400, "BadRequestImageStream", "send exactly one image as the multipart field 'imageData'")
        data = parts[0].data
    else:
        data = _image_bytes(app, request, "url")
    payload = _predict(app, project, it, data)
    if store:
        _store(app, project, data, it.id, payload)
    return Response.json(payload)


@ROUTES.training("POST", "projects/{projectId}/quicktest/image", locked=False)
def quick_test_image(app: ApiApp, request: Request) -> Response:
    """Predict one image with an iteration (default: the latest); stores it unless ``store=false``."""
    return _quick_test(app, request, "image")


@ROUTES.training("POST", "projects/{projectId}/quicktest/url", locked=False)
def quick_test_url(app: ApiApp, request: Request) -> Response:
    return _quick_test(app, request, "url")


# =========================================================================== exports
def _resolve_export(platform: str, flavor: str | None, task: str) -> tuple[Any, str]:
    """(exporter class, our flavor) for a hosted platform/flavor or one of our format/flavor names."""
    from exporters import get_exporter
    from exporters.base import RAW_FLAVOR, OptionsError

    wanted = (platform.strip().lower(), (flavor or "").strip().lower())
    for cls in _exporters():
        for (hp, hf), ours in cls.hosted_exports.items():
            if (hp.lower(), hf.lower()) == wanted:
                if task not in cls.tasks:
                    break
                return cls, ours
    try:
        cls = get_exporter(wanted[0])
    except OptionsError as exc:
        hosted = sorted({f"{hp}{'/' + hf if hf else ''}" for c in _exporters() for hp, hf in c.hosted_exports})
        raise ApiError(400, "BadRequestExportPlatformNotSupported",
                       f"{exc}; hosted platform/flavor pairs served here: {', '.join(hosted)}") from None
    if task not in cls.tasks:
        raise ApiError(400, "BadRequestExportPlatformNotSupportedForModel",
                       f"format {cls.name!r} does not export {task} models")
    ours = wanted[1] or cls.default_flavor
    if ours not in cls.flavors:
        raise ApiError(400, "BadRequestExportFlavorNotSupported",
                       f"format {cls.name!r} has no flavor {flavor!r} (flavors: {', '.join(cls.flavors)})")
    if ours == RAW_FLAVOR and task != "detection":
        raise ApiError(400, "BadRequestExportFlavorNotSupported", f"flavor {RAW_FLAVOR!r} is for object detectors")
    return cls, ours


def _hosted_names(cls: Any, flavor: str) -> tuple[str, str | None]:
    """The hosted platform/flavor to show for one of our exports (our names when there is none)."""
    for (hp, hf), ours in cls.hosted_exports.items():
        if ours == flavor:
            return hp, (hf or None)
    return cls.name, flavor


#: How long a signed export download link (``downloadUri`` on a key-protected server) stays valid.
#: Every GET of the exports hands out a fresh one.
DOWNLOAD_LINK_SECONDS = 24 * 3600


def _download_uri(app: ApiApp, request: Request, project_id: str, iteration_id: str, name: str) -> str:
    path = f"/edgevision/exports/{project_id}/{iteration_id}/{name}.zip"
    uri = request.base_url + path
    if app.key is not None:
        expires = int(time.time()) + DOWNLOAD_LINK_SECONDS
        uri += f"?se={expires}&sig=" + _signature(app, path, expires)
    return uri


def _signature(app: ApiApp, path: str, expires: int) -> str:
    """Like the hosted service's SAS URLs: the download URL carries its own authorisation, until ``expires``
    (Unix seconds, signed with the path so it cannot be moved)."""
    message = f"{path.lower()}|{expires}".encode()
    return hmac.new((app.key or "").encode(), message, hashlib.sha256).hexdigest()[:40]


def _link_state(app: ApiApp, request: Request) -> str:
    """``ok`` when the request's ``se`` / ``sig`` sign its path and have not expired; ``expired`` when they
    sign it but the time has passed; ``none`` otherwise (no signature, or a wrong one)."""
    signature, expires = request.arg("sig"), request.arg("se")
    if not signature or not expires or not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
        return "none"
    if not hmac.compare_digest(signature.encode(), _signature(app, request.path, int(expires)).encode()):
        return "none"
    return "ok" if int(expires) >= time.time() else "expired"


def _export_json(app: ApiApp, request: Request, project: Any, it: Any, name: str, record: dict[str, Any],
                 job: Job | None) -> dict[str, Any]:
    status = record.get("status", "Failed")
    error = record.get("error")
    if status == "Exporting" and (job is None or not job.active):
        status, error = "Failed", (job.error if job is not None and job.error else
                                   "the export did not finish: the server stopped while it ran; export again")
    fmt, _, flavor = name.partition("-")
    zip_path = project.path / "exports" / f"{it.number}-{name}.zip"
    if status == "Done" and not zip_path.is_file():
        status, error = "Failed", "the export's zip file is gone; export again"
    verification = record.get("verification") or {}
    return {
        "platform": record.get("platform"),
        "status": status,
        "downloadUri": _download_uri(app, request, project.id, it.id, name) if status == "Done" else None,
        "flavor": record.get("flavor"),
        "newerVersionAvailable": False,
        "edgevisionFormat": fmt,
        "edgevisionFlavor": flavor,
        "edgevisionVerification": {"status": verification.get("status", "pending" if status == "Exporting" else "none"),
                                   "detail": verification.get("detail", "")},
        "edgevisionError": error,
    }


@ROUTES.training("GET", "projects/{projectId}/iterations/{iterationId}/export")
def get_exports(app: ApiApp, request: Request) -> list[dict[str, Any]]:
    project = app.project(request.params["projectId"])
    it = _completed(app, project, request.params["iterationId"])
    meta = _iteration_meta(app, project.path, it.id)
    jobs = _state(app).export_jobs
    return [_export_json(app, request, project, it, name, record, jobs.get(f"{it.id.lower()}/{name}"))
            for name, record in sorted(meta.get("exports", {}).items())]


@ROUTES.training("POST", "projects/{projectId}/iterations/{iterationId}/export")
def export_iteration(app: ApiApp, request: Request) -> dict[str, Any]:
    """Start an export (platform/flavor, hosted or our own names); answers the Export record at once."""
    project = app.project(request.params["projectId"])
    it = _completed(app, project, request.params["iterationId"])
    platform = request.arg("platform")
    if not platform:
        raise ApiError(400, "BadRequestExportPlatformNotSupported", "the platform query parameter is required")
    requested_flavor = request.arg("flavor")
    cls, flavor = _resolve_export(platform, requested_flavor, it.info.get("type", project.type))
    name = f"{cls.name}-{flavor}"
    key = f"{it.id.lower()}/{name}"
    state = _state(app)
    job = state.export_jobs.get(key)
    meta = _iteration_meta(app, project.path, it.id)
    record = meta.get("exports", {}).get(name)
    if record is not None:
        shown = _export_json(app, request, project, it, name, record, job)
        if shown["status"] in ("Exporting", "Done"):
            return shown  # already there or on its way: exporting the same iteration again gives the same files
    shown_platform, shown_flavor = _hosted_names(cls, flavor)
    if cls.name != platform.strip().lower():  # asked by a hosted name: answer with the names it used
        shown_platform, shown_flavor = platform.strip(), (requested_flavor.strip() if requested_flavor else None)
    record = {"status": "Exporting", "platform": shown_platform, "flavor": shown_flavor, "created": utc_now()}
    _set_export(app, project.path, it.id, name, record)
    job = Job(key, _export_runner(app, project.path, it.id, it.number, cls.name, flavor, name),
              info={"projectId": project.id, "iterationId": it.id.lower()})
    state.export_jobs[key] = job
    state.exports.submit(job)
    return _export_json(app, request, project, it, name, record, job)


def _set_export(app: ApiApp, project_path: Path, iteration_id: str, name: str, record: dict[str, Any]) -> None:
    with _state(app).file_lock:
        data = _read_state(project_path)
        entry = data["iterations"].setdefault(iteration_id.lower(), {})
        entry.setdefault("exports", {})[name] = record
        _write_state(project_path, data)


def _export_runner(app: ApiApp, project_path: Path, iteration_id: str, number: int, fmt: str, flavor: str,
                   name: str) -> Any:
    def run(job: Job) -> None:
        from edgevision.errors import VerificationError
        from edgevision.store.project import Project

        record = dict(_iteration_meta(app, project_path, iteration_id).get("exports", {}).get(name, {}))
        try:
            job.progress(0, 1, f"exporting to {fmt} ({flavor})")
            with Project(project_path) as project:
                it = project.iteration(number)
                if it.id.lower() != iteration_id.lower():
                    raise IterationNotFoundError(f"iteration {iteration_id} was deleted")
                result = it.export(fmt, flavor=flavor, zip=True)
            v = result.verification
            detail = v.reason or ", ".join(f"{k}={val:.4g}" if isinstance(val, float) else f"{k}={val}"
                                           for k, val in v.details.items())
            record.update(status="Done", verification={"status": v.status, "detail": detail}, error=None,
                          finished=utc_now())
            job.progress(1, 1, "done")
        except VerificationError as exc:
            record.update(status="Failed", verification={"status": "failed", "detail": str(exc)}, error=str(exc))
            raise
        except BaseException as exc:
            record.update(status="Failed", error=str(exc).strip() or type(exc).__name__)
            raise
        finally:
            if project_path.is_dir():
                _set_export(app, project_path, iteration_id, name, {k: v for k, v in record.items() if v is not None})

    return run


@ROUTES.path("GET", "/edgevision/exports/{projectId}/{iterationId}/{file}", locked=False)
def download_export(app: ApiApp, request: Request) -> Response:
    """An export's zip (the Export record's ``downloadUri``): the key, or the URL's own ``sig``."""
    link = _link_state(app, request) if app.key is not None else "ok"
    if link != "ok":
        try:
            app.check_key(request, "Training-Key")
        except ApiError:
            if link == "expired":
                raise ApiError(401, "Unauthorized", "this download link has expired: get the iteration's exports "
                                                    "again for a fresh downloadUri, or send the Training-Key header"
                               ) from None
            raise
    file = request.params["file"]
    if not file.lower().endswith(".zip"):
        raise ApiError(404, "NotFound", "export downloads end in .zip")
    name = file[:-4]
    with app.lock:
        project = app.project(request.params["projectId"])
        it = _completed(app, project, request.params["iterationId"])
        record = _iteration_meta(app, project.path, it.id).get("exports", {}).get(name)
        zip_path = project.path / "exports" / f"{it.number}-{name}.zip"
    if record is None or record.get("status") != "Done" or not zip_path.is_file():
        raise ApiError(404, "NotFound", f"no finished export {name!r} of iteration {it.id}")
    filename = f"{project.name}-{it.number}-{name}.zip"
    return Response(200, body=zip_path.read_bytes(), content_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@ROUTES.path("GET", "/edgevision/exporters", locked=False)
def list_export_formats(app: ApiApp, request: Request) -> list[dict[str, Any]]:
    """Every export format and flavor of the exporter registry (what the portal offers)."""
    return [{
        "name": cls.name,
        "flavors": list(cls.flavors),
        "defaultFlavor": cls.default_flavor,
        "tasks": list(cls.tasks),
        "runsOn": cls.runs_on,
        "description": cls.description,
        "hosted": [{"platform": hp, "flavor": hf or None, "edgevisionFlavor": ours}
                   for (hp, hf), ours in cls.hosted_exports.items()],
    } for cls in _exporters()]


def training_in_progress(app: ApiApp, project_id: str) -> bool:
    """Whether a training or export of this project is queued or running (refuse deleting it meanwhile)."""
    state = app.state.get(_STATE_KEY)
    if state is None:
        return False
    jobs = list(state.jobs.values()) + list(state.export_jobs.values())
    return any(j.active and j.info.get("projectId", "").lower() == project_id.lower() for j in jobs)


__all__ = ["ROUTES", "performance_json", "training_in_progress"]
