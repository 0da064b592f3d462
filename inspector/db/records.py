"""Typed records that go into and come out of the database queries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class NewImage:
    """An image of a new job, already stored on disk by the intake."""

    filename: str  # the name it was uploaded or found under
    stored_path: str  # where its bytes are kept
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class ClaimedImage:
    """An image leased to a worker until ``lease_expires_at``."""

    id: int
    job_id: str
    filename: str
    stored_path: str
    sha256: str
    size_bytes: int
    priority: int
    attempts: int  # including this one
    model_name: str | None  # the job's requested model; None: the production version
    lease_expires_at: datetime


@dataclass(frozen=True)
class NewResult:
    """A verdict to record; fields as in ``inspector.inference.Prediction``."""

    image_id: int
    model_name: str
    model_version: int
    label: str
    confidence: float
    defect_score: float
    is_defect: bool
    flagged: bool
    probabilities: Mapping[str, float]
    scale_probabilities: Mapping[int | str, Mapping[str, float]]  # keys stored as strings


@dataclass(frozen=True)
class StoredResult:
    """A recorded verdict."""

    model_name: str
    model_version: int
    label: str
    confidence: float
    defect_score: float
    is_defect: bool
    flagged: bool
    probabilities: dict[str, float]
    scale_probabilities: dict[str, dict[str, float]]
    created_at: datetime

    @classmethod
    def of_row(cls, row: Any, created_at: datetime) -> StoredResult | None:
        """The result columns of a row of images outer-joined with results (None: no result)."""
        if row.result_id is None:
            return None
        return cls(
            model_name=row.model_name,
            model_version=row.model_version,
            label=row.label,
            confidence=row.confidence,
            defect_score=row.defect_score,
            is_defect=bool(row.is_defect),
            flagged=bool(row.flagged),
            probabilities=row.probabilities,
            scale_probabilities=row.scale_probabilities,
            created_at=created_at,
        )


@dataclass(frozen=True)
class ImageRecord:
    """One image row."""

    id: int
    job_id: str
    filename: str
    stored_path: str
    sha256: str
    size_bytes: int
    priority: int
    status: str
    attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ImageResult:
    """An image of a job with its verdict (None until it is done)."""

    image_id: int
    filename: str
    sha256: str
    status: str
    attempts: int
    error: str | None
    result: StoredResult | None


@dataclass(frozen=True)
class JobSummary:
    """A job, its metadata and how far its images have got."""

    id: str
    created_at: datetime
    source: str
    line: str | None
    camera: str | None
    lot: str | None
    priority: int
    model_name: str | None
    total: int
    queued: int
    running: int
    done: int
    error: int
    defects: int
    flagged: int
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def status(self) -> str:
        """``queued`` (nothing started), ``running`` or ``finished`` (every image done/error)."""
        if self.finished_at is not None:
            return "finished"
        return "queued" if self.started_at is None else "running"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "source": self.source,
            "line": self.line,
            "camera": self.camera,
            "lot": self.lot,
            "priority": self.priority,
            "model_name": self.model_name,
            "total": self.total,
            "counts": {
                "queued": self.queued,
                "running": self.running,
                "done": self.done,
                "error": self.error,
            },
            "defects": self.defects,
            "flagged": self.flagged,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }
