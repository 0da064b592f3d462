"""Would a memory of good-part patches catch what the classifier scores low? Post hoc.

Takes a model that ``train_eval.py --store DIR`` kept (magnetic tile) and rebuilds its hold-out
split (the same stratified share of ``train``, the same seed). The feature maps of the
training part's good images, at the ends of two of the network's conv blocks (each averaged
over 3x3 locations, the finer one pooled to the coarser's grid), are a memory of what good
surface looks like (as PatchCore keeps one). An image's anomaly score is the largest distance
from one of its locations to the nearest remembered one. Reported on the unseen val split, for
the classifier's defect score, the anomaly score, and the larger of the two as ranks among the
hold-out's good images: the ROC area, the good images flagged at the best threshold that finds
every defect, and at the threshold that keeps every hold-out defect (as calibration does); and
the hold-out defects the classifier scores lowest, with their anomaly scores.

    .venv/bin/python benchmarks/patch_memory.py --store data/bench-models --blocks 4,5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from common import DATASETS, save_result
from torch import nn
from torch.nn import functional as F

from inspector.calibration import fused_probabilities
from inspector.datasets import LabelledFolder, load_images, scan_folder, stratified_split
from inspector.evaluation import defect_auc, defect_scores, false_rejects_at_recall
from inspector.inference import Classifier
from inspector.preprocessing import Image, group_by_size
from inspector.store import ModelStore


def block_features(features: nn.Sequential, batch: torch.Tensor, blocks: list[int]) -> torch.Tensor:
    """(N, C, h, w): the outputs of ``blocks`` (counted from 1, each before its max-pool),
    averaged over 3x3 locations, pooled to the last one's grid and stacked along channels."""
    outputs: list[torch.Tensor] = []
    block = 1
    x = batch
    for layer in features:
        if isinstance(layer, nn.MaxPool2d):
            if block in blocks:
                outputs.append(x.float())
            block += 1
        x = layer(x)
    if block in blocks:  # stride 16: the last block has no max-pool
        outputs.append(x.float())
    maps = [F.avg_pool2d(m, 3, 1, 1) for m in outputs]
    grid = maps[-1].shape[-2:]
    return torch.cat([F.adaptive_avg_pool2d(m, grid) for m in maps], 1)


def patches(
    clf: Classifier, images: list[Image], scale: int, blocks: list[int]
) -> list[torch.Tensor]:
    """Each image's location features (locations, C) at ``scale``."""
    net = clf.model
    if not hasattr(net, "features"):
        raise SystemExit("a model set: give a single network")
    out: list[torch.Tensor] = [torch.empty(0)] * len(images)
    with torch.inference_mode():
        for idx, batch in group_by_size(images, scale, clf.meta.preprocessing):
            maps = block_features(
                net.features, batch.contiguous(memory_format=torch.channels_last), blocks
            )
            for j, i in enumerate(idx):
                out[i] = maps[j].flatten(1).T.contiguous()
    return out


def anomaly_scores(sets: list[torch.Tensor], memory: torch.Tensor) -> np.ndarray:
    """The largest nearest-neighbour distance of each image's locations to ``memory``."""
    squared = (memory**2).sum(1)
    scores = []
    for q in sets:
        d = (q**2).sum(1, keepdim=True) - 2 * q @ memory.T + squared
        scores.append(float(d.min(1).values.clamp_min(0).max().sqrt()))
    return np.asarray(scores)


def figures(
    hold: np.ndarray, hold_defect: np.ndarray, val: np.ndarray, val_defect: np.ndarray
) -> dict[str, float | None]:
    threshold = float(hold[hold_defect].min())
    auc = defect_auc(val, val_defect)
    return {
        "defect_auc": round(auc, 4) if auc is not None else None,
        "good_flagged_at_full_recall": (false_rejects_at_recall(val, val_defect) or {}).get("1"),
        "calibrated_recall": round(float((val[val_defect] >= threshold).mean()), 4),
        "calibrated_good_flagged": round(float((val[~val_defect] >= threshold).mean()), 4),
    }


