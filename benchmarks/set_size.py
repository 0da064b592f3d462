"""How many networks a model set needs: a stored set's networks alone and in growing sets.

Takes a set that ``train_eval.py --members N --store DIR`` kept. For each network alone, and
for its first k networks (k = 2 .. N), it builds that set, calibrates it on the hold-out the
set was trained with (the same stratified share of ``train``, the same seed) exactly as
training does, and evaluates it on the unseen val split: the served operating point (defect
recall and good parts flagged at the calibrated threshold), and threshold-free figures (ROC
area, good flagged at the best threshold that finds every defect). The full set reproduces the
stored version's own figures, which the script checks.

    .venv/bin/python benchmarks/set_size.py --store data/bench-w0125-set3 \
        --dataset magnetic-tile
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import DATASETS, save_result

from inspector.calibration import calibrate
from inspector.datasets import ImageSet, load_images, scan_folder, stratified_split
from inspector.devices import channels_last, select_device
from inspector.inference import Classifier
from inspector.model import Network, VGGEnsemble
from inspector.preprocessing import parse_scales
from inspector.reports import evaluate_arrays, folder_logits
from inspector.store import ModelMetadata, ModelStore
from inspector.training import validation_logits

KEYS = (
    "accuracy",
    "macro_f1",
    "defect_recall",
    "flagged_good_rate",
    "defect_auc",
    "false_rejects_at_recall",
)


def evaluate_set(
    model: Network,
    meta: ModelMetadata,
    holdout: ImageSet,
    val_dir: Path,
    config: dict[str, object],
    device: str,
) -> dict[str, object]:
    """Calibrate ``model`` on the hold-out as ``fit`` does, then evaluate it on ``val_dir``."""
    dev = select_device(device)
    model = channels_last(model.to(dev)).eval()  # as training and serving run it
    pre = meta.preprocessing
    batch = int(str(config["batch_size"]))
    amp = bool(config["amp"])
    held = validation_logits(model, holdout, pre, pre.scales, dev, batch, amp)
    calibration = calibrate(
        held,
        np.asarray(holdout.labels),
        meta.classes,
        meta.defect_classes,
        target_recall=float(str(config["target_recall"])),
        max_review_rate=float(str(config["max_review_rate"])),
    )
    served = replace(meta, spec=model.spec, calibration=calibration)
    folder, logits = folder_logits(Classifier(model, served, dev), val_dir, max_pixels=10**8)
    report, _ = evaluate_arrays(
        logits,
        np.asarray(folder.labels()),
        meta.classes,
        meta.defect_classes,
        calibration,
        pre.scales,
        names=folder.names(),
    )
    return {key: report[key] for key in KEYS} | {"defect_threshold": calibration.defect_threshold}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True, help="the store train_eval.py kept")
    p.add_argument("--dataset", default="magnetic-tile")
    p.add_argument("--model", help="NAME[:VERSION] of the set (default: the dataset's name)")
    p.add_argument(
        "--scales",
        help="serve and calibrate at these scales instead of the stored ones (e.g. 288,320,352)",
    )
    p.add_argument("--whole-only", action="store_true", help="only the whole set")
    p.add_argument("--device", default="auto")
    p.add_argument("--suffix", default="")
    args = p.parse_args()
    if not args.store.is_dir():
        raise SystemExit(f"{args.store}: no such store")
    store = ModelStore(args.store)
    full, mv = store.load(args.model or args.dataset)
    if not isinstance(full, VGGEnsemble):
        raise SystemExit(f"{mv.ref} is one network, not a set (train it with --members N)")
    meta = mv.metadata
    if args.scales:
        scales = parse_scales(args.scales)
        meta = replace(meta, preprocessing=replace(meta.preprocessing, scales=scales))
    config = dict(meta.training["config"])
    train_dir, val_dir = DATASETS / args.dataset / "train", DATASETS / args.dataset / "val"
    if meta.dataset.get("val_root"):
        raise SystemExit(f"{mv.ref} was calibrated on a given folder, not a hold-out of train")
    _, held = stratified_split(
        scan_folder(train_dir), float(str(config["val_fraction"])), int(str(config["seed"]))
    )
    pre = meta.preprocessing
    images = load_images(
        held,
        max_pixels=int(str(config["max_image_pixels"])),
        max_short_side=max(pre.scales),
    )
    holdout = ImageSet(images, held.labels())

    networks = full.networks
    sets: dict[str, Network] = {f"network {i + 1}": n for i, n in enumerate(networks)}
    sets |= {f"first {k}": VGGEnsemble(networks[:k]) for k in range(2, len(networks) + 1)}
    if args.whole_only:
        sets = {f"first {len(networks)}": full}
    results: dict[str, object] = {}
    for label, model in sets.items():
        started = time.perf_counter()
        figures = evaluate_set(model, meta, holdout, val_dir, config, args.device)
        figures["seconds"] = round(time.perf_counter() - started, 1)
        results[label] = figures
        print(label, figures, flush=True)
    whole = results[f"first {len(networks)}"]
    assert isinstance(whole, dict)
    stored = meta.calibration.defect_threshold
    if not args.scales and abs(float(whole["defect_threshold"]) - stored) > 1e-4:
        raise SystemExit(
            f"the full set's threshold here ({whole['defect_threshold']}) is not the stored one "
            f"({stored}): the hold-out was not rebuilt as training built it"
        )
    save_result(
        f"set_size-{args.dataset}{args.suffix}.json",
        {
            "dataset": args.dataset,
            "split": "val (unseen); calibrated on the set's own hold-out",
            "model": mv.ref,
            "scales": list(meta.preprocessing.scales),
            "store": str(args.store),
            "sets": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
