"""The model store: a folder of named models, each with numbered versions and one in production.

Layout::

    <root>/<name>/production.json        {"version": 3, "history": [...]}
    <root>/<name>/v0003/weights.pt       state dict, checked by sha256 before loading
    <root>/<name>/v0003/model.json       metadata: architecture, classes, preprocessing, ...
    <root>/<name>/v0003/*.png|*.json     training history, evaluation figures and reports

Writes go to a temporary name and are renamed into place, so a reader never sees half a file,
and version numbers are taken by creating their folder, so two trainings cannot share one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inspector import __version__
from inspector.calibration import Calibration
from inspector.errors import ConfigurationError, ModelIntegrityError, ModelStoreError
from inspector.model import ModelSpec, Network, model_from_spec
from inspector.preprocessing import Preprocessing

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
WEIGHTS_FILE = "weights.pt"
METADATA_FILE = "model.json"
PRODUCTION_FILE = "production.json"


@dataclass(frozen=True)
class ModelRef:
    """``name`` or ``name:version`` as users type it."""

    name: str
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        name, sep, version = text.partition(":")
        if not NAME_PATTERN.match(name):
            raise ModelStoreError(
                f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' "
                "(at most 64, starting with a letter or digit)"
            )
        if not sep:
            return cls(name)
        digits = version.lstrip("v")
        if not digits.isdigit() or int(digits) < 1:
            raise ModelStoreError(f"invalid version {version!r} in {text!r}: expected NAME:N")
        return cls(name, int(digits))

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"


@dataclass(frozen=True)
class ModelMetadata:
    """Everything needed to rebuild, serve and trace a model version."""

    name: str
    version: int
    spec: ModelSpec
    classes: tuple[str, ...]
    defect_classes: tuple[str, ...]
    preprocessing: Preprocessing
    calibration: Calibration
    weights_sha256: str = ""
    created_at: str = ""
    parent: str | None = None
    init: str = "scratch"
    dataset: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    inspector_version: str = __version__

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "spec": self.spec.to_dict(),
            "classes": list(self.classes),
            "defect_classes": list(self.defect_classes),
            "preprocessing": self.preprocessing.to_dict(),
            "calibration": self.calibration.to_dict(),
            "weights_sha256": self.weights_sha256,
            "parent": self.parent,
            "init": self.init,
            "dataset": dict(self.dataset),
            "training": dict(self.training),
            "metrics": dict(self.metrics),
            "inspector_version": self.inspector_version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelMetadata:
        try:
            meta = cls(
                name=str(data["name"]),
                version=int(data["version"]),
                spec=ModelSpec.from_dict(dict(data["spec"])),
                classes=tuple(data["classes"]),
                defect_classes=tuple(data["defect_classes"]),
                preprocessing=Preprocessing.from_dict(dict(data["preprocessing"])),
                calibration=Calibration.from_dict(dict(data["calibration"])),
                weights_sha256=str(data.get("weights_sha256", "")),
                created_at=str(data.get("created_at", "")),
                parent=data.get("parent"),
                init=str(data.get("init", "scratch")),
                dataset=dict(data.get("dataset", {})),
                training=dict(data.get("training", {})),
                metrics=dict(data.get("metrics", {})),
                inspector_version=str(data.get("inspector_version", "")),
            )
        except (KeyError, TypeError, ValueError, ConfigurationError) as exc:
            raise ModelIntegrityError(
                f"model metadata is incomplete or malformed: {exc!r}"
            ) from exc
        if meta.spec.num_classes != len(meta.classes):
            raise ModelIntegrityError(
                f"{meta.ref}: metadata lists {len(meta.classes)} classes but the network has "
                f"{meta.spec.num_classes} outputs"
            )
        unknown = set(meta.defect_classes) - set(meta.classes)
        if unknown:
            raise ModelIntegrityError(
                f"{meta.ref}: defect classes {sorted(unknown)} are not among its classes"
            )
        return meta


@dataclass(frozen=True)
class ModelVersion:
    """One stored version: its folder and metadata."""

    path: Path
    metadata: ModelMetadata

    @property
    def ref(self) -> str:
        return self.metadata.ref

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ModelStore:
    """Versioned models under one folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- reading -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            d.name for d in self.root.iterdir() if d.is_dir() and NAME_PATTERN.match(d.name)
        )

    def versions(self, name: str) -> list[int]:
        folder = self.root / ModelRef.parse(name).name
        if not folder.is_dir():
            return []
        found = []
        for d in folder.iterdir():
            if d.is_dir() and re.fullmatch(r"v\d{4,}", d.name) and (d / METADATA_FILE).is_file():
                found.append(int(d.name[1:]))
        return sorted(found)

    def production(self, name: str) -> int | None:
        path = self.root / name / PRODUCTION_FILE
        if not path.is_file():
            return None
        return int(json.loads(path.read_text())["version"])

    def production_history(self, name: str) -> list[dict[str, Any]]:
        path = self.root / name / PRODUCTION_FILE
        if not path.is_file():
            return []
        return list(json.loads(path.read_text()).get("history", []))

    def _folder(self, name: str, version: int) -> Path:
        return self.root / name / f"v{version:04d}"

    def get(self, ref: ModelRef | str) -> ModelVersion:
        """A version's metadata; without a version, the production one (else the newest)."""
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        versions = self.versions(ref.name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise ModelStoreError(
                f"no model named {ref.name!r} in {self.root} (models there: {known}); "
                "train one with `inspector train DATA_DIR --name NAME`"
            )
        version = ref.version or self.production(ref.name) or versions[-1]
        if version not in versions:
            listed = ", ".join(str(v) for v in versions)
            raise ModelStoreError(
                f"model {ref.name!r} has no version {version} (versions: {listed})"
            )
        folder = self._folder(ref.name, version)
        try:
            data = json.loads((folder / METADATA_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelIntegrityError(f"{ref.name}:{version}: unreadable metadata: {exc}") from exc
        try:
            meta = ModelMetadata.from_dict(data)
        except ModelIntegrityError as exc:
            raise ModelIntegrityError(f"{folder / METADATA_FILE}: {exc}") from exc
        if meta.name != ref.name or meta.version != version:
            raise ModelIntegrityError(
                f"{folder}: metadata says {meta.ref}, the folder is {ref.name}:{version}"
            )
        return ModelVersion(folder, meta)

    def load(
        self, ref: ModelRef | str, device: str | torch.device = "cpu"
    ) -> tuple[Network, ModelVersion]:
        """Rebuild the network from metadata and load its hash-checked weights (eval mode)."""
        mv = self.get(ref)
        weights = mv.weights_path
        if not weights.is_file():
            raise ModelIntegrityError(f"{mv.ref}: weights file {weights} is missing")
        digest = sha256_file(weights)
        if digest != mv.metadata.weights_sha256:
            raise ModelIntegrityError(
                f"{mv.ref}: {weights} fails its hash check (sha256 {digest[:12]}…, metadata "
                f"says {mv.metadata.weights_sha256[:12]}…): the file was changed or damaged; "
                "restore it or train the model again"
            )
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model = model_from_spec(mv.metadata.spec)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelIntegrityError(
                f"{mv.ref}: weights do not match the metadata's architecture "
                f"({mv.metadata.spec.arch}, width {mv.metadata.spec.width}, "
                f"{mv.metadata.spec.num_classes} classes, {mv.metadata.spec.members} "
                f"network(s)): {exc}"
            ) from exc
        model.eval()
        return model.to(device), mv

    # -- writing -------------------------------------------------------------------------------
    def _claim_version(self, name: str) -> tuple[int, Path]:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        version = (self.versions(name) or [0])[-1] + 1
        while True:
            folder = self._folder(name, version)
            try:
                folder.mkdir()
            except FileExistsError:
                version += 1
                continue
            return version, folder

    def register(
        self,
        model: nn.Module,
        metadata: ModelMetadata,
        *,
        files: Mapping[str, Path] | None = None,
        promote: bool | None = None,
    ) -> ModelVersion:
        """Store ``model`` as the next version of ``metadata.name``.

        ``metadata.version`` is ignored and assigned here. ``promote=None`` promotes the first
        version of a model only, so a new model is usable at once and later ones are promoted
        on purpose.
        """
        name = ModelRef.parse(metadata.name).name
        version, folder = self._claim_version(name)
        try:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            tmp = folder / f".{WEIGHTS_FILE}.tmp"
            torch.save(state, tmp)
            os.replace(tmp, folder / WEIGHTS_FILE)
            for target, source in (files or {}).items():
                shutil.copyfile(source, folder / target)
            meta = ModelMetadata.from_dict(
                {
                    **metadata.to_dict(),
                    "version": version,
                    "created_at": _now(),
                    "weights_sha256": sha256_file(folder / WEIGHTS_FILE),
                }
            )
            write_json_atomic(folder / METADATA_FILE, meta.to_dict())
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if promote or (promote is None and self.production(name) is None):
            self.promote(ModelRef(name, version))
        return ModelVersion(folder, meta)

    def _write_production(self, name: str, stack: list[int], action: str) -> None:
        history = self.production_history(name)
        history.append({"version": stack[-1], "action": action, "at": _now()})
        write_json_atomic(
            self.root / name / PRODUCTION_FILE,
            {"version": stack[-1], "stack": stack, "history": history},
        )

    def _production_stack(self, name: str) -> list[int]:
        path = self.root / name / PRODUCTION_FILE
        if not path.is_file():
            return []
        return [int(v) for v in json.loads(path.read_text()).get("stack", [])]

    def promote(self, ref: ModelRef | str) -> ModelVersion:
        """Make a version the production one (it must load: the hash is checked first)."""
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if ref.version is None:
            raise ModelStoreError(f"promote needs NAME:VERSION, got {ref.name!r}")
        _, mv = self.load(ref)
        stack = self._production_stack(ref.name)
        if not stack or stack[-1] != ref.version:
            stack.append(ref.version)
        self._write_production(ref.name, stack, "promote")
        return mv

    def rollback(self, name: str) -> ModelVersion:
        """Return to the version that was in production before the current one."""
        self.get(ModelRef.parse(name))  # a model that does not exist is named as such
        stack = self._production_stack(name)
        if len(stack) < 2:
            raise ModelStoreError(
                f"model {name!r} has no earlier production version to roll back to"
            )
        stack.pop()
        _, mv = self.load(ModelRef(name, stack[-1]))
        self._write_production(name, stack, "rollback")
        return mv

    def write_artifact(self, mv: ModelVersion, filename: str, data: object) -> Path:
        """Add a JSON report next to a version (its weights and metadata stay untouched)."""
        if filename in {WEIGHTS_FILE, METADATA_FILE}:
            raise ModelStoreError(f"{filename} cannot be overwritten")
        path = mv.path / filename
        write_json_atomic(path, data)
        return path
