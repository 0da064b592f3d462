"""Multi-scale inference: a loaded model version turns decoded images into predictions.

Each image runs at every scale of the model's preprocessing; calibrated class probabilities
are averaged over scales, and the per-scale ones are kept because their disagreement is a
sign of uncertainty. Large images are also classified tile by tile, and the worst tile decides
the defect verdict.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from inspector.calibration import softmax
from inspector.devices import autocast, channels_last, select_device, to_device
from inspector.evaluation import defect_indices
from inspector.model import Network
from inspector.preprocessing import (
    Image,
    cut_tiles,
    group_by_size,
    merge_views,
    needs_tiles,
    with_views,
)
from inspector.store import ModelMetadata, ModelRef, ModelStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """The verdict on one image."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    scale_probabilities: dict[int, dict[str, float]]
    defect_score: float
    is_defect: bool
    flagged: bool
    uncertain: bool
    tiles: int = 0
    worst_tile: tuple[int, int, int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "confidence": self.confidence,
            "defect_score": self.defect_score,
            "is_defect": self.is_defect,
            "flagged": self.flagged,
            "uncertain": self.uncertain,
            "probabilities": self.probabilities,
            "scale_probabilities": {str(s): p for s, p in self.scale_probabilities.items()},
            "tiles": self.tiles,
            "worst_tile": list(self.worst_tile) if self.worst_tile else None,
        }


def multiscale_logits(
    model: torch.nn.Module,
    images: Sequence[Image],
    meta: ModelMetadata,
    device: torch.device,
    *,
    batch_size: int = 32,
    amp: bool = True,
) -> NDArray[np.float32]:
    """Logits (S, N, K) of ``images`` at each of the model's scales, ``batch_size`` at a time
    (each the mean over the image's flipped views where the model's preprocessing says so)."""
    pre = meta.preprocessing
    out = np.zeros((len(pre.scales), len(images), meta.spec.num_classes), np.float32)
    with torch.inference_mode(), autocast(device, amp):
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            for s, scale in enumerate(pre.scales):
                for idx, batch in group_by_size(chunk, scale, pre):
                    logits = _forward(model, with_views(batch, pre), device)
                    out[s, [start + i for i in idx]] = merge_views(logits, pre)
    return out


def _forward(model: torch.nn.Module, batch: torch.Tensor, device: torch.device) -> np.ndarray:
    """One forward pass; on a CUDA out-of-memory error the batch is split and retried."""
    if device.type == "cuda":
        batch = batch.pin_memory()
    try:
        return model(to_device(batch, device)).float().cpu().numpy()
    except torch.cuda.OutOfMemoryError:
        if batch.shape[0] == 1:
            raise
    # Retried here, after the handler: while the error is handled its traceback holds the
    # failed pass's activations, which no cache flush could free.
    torch.cuda.empty_cache()
    half = batch.shape[0] // 2
    log.warning("CUDA out of memory on a batch of %d; retrying in halves", batch.shape[0])
    return np.concatenate(
        [_forward(model, batch[:half], device), _forward(model, batch[half:], device)]
    )


class Classifier:
    """A model version ready to classify decoded images."""

    def __init__(
        self,
        model: Network,
        meta: ModelMetadata,
        device: torch.device,
        *,
        batch_size: int = 32,
        amp: bool = True,
    ) -> None:
        self.model = channels_last(model.to(device)).eval()
        self.meta = meta
        self.device = device
        self.batch_size = batch_size
        self.amp = amp
        self._defect_idx = defect_indices(meta.classes, meta.defect_classes)

    @classmethod
    def from_store(
        cls, store: ModelStore, ref: ModelRef | str, *, device: str = "auto", batch_size: int = 32
    ) -> Classifier:
        dev = select_device(device)
        model, mv = store.load(ref, dev)
        return cls(model, mv.metadata, dev, batch_size=batch_size)

    def logits(self, images: Sequence[Image]) -> NDArray[np.float32]:
        return multiscale_logits(
            self.model, images, self.meta, self.device, batch_size=self.batch_size, amp=self.amp
        )

    def _verdicts(self, logits: NDArray[np.float32]) -> list[Prediction]:
        cal = self.meta.calibration
        classes = self.meta.classes
        per_scale = softmax(logits, cal.temperature)  # (S, N, K)
        fused = per_scale.mean(axis=0)
        scores = fused[:, self._defect_idx].sum(axis=1)
        defects, uncertainties = cal.verdicts(scores, fused.max(axis=1))
        predictions = []
        for i in range(fused.shape[0]):
            top = int(fused[i].argmax())
            confidence = float(fused[i, top])
            score = float(scores[i])
            is_defect = bool(defects[i])
            uncertain = bool(uncertainties[i])
            predictions.append(
                Prediction(
                    label=classes[top],
                    confidence=confidence,
                    probabilities={c: float(p) for c, p in zip(classes, fused[i], strict=True)},
                    scale_probabilities={
                        scale: {c: float(p) for c, p in zip(classes, per_scale[s, i], strict=True)}
                        for s, scale in enumerate(self.meta.preprocessing.scales)
                    },
                    defect_score=score,
                    is_defect=is_defect,
                    flagged=is_defect or uncertain,
                    uncertain=uncertain,
                )
            )
        return predictions

    def predict(self, images: Sequence[Image], *, tiles: bool = True) -> list[Prediction]:
        """One prediction per image; large images also by tiles when ``tiles``."""
        if not images:
            return []
        whole = self._verdicts(self.logits(images))
        if not tiles:
            return whole
        pre = self.meta.preprocessing
        results = list(whole)
        for i, image in enumerate(images):
            if not needs_tiles(image, pre):
                continue
            crops, boxes = cut_tiles(image, pre)
            tile_preds = self._verdicts(self.logits(crops))
            worst = max(range(len(tile_preds)), key=lambda t: tile_preds[t].defect_score)
            w = tile_preds[worst]
            base = whole[i]
            if w.defect_score > base.defect_score:
                # The worst tile decides: a small defect on a large frame is still a defect.
                results[i] = Prediction(
                    label=w.label if w.is_defect else base.label,
                    confidence=w.confidence if w.is_defect else base.confidence,
                    probabilities=base.probabilities,
                    scale_probabilities=base.scale_probabilities,
                    defect_score=w.defect_score,
                    is_defect=w.is_defect or base.is_defect,
                    flagged=w.flagged or base.flagged,
                    uncertain=(w.uncertain or base.uncertain)
                    and not (w.is_defect or base.is_defect),
                    tiles=len(crops),
                    worst_tile=boxes[worst],
                    extra={"tile_probabilities": w.probabilities},
                )
            else:
                results[i] = replace(base, tiles=len(crops), worst_tile=boxes[worst])

        return results

    def class_activation_maps(self, image: Image, scale: int | None = None) -> NDArray[np.float32]:
        """Class activation maps (K, h, w) of one image at ``scale`` (default: the middle one)."""
        pre = self.meta.preprocessing
        scale = scale or sorted(pre.scales)[len(pre.scales) // 2]
        ((_, batch),) = list(group_by_size([image], scale, pre))
        with torch.inference_mode():
            _, cam = self.model.forward_with_cam(to_device(batch, self.device))
        return cam[0].float().cpu().numpy()