def rank_among(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The share of ``reference`` scoring below each score."""
    return np.searchsorted(np.sort(reference), scores, side="left") / (len(reference) + 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--model", default="magnetic-tile", help="NAME[:VERSION] in the store")
    p.add_argument("--dataset", default="magnetic-tile")
    p.add_argument("--blocks", default="4,5", help="the conv blocks whose outputs are kept")
    p.add_argument("--scale", type=int, default=256)
    p.add_argument(
        "--memory-share", type=float, default=0.25, help="of the good locations, drawn at random"
    )
    p.add_argument("--suffix", default="")
    args = p.parse_args()
    torch.manual_seed(0)
    blocks = sorted(int(b) for b in args.blocks.split(","))
    clf = Classifier.from_store(ModelStore(args.store), args.model, device="cpu")
    meta = clf.meta
    config = meta.training["config"]
    if int(config.get("folds", 1)) > 1 or meta.dataset.get("val_root"):
        raise SystemExit(
            f"{meta.ref}: trained on folds or a separate --val; give a model that "
            "held out a share of train (its hold-out is rebuilt from the seed)"
        )
    folder = scan_folder(DATASETS / args.dataset / "train", classes=meta.classes)
    train, hold = stratified_split(folder, config["val_fraction"], config["seed"])
    val = scan_folder(DATASETS / args.dataset / "val", classes=meta.classes)
    good = {i for i, c in enumerate(meta.classes) if c not in meta.defect_classes}
    load = {"max_pixels": 10**8, "max_short_side": max(meta.preprocessing.scales)}

    def decoded(part: LabelledFolder) -> list[Image]:
        return [im.astype(np.float32) for im in load_images(part, **load)]

    train_good = [im for im, y in zip(decoded(train), train.labels(), strict=True) if y in good]
    everything = torch.cat(patches(clf, train_good, args.scale, blocks))
    keep = torch.randperm(len(everything))[: int(len(everything) * args.memory_share)]
    memory = everything[keep]
    scores: dict[str, dict[str, np.ndarray]] = {"classifier": {}, "patch memory": {}}
    defect: dict[str, np.ndarray] = {}
    for split, part in (("hold", hold), ("val", val)):
        images = decoded(part)
        probs = fused_probabilities(clf.logits(images), meta.calibration.temperature)
        scores["classifier"][split] = defect_scores(probs, meta.classes, meta.defect_classes)
        scores["patch memory"][split] = anomaly_scores(
            patches(clf, images, args.scale, blocks), memory
        )
        defect[split] = np.array([y not in good for y in part.labels()])
    good_hold = ~defect["hold"]
    scores["larger rank"] = {
        split: np.maximum(
            *(
                rank_among(scores[k]["hold"][good_hold], scores[k][split])
                for k in ("classifier", "patch memory")
            )
        )
        for split in ("hold", "val")
    }
    faint = np.argsort(np.where(defect["hold"], scores["classifier"]["hold"], np.inf))[:5]
    memory_good = scores["patch memory"]["hold"][good_hold]
    result = {
        "model": meta.ref,
        "blocks": blocks,
        "scale": args.scale,
        "memory": list(memory.shape),
        "val": {
            k: figures(s["hold"], defect["hold"], s["val"], defect["val"])
            for k, s in scores.items()
        },
        "hold_out_good_patch_memory_p95": round(float(np.percentile(memory_good, 95)), 3),
        "faintest_hold_out_defects": [
            {
                "image": hold.names()[i],
                "classifier": round(float(scores["classifier"]["hold"][i]), 4),
                "patch_memory": round(float(scores["patch memory"]["hold"][i]), 3),
            }
            for i in faint
        ],
    }
    save_result(f"patch_memory-{args.dataset}{args.suffix}.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
