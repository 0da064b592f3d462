"""Which cameras are captured and how: a ``cameras`` list in the watch configuration file
(``INSPECTOR_WATCH_CONFIG``, next to its ``folders``) and/or ``INSPECTOR_CAMERAS`` (JSON).

Precedence, per setting: the camera's own entry, then the ``camera_defaults`` beside it, then
the job metadata (line, lot/product, priority, model) of the file's ``defaults``, then the
``INSPECTOR_CAMERA_*`` variables, then the built-in defaults of ``CameraConfig``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from inspector.db.schema import CAMERA_MODES
from inspector.errors import ConfigurationError
from inspector.settings import Settings
from inspector.sources.config import (
    ENV_CONFIG,
    FILE_ALIASES,
    MAX_TEXT_CHARS,
    checked_type,
    read_config_document,
)

ENV_CAMERAS = "INSPECTOR_CAMERAS"
# Variable -> CameraConfig field, for settings most sites give all their cameras alike.
ENV_DEFAULTS = {
    "INSPECTOR_CAMERA_RECONNECT_MIN_SECONDS": "reconnect_min_seconds",
    "INSPECTOR_CAMERA_RECONNECT_MAX_SECONDS": "reconnect_max_seconds",
    "INSPECTOR_CAMERA_IMAGE_FORMAT": "image_format",
}
IMAGE_FORMATS = ("jpg", "png")
CAMERAS_DIR = "cameras"  # frames go to <data_dir>/images/cameras/<camera id>/<UTC date>/
# A camera id names a folder and goes into jobs.camera: letters, digits, '.', '_', '-'.
CAMERA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Job metadata the file's "defaults" give folders and cameras alike.
SHARED_DEFAULTS = ("line", "lot", "priority", "model_name")


def describe_source(source: str | int) -> str:
    """``source`` as it may be shown and stored: a URL's password replaced by ``***``."""
    if isinstance(source, int):
        return f"device {source}"
    if not _URL.match(source):
        return source
    try:
        parts = urlsplit(source)
        password = parts.password
    except ValueError:
        return source
    if password is None:
        return source
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    netloc = f"{parts.username or ''}:***@{host}{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class CameraConfig:
    """One camera: where its frames come from, when one is stored, the job metadata, and how
    a failure is retried.

    ``source`` is a stream URL (``rtsp://``, ``http://`` MJPEG, ...), a device (an index such
    as ``0``, or ``/dev/video0``) or an absolute path to a video file (read at its own frame
    rate, once or, with ``loop``, over and over). ``mode`` is ``interval`` (the newest frame
    every ``interval_seconds``), ``every_nth`` (the first frame and every ``every_nth``-th
    after it) or ``trigger`` (a frame for each ``POST /api/v1/cameras/{id}/trigger``; the other
    modes take triggers too). A camera that cannot be opened, or whose stream drops, is opened
    again after ``reconnect_min_seconds``, doubling up to ``reconnect_max_seconds`` while it
    keeps failing.
    """

    id: str
    source: str | int
    mode: str = "interval"
    interval_seconds: float = 1.0
    every_nth: int | None = None
    line: str | None = None
    lot: str | None = None
    priority: int = 0
    model_name: str | None = None
    reconnect_min_seconds: float = 1.0
    reconnect_max_seconds: float = 60.0
    open_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 5.0
    trigger_wait_seconds: float = 2.0  # how long a trigger waits for a frame newer than itself
    trigger_max_age_seconds: float = 30.0  # an older trigger is failed as expired, not served
    image_format: str = "jpg"
    jpeg_quality: int = 95
    loop: bool = False  # video files: start again at the end

    def __post_init__(self) -> None:
        where = f"camera {self.id!r}"
        if not isinstance(self.id, str) or not CAMERA_ID.fullmatch(self.id):
            raise ConfigurationError(
                f"{where}: the id must be 1 to 128 letters, digits, '.', '_' or '-', starting "
                "with a letter or digit"
            )
        source = self.source
        if isinstance(source, str) and source.strip().isdigit():
            source = int(source.strip())
            object.__setattr__(self, "source", source)
        if isinstance(source, bool) or not isinstance(source, str | int):
            raise ConfigurationError(
                f"{where}: source must be a URL, a device index or a file path, got {source!r}"
            )
        if isinstance(source, int) and source < 0:
            raise ConfigurationError(f"{where}: a device index must be 0 or more, got {source}")
        if isinstance(source, str):
            if not source.strip():
                raise ConfigurationError(f"{where}: source must not be empty")
            if self.kind == "file" and not Path(source).is_absolute():
                raise ConfigurationError(
                    f"{where}: a video file source must be an absolute path, got {source!r}"
                )
        if self.mode not in CAMERA_MODES:
            raise ConfigurationError(
                f"{where}: mode must be one of {', '.join(CAMERA_MODES)}, got {self.mode!r}"
            )
        if self.mode == "every_nth" and self.every_nth is None:
            raise ConfigurationError(
                f"{where}: mode every_nth needs every_nth, the N of 'every Nth frame'"
            )
        nth = self.every_nth
        if nth is not None and (isinstance(nth, bool) or not isinstance(nth, int) or nth < 1):
            raise ConfigurationError(f"{where}: every_nth must be an integer >= 1, got {nth!r}")
        for name, limit in MAX_TEXT_CHARS.items():
            value = getattr(self, name, None)
            if name != "camera" and value is not None and not 0 < len(value) <= limit:
                raise ConfigurationError(
                    f"{where}: {name} must be 1 to {limit} characters, got {value!r}"
                )
        for name in (
            "interval_seconds",
            "reconnect_min_seconds",
            "reconnect_max_seconds",
            "open_timeout_seconds",
            "read_timeout_seconds",
            "trigger_wait_seconds",
            "trigger_max_age_seconds",
        ):
            value = getattr(self, name)
            if not value >= 0.01:  # also refuses NaN
                raise ConfigurationError(f"{where}: {name} must be at least 0.01, got {value}")
        if self.reconnect_max_seconds < self.reconnect_min_seconds:
            raise ConfigurationError(
                f"{where}: reconnect_max_seconds ({self.reconnect_max_seconds}) is below "
                f"reconnect_min_seconds ({self.reconnect_min_seconds})"
            )
        if self.image_format not in IMAGE_FORMATS:
            raise ConfigurationError(
                f"{where}: image_format must be one of {', '.join(IMAGE_FORMATS)}, "
                f"got {self.image_format!r}"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigurationError(
                f"{where}: jpeg_quality must be 1 to 100, got {self.jpeg_quality}"
            )

    @property
    def kind(self) -> str:
        """``device``, ``stream`` or ``file``."""
        if isinstance(self.source, int) or self.source.startswith("/dev/"):
            return "device"
        return "stream" if _URL.match(self.source) else "file"

    @property
    def shown_source(self) -> str:
        """The source for logs, the database and the API (no password)."""
        return describe_source(self.source)

    def images_dir(self, data_dir: Path) -> Path:
        """Where this camera's frames are stored."""
        return data_dir / "images" / CAMERAS_DIR / self.id


# -- parsing --------------------------------------------------------------------------------------
_FIELD_TYPES: dict[str, type] = {
    "id": str,
    "mode": str,
    "interval_seconds": float,
    "every_nth": int,
    "line": str,
    "lot": str,
    "priority": int,
    "model_name": str,
    "reconnect_min_seconds": float,
    "reconnect_max_seconds": float,
    "open_timeout_seconds": float,
    "read_timeout_seconds": float,
    "trigger_wait_seconds": float,
    "trigger_max_age_seconds": float,
    "image_format": str,
    "jpeg_quality": int,
    "loop": bool,
}
_SETTABLE = sorted(f.name for f in fields(CameraConfig))
_FILE_KEYS = sorted(({*_SETTABLE} - {"model_name"}) | set(FILE_ALIASES))  # "model", as in the API
_DEFAULT_KEYS = sorted(set(_FILE_KEYS) - {"id", "source"})


def _checked(value: object, name: str, where: str) -> object:
    if name == "source":
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ConfigurationError(
                f"{where}: source must be a URL, a file path (strings) or a device index "
                f"(an integer), got {value!r}"
            )
        return value
    return checked_type(value, _FIELD_TYPES[name], name, where)


def _entry(raw: object, where: str, allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{where}: expected an object, got {raw!r}")
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}: "
            f"expected {', '.join(allowed)}"
        )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = FILE_ALIASES.get(str(key), str(key))
        if name in values:
            raise ConfigurationError(f"{where}: {key!r} given twice (also as {name!r})")
        values[name] = _checked(value, name, where)
    return values


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, name in ENV_DEFAULTS.items():
        raw = (environ.get(key) or "").strip()
        if not raw:
            continue
        if _FIELD_TYPES[name] is float:
            try:
                values[name] = float(raw)
            except ValueError:
                raise ConfigurationError(f"{key} must be a number, got {raw!r}") from None
        else:
            values[name] = raw
    return values


