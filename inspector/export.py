"""Export a stored version to ONNX or TorchScript for runtimes without this package.

The exported graph maps a normalised (N, 3, H, W) batch to logits at any size. The model's
metadata (classes, preprocessing, calibration) travels beside it as JSON, or inside the
TorchScript archive, so a consumer can reproduce the fused, calibrated verdicts: it resizes to
each scale, normalises as ``preprocessing.normalise`` says, averages the logits of the flipped
views where ``preprocessing.flips`` is set, then applies the temperature and thresholds. A model
set (``spec.members`` > 1) exports as one graph holding all its networks, whose logits are the
log of their mean probabilities: consumers treat it as one network.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch

from inspector.errors import ConfigurationError
from inspector.store import ModelStore, ModelVersion, write_json_atomic

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")


def export_model(
    store: ModelStore,
    ref: str,
    fmt: str,
    output: Path | None = None,
    *,
    folder: Path = Path("."),
) -> tuple[Path, ModelVersion]:
    """Write version ``ref`` to ``output``, or into ``folder`` as NAME-vN.onnx (with
    NAME-vN.json beside it) or NAME-vN.torchscript.pt."""
    if fmt not in FORMATS:
        raise ConfigurationError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if output is not None:
        check_output(output, fmt)
    model, mv = store.load(ref, "cpu")
    meta = mv.metadata
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    output = output or folder / f"{meta.name}-v{meta.version}{suffix}"
    output.parent.mkdir(parents=True, exist_ok=True)
    size = meta.preprocessing.scales[0]
    example = torch.zeros(1, 3, size, size)
    metadata = json.dumps(meta.to_dict())
    if fmt == "onnx":
        # The TorchScript-based exporter needs no extra packages (the dynamo one wants
        # onnxscript) and handles this plain CNN exactly; its deprecation notice is expected.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                model,
                (example,),
                str(output),
                dynamo=False,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={
                    "images": {0: "batch", 2: "height", 3: "width"},
                    "logits": {0: "batch"},
                },
                opset_version=17,
            )
        import onnx  # imported here: only exports need it

        proto = onnx.load(str(output))
        onnx.checker.check_model(proto)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "inspector", metadata
        onnx.save(proto, str(output))
        write_json_atomic(output.with_suffix(".json"), meta.to_dict())
    else:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's own notice
            traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(output), _extra_files={"inspector.json": metadata})
    log.info("exported %s to %s", mv.ref, output)
    return output, mv


def check_output(output: Path, fmt: str) -> None:
    """Refuse, before any work, an output that is a folder, or an ONNX file whose metadata
    (written beside it as NAME.json) would land on the model itself."""
    if output.is_dir():
        raise ConfigurationError(f"--output {output} is a folder: give the file to write")
    if fmt == "onnx" and output.suffix.lower() != ".onnx":
        raise ConfigurationError(
            f"--output {output}: an ONNX export must end in .onnx (its metadata is written "
            "beside it, with .json)"
        )
