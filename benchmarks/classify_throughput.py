"""``inspector classify`` throughput against the bare model forward pass, in one run.

Bare: the same images, already decoded and turned into the same per-scale batches, timed
through the network alone. Classify: the whole command path from files on disk (lazy walk,
threaded decoding, multi-scale fusion, calibration, CSV rows). The ratio is
bare_time / classify_time (1.0 = no overhead). Peak memory is sampled during classify runs
over N and 4N images: streaming keeps it flat.

    .venv/bin/python benchmarks/classify_throughput.py --dataset neu-cls --images 480
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from common import DATASETS, add_model_arguments, register_fresh_model, save_result

from inspector.classify import ResultWriter, classify_paths, iter_image_paths
from inspector.devices import autocast, select_device, to_device
from inspector.imaging import read_image
from inspector.inference import Classifier, multiscale_logits
from inspector.preprocessing import parse_scales
from inspector.store import ModelStore

ROOT = Path(__file__).resolve().parent.parent


class PeakRSS:
    """Samples this process's resident memory in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.01)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_classifier(args: argparse.Namespace, store_dir: Path) -> Classifier:
    if args.model:
        return Classifier.from_store(
            ModelStore(args.store), args.model, device=args.device, batch_size=args.batch_size
        )
    store = register_fresh_model(
        store_dir, arch=args.arch, width=args.width, scales=parse_scales(args.scales)
    )
    return Classifier.from_store(store, "bench", device=args.device, batch_size=args.batch_size)


def bare_forward_seconds(classifier: Classifier, paths: list[Path]) -> float:
    images = [read_image(p) for p in paths]
    # Pre-build exactly the batches classify will run, then time the network alone.
    from inspector.preprocessing import group_by_size

    pre = classifier.meta.preprocessing
    bs = classifier.batch_size
    device = classifier.device
    model = classifier.model
    seconds = 0.0
    with torch.inference_mode(), autocast(device, classifier.amp):
        for start in range(0, len(images), bs):
            chunk = images[start : start + bs]
            for scale in pre.scales:
                # Batches are built outside the timer: only the network is timed.
                for _, batch in group_by_size(chunk, scale, pre):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    started = time.perf_counter()
                    model(to_device(batch, device)).float().cpu()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds += time.perf_counter() - started
    return seconds


def classify_seconds(classifier: Classifier, paths: list[Path], out: Path) -> tuple[float, int]:
    meta = classifier.meta
    with PeakRSS() as rss, ResultWriter(out, meta.classes, meta.preprocessing.scales) as w:
        started = time.perf_counter()
        summary = classify_paths(classifier, paths, w, max_pixels=10**8, workers=args.workers)
        seconds = time.perf_counter() - started
    assert summary.classified == len(paths), summary
    return seconds, rss.peak


def main() -> int:
    data = DATASETS / args.dataset / "val"
    all_paths = list(iter_image_paths([data]))
    if not all_paths:
        raise SystemExit(f"no images under {data}: the shared datasets belong beside the checkout")
    paths = [all_paths[i % len(all_paths)] for i in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        classifier = make_classifier(args, Path(tmp) / "models")
        # Warm both paths once (allocator, kernels, page cache), then measure.
        multiscale_logits(
            classifier.model, [read_image(p) for p in paths[:8]], classifier.meta, classifier.device
        )
        # Memory first, before anything else holds decoded images: N, then 4N images.
        _, peak_n = classify_seconds(classifier, paths, Path(tmp) / "r.csv")
        _, peak_4n = classify_seconds(classifier, paths * 4, Path(tmp) / "r4.csv")
        # Interleaved repeats, best of each, so drift in machine load hits both alike.
        bare, full = float("inf"), float("inf")
        for _ in range(args.repeats):
            bare = min(bare, bare_forward_seconds(classifier, paths))
            full = min(full, classify_seconds(classifier, paths, Path(tmp) / "r.csv")[0])
    device = select_device(args.device)
    result = {
        "dataset": args.dataset,
        "images": len(paths),
        "device": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads",
        "arch": classifier.meta.spec.arch,
        "width": classifier.meta.spec.width,
        "scales": list(classifier.meta.preprocessing.scales),
        "batch_size": classifier.batch_size,
        "decode_workers": args.workers,
        "bare_images_per_second": round(len(paths) / bare, 2),
        "classify_images_per_second": round(len(paths) / full, 2),
        "ratio_classify_to_bare": round(bare / full, 3),
        "peak_rss_mb_n": round(peak_n / 2**20, 1),
        "peak_rss_mb_4n": round(peak_4n / 2**20, 1),
    }
    kind = "gpu" if device.type == "cuda" else "cpu"
    save_result(f"classify-{args.dataset}-{kind}.json", result)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", choices=["neu-cls", "magnetic-tile"], default="neu-cls")
    p.add_argument("--images", type=int, default=480)
    add_model_arguments(p)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--model", help="NAME[:VERSION] from --store instead of a fresh network")
    p.add_argument("--store", type=Path, default=ROOT / "data" / "models")
    args = p.parse_args()
    sys.exit(main())
