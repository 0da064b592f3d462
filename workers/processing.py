"""Claim leased images from the database, classify them in batches, write the verdicts back.

Celery-free: the Celery task, the poll loop and tests all drive the same ``BatchProcessor``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine

from inspector.db import queries
from inspector.db.records import ClaimedImage, NewResult
from inspector.errors import ImageDecodeError, ModelIntegrityError, ModelStoreError
from inspector.imaging import read_image
from inspector.inference import Classifier, Prediction
from inspector.settings import DEFAULT_MAX_IMAGE_PIXELS
from inspector.store import ModelStore

log = logging.getLogger(__name__)

ClassifierLoader = Callable[[ModelStore, str, str, int], Classifier]


def default_worker_id() -> str:
    """host:pid:random — unique per process, readable in the images' lease_owner column."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _load_classifier(store: ModelStore, ref: str, device: str, batch_size: int) -> Classifier:
    return Classifier.from_store(store, ref, device=device, batch_size=batch_size)


class UnknownModelError(LookupError):
    """A job asked for a model the store does not hold (a permanent error for its images)."""


@dataclass
class _Loaded:
    classifier: Classifier
    production: int | None  # the production pointer when loaded (None: a pinned version)
    checked_at: float


def _jobs(images: Sequence[ClaimedImage]) -> str:
    return ",".join(sorted({c.job_id for c in images}))


def to_new_result(image_id: int, prediction: Prediction, classifier: Classifier) -> NewResult:
    meta = classifier.meta
    return NewResult(
        image_id=image_id,
        model_name=meta.name,
        model_version=meta.version,
        label=prediction.label,
        confidence=prediction.confidence,
        defect_score=prediction.defect_score,
        is_defect=prediction.is_defect,
        flagged=prediction.flagged,
        probabilities=prediction.probabilities,
        scale_probabilities=dict(prediction.scale_probabilities.items()),
    )


