"""Offline batch classification of files and folders into a CSV or JSON-lines file.

Paths are streamed: files are decoded by a small thread pool a few batches ahead of the model,
so decoding overlaps inference and memory stays flat however many images there are. An image
that cannot be read becomes a row with its error; the run goes on.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from inspector.errors import ConfigurationError, ImageDecodeError
from inspector.imaging import is_image_file, read_image
from inspector.inference import Classifier, Prediction

log = logging.getLogger(__name__)

BASE_COLUMNS = (
    "path",
    "label",
    "confidence",
    "is_defect",
    "flagged",
    "uncertain",
    "defect_score",
    "error",
    "model",
)


def iter_image_paths(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Named files as given (so a bad one gets its error row); folders walked for images."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if is_image_file(name):
                        yield Path(dirpath) / name
        else:
            yield path


@dataclass
class ClassifySummary:
    total: int = 0
    classified: int = 0
    errors: int = 0
    defects: int = 0
    flagged: int = 0
    seconds: float = 0.0
    by_label: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "classified": self.classified,
            "errors": self.errors,
            "defects": self.defects,
            "flagged": self.flagged,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "by_label": self.by_label,
        }


class ResultWriter:
    """Rows to CSV (one column per class probability), JSON lines (.jsonl) or one JSON array
    (.json), chosen by extension; each row is written as it comes."""

    def __init__(self, path: str | os.PathLike[str], classes: Sequence[str], scales: Sequence[int]):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in {".csv", ".jsonl", ".ndjson", ".json"}:
            raise ConfigurationError(
                f"output {self.path} must end in .csv, .jsonl (JSON lines) or .json"
            )
        self.format = {".csv": "csv", ".json": "json"}.get(suffix, "jsonl")
        self._rows = 0
        self.classes = list(classes)
        self.scales = list(scales)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = self.path.open("w", newline="")
        self._csv: Any = None
        if self.format == "csv":
            columns = list(BASE_COLUMNS) + [f"prob_{c}" for c in self.classes]
            columns += [f"prob{s}_{c}" for s in self.scales for c in self.classes]
            columns += ["tiles"]
            self._csv = csv.DictWriter(self._fh, fieldnames=columns)
            self._csv.writeheader()
        elif self.format == "json":
            self._fh.write("[")

    def write(
        self, path: Path, model: str, prediction: Prediction | None, error: str | None
    ) -> None:
        if self.format in {"jsonl", "json"}:
            row: dict[str, Any] = {"path": str(path), "model": model, "error": error}
            if prediction is not None:
                row |= prediction.to_dict()
            if self.format == "json":
                self._fh.write(("," if self._rows else "") + "\n" + json.dumps(row))
            else:
                self._fh.write(json.dumps(row) + "\n")
            self._rows += 1
            return
        flat: dict[str, Any] = {"path": str(path), "model": model, "error": error or ""}
        if prediction is not None:
            flat |= {
                "label": prediction.label,
                "confidence": f"{prediction.confidence:.6f}",
                "is_defect": int(prediction.is_defect),
                "flagged": int(prediction.flagged),
                "uncertain": int(prediction.uncertain),
                "defect_score": f"{prediction.defect_score:.6f}",
                "tiles": prediction.tiles,
            }
            flat |= {f"prob_{c}": f"{p:.6f}" for c, p in prediction.probabilities.items()}
            for s, probs in prediction.scale_probabilities.items():
                flat |= {f"prob{s}_{c}": f"{p:.6f}" for c, p in probs.items()}
        self._csv.writerow(flat)

    def close(self) -> None:
        if self.format == "json" and not self._fh.closed:
            self._fh.write("\n]\n")
        self._fh.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


DecodeResult = tuple[Path, np.ndarray | None, str | None]


def _decode(path: Path, max_pixels: int) -> DecodeResult:
    try:
        return path, read_image(path, max_pixels=max_pixels), None
    except ImageDecodeError as exc:
        return path, None, str(exc)


def decoded_batches(
    paths: Iterable[Path], *, batch_size: int, max_pixels: int, workers: int, prefetch: int = 3
) -> Iterator[list[DecodeResult]]:
    """Batches of decoded images in input order, decoded ``prefetch`` batches ahead."""
    if workers <= 0:  # inline: no thread competes with the model for the cores
        batch: list[DecodeResult] = []
        for path in paths:
            batch.append(_decode(path, max_pixels))
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[Future[DecodeResult]] = deque()
        limit = batch_size * prefetch
        batch = []
        iterator = iter(paths)
        exhausted = False
        while True:
            while not exhausted and len(pending) < limit:
                try:
                    pending.append(pool.submit(_decode, next(iterator), max_pixels))
                except StopIteration:
                    exhausted = True
            if not pending:
                break
            batch.append(pending.popleft().result())
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def classify_paths(
    classifier: Classifier,
    paths: Iterable[str | os.PathLike[str]],
    writer: ResultWriter,
    *,
    max_pixels: int,
    workers: int = 2,
    tiles: bool = True,
) -> ClassifySummary:
    summary = ClassifySummary()
    started = time.perf_counter()
    model = classifier.meta.ref
    for batch in decoded_batches(
        iter_image_paths(paths),
        batch_size=classifier.batch_size,
        max_pixels=max_pixels,
        workers=workers,
    ):
        good = [(p, img) for p, img, _ in batch if img is not None]
        predictions = dict(
            zip(
                [p for p, _ in good],
                classifier.predict([img for _, img in good], tiles=tiles),
                strict=True,
            )
        )
        for path, img, error in batch:
            summary.total += 1
            if img is None:
                summary.errors += 1
                writer.write(path, model, None, error)
                continue
            pred = predictions[path]
            summary.classified += 1
            summary.defects += int(pred.is_defect)
            summary.flagged += int(pred.flagged)
            summary.by_label[pred.label] = summary.by_label.get(pred.label, 0) + 1
            writer.write(path, model, pred, None)
    summary.seconds = time.perf_counter() - started
    return summary
