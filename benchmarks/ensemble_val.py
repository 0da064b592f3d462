"""How well stored models rank a dataset's unseen val split, alone and averaged in pairs.

Post hoc, on models that ``train_eval.py --store DIR`` kept: each model's calibrated
probabilities are fused over its scales (and views), its defect score is the probability on
the defect classes, and a pair's score is the mean of the two. Reported threshold-free: the
ROC area and the share of good images flagged at the best threshold that finds every defect
(``inspector.evaluation``). Whether models that err on different images are worth serving
together, before the store has a way to serve them so.

    .venv/bin/python benchmarks/ensemble_val.py --dataset magnetic-tile \
        --model whole=data/bench-a --model crops=data/bench-b
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from common import DATASETS, save_result

from inspector.calibration import fused_probabilities
from inspector.evaluation import defect_auc, defect_scores, false_rejects_at_recall
from inspector.inference import Classifier
from inspector.reports import folder_logits
from inspector.store import ModelStore


def figures(scores: np.ndarray, is_defect: np.ndarray) -> dict[str, float | None]:
    rejects = false_rejects_at_recall(scores, is_defect) or {}
    auc = defect_auc(scores, is_defect)
    return {
        "defect_auc": round(auc, 4) if auc is not None else None,
        "good_flagged_at_full_recall": rejects.get("1"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="magnetic-tile")
    p.add_argument(
        "--model",
        action="append",
        required=True,
        help="LABEL=STORE_DIR[:NAME[:VERSION]] (NAME defaults to the dataset); two or more",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--suffix", default="")
    args = p.parse_args()
    if len(args.model) < 2:
        raise SystemExit("give two or more --model")
    for spec in args.model:
        label, _, where = spec.partition("=")
        if not label or not where or not Path(where.partition(":")[0]).is_dir():
            raise SystemExit(f"--model {spec!r}: expected LABEL=STORE_DIR[:NAME[:VERSION]]")
    val = DATASETS / args.dataset / "val"
    scores: dict[str, np.ndarray] = {}
    labels: list[int] | None = None
    is_defect = np.zeros(0, dtype=bool)
    for spec in args.model:
        label, _, where = spec.partition("=")
        store_dir, _, ref = where.partition(":")
        classifier = Classifier.from_store(
            ModelStore(Path(store_dir)), ref or args.dataset, device=args.device
        )
        meta = classifier.meta
        folder, logits = folder_logits(classifier, val, max_pixels=10**8)
        if labels is not None and folder.labels() != labels:
            raise SystemExit(f"{label}: its classes order the val images differently")
        labels = folder.labels()
        good = {i for i, c in enumerate(meta.classes) if c not in meta.defect_classes}
        is_defect = np.array([y not in good for y in labels])
        probs = fused_probabilities(logits, meta.calibration.temperature)
        scores[label] = defect_scores(probs, meta.classes, meta.defect_classes)
    result: dict[str, object] = {
        "dataset": args.dataset,
        "split": "val (unseen)",
        "models": dict(m.partition("=")[::2] for m in args.model),
        "alone": {name: figures(s, is_defect) for name, s in scores.items()},
        "pairs": {
            f"{a}+{b}": figures((scores[a] + scores[b]) / 2, is_defect)
            for a, b in itertools.combinations(scores, 2)
        },
        "all": figures(np.mean(list(scores.values()), axis=0), is_defect),
    }
    save_result(f"ensemble_val-{args.dataset}{args.suffix}.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