@contextmanager
def keep_leased(
    engine: Engine, worker_id: str, image_ids: Sequence[int], lease_seconds: float
) -> Iterator[None]:
    """Renew the lease on ``image_ids`` every third of ``lease_seconds`` while the block runs.

    A batch that outlasts its lease (a slow CPU, a huge frame tiled) is then not claimed by a
    second worker; a worker that dies stops renewing, and its images are claimed again.
    """
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_seconds / 3):
            try:
                kept = queries.extend_lease(
                    engine, worker_id=worker_id, image_ids=image_ids, lease_seconds=lease_seconds
                )
                log.debug("worker %s: renewed the lease on %d images", worker_id, len(kept))
            except Exception:  # the next round retries; the lease may still be long enough
                log.exception("worker %s: lease renewal failed", worker_id)

    thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class BatchProcessor:
    """Classifies claimed images batch by batch; the database holds all state between batches.

    ``default_model`` names the model for jobs that ask for none; when None, the store's only
    model (or only model with a production version) is used. Classifiers are loaded lazily,
    once per process, and a production-pointer change is noticed within ``recheck_seconds``.
    """

    def __init__(
        self,
        engine: Engine,
        store: ModelStore,
        *,
        device: str = "auto",
        batch_size: int = 32,
        lease_seconds: float = 600.0,
        max_attempts: int = 3,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        worker_id: str | None = None,
        default_model: str | None = None,
        recheck_seconds: float = 30.0,
        loader: ClassifierLoader = _load_classifier,
    ) -> None:
        self.engine = engine
        self.store = store
        self.device = device
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.max_pixels = max_pixels
        self.worker_id = worker_id or default_worker_id()
        self.default_model = default_model
        self.recheck_seconds = recheck_seconds
        self._loader = loader
        self._cache: dict[str, _Loaded] = {}

    # -- models --------------------------------------------------------------------------------
    def _model_name(self, requested: str | None) -> str:
        if requested is not None:
            return requested
        if self.default_model is not None:
            return self.default_model
        names = self.store.names()
        in_production = [n for n in names if self.store.production(n) is not None]
        if len(in_production) == 1:
            return in_production[0]
        if len(names) == 1:
            return names[0]
        known = ", ".join(names) or "none"
        raise UnknownModelError(
            f"the job names no model and the store at {self.store.root} has no single default "
            f"(models there: {known}); name one in the job or configure a default model"
        )

    def classifier(self, requested: str | None) -> Classifier:
        """The classifier for a job's model name (None: the default), loaded once and cached."""
        name = self._model_name(requested)
        pinned = ":" in name
        base = name.split(":", 1)[0]
        if not pinned and base not in self.store.names():
            known = ", ".join(self.store.names()) or "none"
            raise UnknownModelError(
                f"unknown model {name!r}: the store at {self.store.root} holds {known}"
            )
        now = time.monotonic()
        loaded = self._cache.get(name)
        if loaded is not None and (pinned or now - loaded.checked_at < self.recheck_seconds):
            return loaded.classifier
        production = None if pinned else self.store.production(base)
        if loaded is not None and production == loaded.production:
            loaded.checked_at = now
            return loaded.classifier
        try:
            classifier = self._loader(self.store, name, self.device, self.batch_size)
        except ModelIntegrityError:
            raise  # damaged files: retried, then "failed N times" with the reason
        except ModelStoreError as exc:
            raise UnknownModelError(str(exc)) from exc  # e.g. a version that does not exist
        log.info(
            "worker %s: loaded model %s:%d (requested %r)",
            self.worker_id,
            classifier.meta.name,
            classifier.meta.version,
            name,
        )
        self._cache[name] = _Loaded(classifier, production, now)
        return classifier

    def loaded_models(self) -> list[str]:
        """``name:version`` of every classifier this process holds."""
        return sorted(
            {f"{c.classifier.meta.name}:{c.classifier.meta.version}" for c in self._cache.values()}
        )

    def preload(self) -> str | None:
        """Load the default model now (not on the first image); None when there is none."""
        try:
            meta = self.classifier(None).meta
        except UnknownModelError as exc:
            log.warning("worker %s: no model loaded at start: %s", self.worker_id, exc)
            return None
        return f"{meta.name}:{meta.version}"

    # -- batches -------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Claim up to ``batch_size`` images and settle each one; returns how many were claimed."""
        claimed = queries.claim_images(
            self.engine,
            worker_id=self.worker_id,
            limit=self.batch_size,
            lease_seconds=self.lease_seconds,
            max_attempts=self.max_attempts,
        )
        if not claimed:
            return 0
        log.info(
            "worker %s: claimed %d images of job(s) %s",
            self.worker_id,
            len(claimed),
            _jobs(claimed),
        )
        groups: dict[str | None, list[ClaimedImage]] = defaultdict(list)
        for image in claimed:
            groups[image.model_name].append(image)
        with keep_leased(self.engine, self.worker_id, [c.id for c in claimed], self.lease_seconds):
            self._process_groups(groups)
        return len(claimed)

    def _process_groups(self, groups: dict[str | None, list[ClaimedImage]]) -> None:
        for model_name, group in groups.items():
            try:
                self._process_group(model_name, group)
            except Exception as exc:  # one bad batch must not stop the worker
                reason = f"{type(exc).__name__}: {exc}"
                log.exception(
                    "worker %s: batch of %d images of job(s) %s failed: %s",
                    self.worker_id,
                    len(group),
                    _jobs(group),
                    reason,
                )
                queries.record_errors(
                    self.engine,
                    worker_id=self.worker_id,
                    errors=[(c.id, reason) for c in group],
                    max_attempts=self.max_attempts,
                    permanent=False,
                )

    def drain(self, max_batches: int | None = None) -> int:
        """``run_once`` until nothing is claimed (or ``max_batches``); returns images claimed."""
        total = 0
        batches = 0
        while max_batches is None or batches < max_batches:
            n = self.run_once()
            if n == 0:
                break
            total += n
            batches += 1
        return total

    def _process_group(self, model_name: str | None, group: list[ClaimedImage]) -> None:
        try:
            classifier = self.classifier(model_name)
        except UnknownModelError as exc:
            log.error("worker %s: job(s) %s: %s", self.worker_id, _jobs(group), exc)
            queries.record_errors(
                self.engine,
                worker_id=self.worker_id,
                errors=[(c.id, str(exc)) for c in group],
                max_attempts=self.max_attempts,
                permanent=True,
            )
            return
        decoded: list[tuple[ClaimedImage, np.ndarray]] = []
        undecodable: list[tuple[int, str]] = []
        for image in group:
            try:
                decoded.append((image, read_image(image.stored_path, max_pixels=self.max_pixels)))
            except ImageDecodeError as exc:
                log.warning(
                    "worker %s: job %s image %d (%s): %s",
                    self.worker_id,
                    image.job_id,
                    image.id,
                    image.filename,
                    exc,
                )
                undecodable.append((image.id, str(exc)))
        if undecodable:
            queries.record_errors(
                self.engine,
                worker_id=self.worker_id,
                errors=undecodable,
                max_attempts=self.max_attempts,
                permanent=True,
            )
        if not decoded:
            return
        predictions = classifier.predict([pixels for _, pixels in decoded])
        results = [
            to_new_result(image.id, prediction, classifier)
            for (image, _), prediction in zip(decoded, predictions, strict=True)
        ]
        done = queries.record_results(self.engine, worker_id=self.worker_id, results=results)
        log.info(
            "worker %s: job(s) %s: %d verdicts by %s:%d (%d recorded)",
            self.worker_id,
            _jobs(group),
            len(results),
            classifier.meta.name,
            classifier.meta.version,
            done,
        )
