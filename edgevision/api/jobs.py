"""Background jobs for the training API: one worker thread per queue, jobs run one at a time.

Training and exporting take minutes and all the CPU they can get, so each kind has one queue and
one worker: a second training waits for the first (its iteration answers ``Training`` with
``edgevisionProgress.stage == "queued"`` meanwhile). A job never holds the API's store lock for
long: it opens its own :class:`~edgevision.store.project.Project` (its own SQLite connection).

Stopping (:meth:`JobQueue.stop`, called from ``ApiApp.on_stop``) drops the queued jobs and asks the
running one to stop: its next ``progress`` call raises :class:`JobCancelled`, which unwinds training
through its clean-up (the staging folder is discarded, no iteration is recorded). Should a job not
reach a ``progress`` call within the grace period, the process exits anyway; the staging folder it
leaves is locked by this process and swept by the next open of the project, and an iteration is
only ever recorded complete (see ``Project._commit_iteration``).
"""

from __future__ import annotations

import collections
import datetime as _dt
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

__all__ = ["Job", "JobCancelled", "JobQueue", "utc_now"]


def utc_now() -> str:
    """The hosted API's timestamp form: ISO 8601 UTC with milliseconds and a ``Z``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobCancelled(BaseException):
    """Raised inside a job (from :meth:`Job.progress` / :meth:`Job.check`) when the server stops.

    A ``BaseException`` so that ``except Exception`` clean-up code in the job does not swallow it,
    while ``except BaseException: ...; raise`` clean-up (training's staging folder) still runs.
    """


@dataclass
class Job:
    """One unit of background work.

    Attributes:
        id: the job's id (the iteration id for a training, ``<iteration>/<format>-<flavor>`` for an export).
        run: ``run(job)`` does the work; it should call :meth:`progress` now and then.
        done, total, stage: the latest progress report.
        status: ``queued``, ``running``, ``done``, ``failed`` or ``cancelled``.
        error: the failure's message.
        result: what ``run`` returned.
        info: free-form data the route module keeps with the job.
    """

    id: str
    run: Callable[["Job"], Any]
    info: dict[str, Any] = field(default_factory=dict)
    done: int = 0
    total: int = 0
    stage: str = "queued"
    status: str = "queued"
    error: str = ""
    result: Any = None
    created: str = field(default_factory=utc_now)
    started: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def progress(self, done: int, total: int, what: str) -> None:
        """The training ``progress(done, total, what)`` callback; raises :class:`JobCancelled` when stopping."""
        self.done, self.total, self.stage = int(done), int(total), str(what)
        self.check()

    def check(self) -> None:
        """Raise :class:`JobCancelled` if the job was asked to stop."""
        if self._cancel.is_set():
            raise JobCancelled(f"job {self.id} cancelled: the server is stopping")

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    def progress_json(self) -> dict[str, Any]:
        """``{done, total, stage}`` as the API shows it."""
        return {"done": self.done, "total": self.total, "stage": self.stage}


class JobQueue:
    """A FIFO of jobs served by one daemon worker thread (started on the first submit)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pending: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def submit(self, job: Job) -> Job:
        """Queue a job; it runs after those queued before it.

        Raises:
            RuntimeError: the queue is stopping.
        """
        with self._cond:
            if self._stopping:
                raise RuntimeError(f"the {self.name} queue is stopping")
            self._pending.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"edgevision-{self.name}", daemon=True)
                self._thread.start()
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> bool:
        """Remove a job that has not started; False if it is running or finished."""
        with self._cond:
            try:
                self._pending.remove(job)
            except ValueError:
                return False
            job.status, job.stage = "cancelled", "cancelled"
            return True

    def position(self, job: Job) -> int:
        """How many jobs run before this one (0: it is running or next)."""
        with self._cond:
            try:
                return list(self._pending).index(job) + (1 if self._running is not None else 0)
            except ValueError:
                return 0

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._running is not None or bool(self._pending)

    def stop(self, timeout: float = 30.0) -> bool:
        """Drop queued jobs, ask the running one to stop and wait up to ``timeout`` seconds for it.

        Returns:
            True when the worker has finished (False: it is still inside a long step; it is a daemon
            thread and dies with the process, leaving nothing recorded half-way).
        """
        self.request_stop()
        return self.join(timeout)

    def request_stop(self) -> None:
        """Drop queued jobs and ask the running one to stop, without waiting; no job is taken after it."""
        with self._cond:
            self._stopping = True
            while self._pending:
                job = self._pending.popleft()
                job.status, job.stage = "cancelled", "cancelled"
            if self._running is not None:
                self._running._cancel.set()
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the worker to end (after :meth:`request_stop`)."""
        with self._cond:
            thread = self._thread
        if thread is None:
            return True
        thread.join(max(0.0, timeout))
        if thread.is_alive():
            log.warning("%s job still running after %.0f s; leaving it to end with the process", self.name, timeout)
            return False
        return True

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._pending.popleft()
                self._running = job
                job.status, job.stage, job.started = "running", "starting", time.monotonic()
            try:
                job.result = job.run(job)
                job.status = "done"
            except JobCancelled as exc:
                job.status, job.error = "cancelled", str(exc)
                log.info("%s", exc)
            except BaseException as exc:  # a failed job must not kill the worker
                job.status, job.error = "failed", _message(exc)
                log.warning("%s job %s failed: %s", self.name, job.id, job.error, exc_info=not _expected(exc))
            finally:
                with self._cond:
                    self._running = None


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


def _expected(exc: BaseException) -> bool:
    """edgevision's own errors (not enough data, failed verification) need no stack trace in the log."""
    from edgevision.errors import EdgevisionError

    return isinstance(exc, EdgevisionError)