def _resolve_source(values: dict[str, Any], base: Path) -> None:
    source = values.get("source")
    if (
        isinstance(source, str)
        and source.strip()
        and not source.strip().isdigit()
        and not _URL.match(source)
        and not source.startswith("/dev/")
    ):
        values["source"] = str((base / Path(source).expanduser()).resolve())


def parse_cameras(
    document: object,
    where: str,
    *,
    base: Path,
    inherited: Mapping[str, Any],
) -> list[CameraConfig]:
    """The cameras of a parsed JSON ``document``: an object with ``cameras`` (a list of
    objects, each with ``id`` and ``source``) and optionally ``camera_defaults``, or just the
    list. Relative file sources are taken from ``base``."""
    if isinstance(document, list):
        document = {"cameras": document}
    if not isinstance(document, dict):
        raise ConfigurationError(f"{where}: expected an object with 'cameras' or a list of them")
    raw_cameras = document.get("cameras", [])
    if not isinstance(raw_cameras, list):
        raise ConfigurationError(f"{where}: 'cameras' must be a list")
    defaults = {
        **inherited,
        **_entry(document.get("camera_defaults", {}), f"{where}: camera_defaults", _DEFAULT_KEYS),
    }
    found = []
    for n, raw in enumerate(raw_cameras):
        here = f"{where}: cameras[{n}]"
        values = {**defaults, **_entry(raw, here, _FILE_KEYS)}
        for required in ("id", "source"):
            if required not in values:
                raise ConfigurationError(f"{here}: every camera needs {required!r}")
        _resolve_source(values, base)
        found.append(CameraConfig(**values))
    return found


