"""1,000 images over REST to a running stack, against the bare model forward pass, in one run.

The stack is ``inspector run`` (web under gunicorn, one worker, the embedded defaults unless
INSPECTOR_DATABASE_URL / INSPECTOR_BROKER_URL say otherwise) on a temporary data directory.
Throughput counts from the first upload to the last job's finish time in the database; the
bare pass runs the same network on the same images, scales and batch size, already decoded
and batched, in this process. Then single-image ``/inspect`` calls give the latency a line
controller sees (p50, p95).

    .venv/bin/python benchmarks/rest_throughput.py --dataset neu-cls --images 1000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import torch

# The bare pass is the one classify_throughput.py times (this folder is on sys.path).
from classify_throughput import bare_forward_seconds, make_classifier
from common import DATASETS, ROOT, add_model_arguments, save_result

from inspector.classify import iter_image_paths
from inspector.devices import select_device
from inspector.imaging import read_image
from inspector.inference import multiscale_logits
from web.testing import multipart_body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: bytes | None = None, ctype: str = "") -> dict:
        headers = dict(self.headers)
        if ctype:
            headers["Content-Type"] = ctype
        req = urllib.request.Request(self.url + path, body, headers, method=method)
        with urllib.request.urlopen(req, timeout=120) as response:
            return dict(json.load(response))

    def upload(self, path: str, files: list[Path]) -> dict:
        body, ctype = multipart_body([("files", p.name, p.read_bytes()) for p in files])
        return self.call("POST", path, body, ctype)


def start_stack(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], Client]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "run"],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        url, token = re.search(r"running at (\S+)", text), re.search(r"API token: (\S+)", text)
        if url and token:
            return proc, Client(url[1], token[1])
        if proc.poll() is not None:
            raise SystemExit(f"inspector run exited:\n{text[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"inspector run did not start:\n{log_path.read_text()[-3000:]}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(args: argparse.Namespace) -> int:
    data = DATASETS / args.dataset
    all_paths = sorted(iter_image_paths([data / "train", data / "val"]))
    if not all_paths:
        raise SystemExit(f"no images under {data}: the shared datasets belong beside the checkout")
    paths = [all_paths[i % len(all_paths)] for i in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        classifier = make_classifier(args, data_dir / "models")
        multiscale_logits(
            classifier.model, [read_image(p) for p in paths[:8]], classifier.meta, classifier.device
        )
        bare = min(bare_forward_seconds(classifier, paths) for _ in range(args.repeats))
        single = [read_image(p) for p in paths[: args.single]]
        bare_single = []
        for image in single:
            started = time.perf_counter()
            multiscale_logits(classifier.model, [image], classifier.meta, classifier.device)
            bare_single.append(time.perf_counter() - started)
        del classifier  # the stack's worker loads its own copy
        env = {
            "INSPECTOR_DATA_DIR": str(data_dir),
            "INSPECTOR_PORT": str(free_port()),
            "INSPECTOR_BATCH_SIZE": str(args.batch_size),
            "INSPECTOR_DEVICE": args.device,
            "INSPECTOR_WEB_PROCESSES": "1",
        }
        proc, client = start_stack(env, Path(tmp) / "run.log")
        try:
            client.upload("/api/v1/inspect", paths[:1])  # the worker's first batch warms it
            started_at = datetime.now(UTC)
            job_ids = [
                client.upload("/api/v1/jobs", paths[i : i + args.per_request])["job_id"]
                for i in range(0, len(paths), args.per_request)
            ]
            submitted = (datetime.now(UTC) - started_at).total_seconds()
            finished: list[datetime] = []
            deadline = time.monotonic() + 3600
            for job_id in job_ids:
                while time.monotonic() < deadline:
                    job = client.call("GET", f"/api/v1/jobs/{job_id}")
                    if job.get("finished_at"):
                        assert job["counts"]["done"] + job["counts"]["error"] == job["total"], job
                        assert job["counts"]["error"] == 0, job
                        finished.append(datetime.fromisoformat(job["finished_at"]))
                        break
                    time.sleep(0.2)
            stack_seconds = (max(finished) - started_at).total_seconds()
            latencies = []
            for path in paths[: args.single]:
                t0 = time.perf_counter()
                answer = client.upload("/api/v1/inspect", [path])
                latencies.append(time.perf_counter() - t0)
                assert answer.get("status") == "done", answer
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    device = select_device(args.device)
    result = {
        "dataset": args.dataset,
        "images": len(paths),
        "device": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"CPU, {os.cpu_count()} cores",
        "arch": args.arch,
        "width": args.width,
        "scales": [int(s) for s in args.scales.split(",")],
        "batch_size": args.batch_size,
        "images_per_request": args.per_request,
        "bare_images_per_second": round(len(paths) / bare, 2),
        "stack_images_per_second": round(len(paths) / stack_seconds, 2),
        "ratio_stack_to_bare": round(bare / stack_seconds, 3),
        "overhead_ms_per_image": round(1000 * (stack_seconds - bare) / len(paths), 2),
        "upload_seconds": round(submitted, 2),
        "single_image_bare_ms_p50": round(1000 * statistics.median(bare_single), 1),
        "single_image_inspect_ms_p50": round(1000 * percentile(latencies, 0.5), 1),
        "single_image_inspect_ms_p95": round(1000 * percentile(latencies, 0.95), 1),
    }
    kind = "gpu" if device.type == "cuda" else "cpu"
    save_result(f"rest-{args.dataset}-{kind}.json", result)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", choices=["neu-cls", "magnetic-tile"], default="neu-cls")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--per-request", type=int, default=100)
    p.add_argument("--single", type=int, default=30, help="single-image /inspect calls")
    add_model_arguments(p)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--model", default=None)
    p.add_argument("--store", type=Path, default=ROOT / "data" / "models")
    sys.exit(main(p.parse_args()))