def read_camera_file(path: Path, env_defaults: Mapping[str, Any]) -> list[CameraConfig]:
    """The cameras of the watch configuration file: its ``cameras`` and ``camera_defaults``,
    with the job metadata of its ``defaults``; a file of folders only has none."""
    document = read_config_document(path)
    if isinstance(document, list):  # a list of folders
        return []
    if not isinstance(document, dict):
        raise ConfigurationError(f"watch configuration {path}: expected an object")
    unknown = sorted(set(document) - {"defaults", "folders", "cameras", "camera_defaults"})
    if unknown:
        raise ConfigurationError(
            f"watch configuration {path}: unknown key(s) {', '.join(map(repr, unknown))}: "
            "expected folders, defaults, cameras, camera_defaults"
        )
    shared = document.get("defaults", {})
    inherited = dict(env_defaults)
    if isinstance(shared, dict):
        for key, value in shared.items():
            name = FILE_ALIASES.get(str(key), str(key))
            if name in SHARED_DEFAULTS:
                inherited[name] = _checked(value, name, f"{path}: defaults")
    cameras = {k: v for k, v in document.items() if k in ("cameras", "camera_defaults")}
    return parse_cameras(cameras, str(path), base=path.parent, inherited=inherited)


def _check_unique(cameras: Sequence[CameraConfig]) -> None:
    seen: set[str] = set()
    for camera in cameras:
        if camera.id in seen:
            raise ConfigurationError(f"camera {camera.id!r} is configured twice")
        seen.add(camera.id)


def load_cameras(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> list[CameraConfig]:
    """The configured cameras: the ``cameras`` of the file named by ``INSPECTOR_WATCH_CONFIG``
    and those of ``INSPECTOR_CAMERAS`` (JSON: a list of cameras, or an object with
    ``cameras`` and ``camera_defaults``); none when neither names any. ``settings`` is taken
    for symmetry with ``load_watch_folders``; the frames go under its ``data_dir``."""
    env = os.environ if environ is None else environ
    defaults = _from_env(env)
    cameras: list[CameraConfig] = []
    config = (env.get(ENV_CONFIG) or "").strip()
    if config:
        cameras.extend(read_camera_file(Path(config).expanduser().resolve(), defaults))
    raw = (env.get(ENV_CAMERAS) or "").strip()
    if raw:
        try:
            document = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{ENV_CAMERAS} is not valid JSON: {exc}") from None
        cameras.extend(parse_cameras(document, ENV_CAMERAS, base=Path.cwd(), inherited=defaults))
    _check_unique(cameras)
    return cameras
