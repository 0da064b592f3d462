"""Which folders are watched and how: a JSON file and/or a plain list of folders from the
environment, defaulting to ``<data_dir>/inbox`` so a new user can drop images in and see them.

Precedence, per setting: the folder's own entry, then the file's ``defaults``, then the
``INSPECTOR_WATCH_*`` variables, then the built-in defaults below.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from inspector.db.schema import AFTER_ACTIONS
from inspector.errors import ConfigurationError
from inspector.imaging import IMAGE_EXTENSIONS
from inspector.settings import Settings

DEFAULT_PATTERNS: tuple[str, ...] = tuple(f"*{ext}" for ext in sorted(IMAGE_EXTENSIONS))
# Where files go after inspection, inside the watched folder (never watched themselves).
PROCESSED_DIR = "processed"
FAILED_DIR = "failed"
INBOX_DIR = "inbox"
TEMPORARY_SUFFIXES = (".tmp", ".part")
SIDECAR_SUFFIX = ".json"  # <image file name>.json
MAX_TEXT_CHARS = {"line": 128, "camera": 128, "lot": 128, "model_name": 64}  # jobs columns

ENV_CONFIG = "INSPECTOR_WATCH_CONFIG"
ENV_DIRS = "INSPECTOR_WATCH_DIRS"
# Variable -> WatchFolder field, for the settings every folder has.
ENV_DEFAULTS = {
    "INSPECTOR_WATCH_RECURSIVE": "recursive",
    "INSPECTOR_WATCH_AFTER": "after",
    "INSPECTOR_WATCH_AFTER_ERROR": "after_error",
    "INSPECTOR_WATCH_SIDECAR": "sidecar",
    "INSPECTOR_WATCH_POLLING": "polling",
    "INSPECTOR_WATCH_POLL_SECONDS": "poll_seconds",
    "INSPECTOR_WATCH_STABILITY_SECONDS": "stability_seconds",
    "INSPECTOR_WATCH_RESCAN_SECONDS": "rescan_seconds",
}
# Names in the JSON file that differ from the field names.
FILE_ALIASES = {"model": "model_name", "product": "lot"}


def is_temporary_name(name: str) -> bool:
    """A file still being written or copied by its name: ``.x``, ``x~``, ``x.tmp``, ``x.part``."""
    return name.startswith(".") or name.endswith("~") or name.lower().endswith(TEMPORARY_SUFFIXES)


@dataclass(frozen=True)
class WatchFolder:
    """One watched folder: where, which files, their job's metadata, and what happens after.

    ``after`` applies to a file whose image got a verdict, ``after_error`` to one whose image
    ended in error (unreadable, not an image): ``leave`` it, ``move`` it to ``processed/`` or
    ``failed/`` inside the folder (sub-folders kept), or ``delete`` it. ``after_error``
    defaults to ``move`` when ``after`` moves or deletes, so a failed file stays to be looked
    at. A file counts as complete once its size and modification time have not changed for
    ``stability_seconds``.
    """

    path: Path
    recursive: bool = False
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    line: str | None = None
    camera: str | None = None
    lot: str | None = None
    priority: int = 0
    model_name: str | None = None
    after: str = "leave"
    after_error: str | None = None  # None: follows ``after`` as said above
    sidecar: bool = False  # write <image>.json with the verdict beside the file
    polling: bool = False  # stat the folder every poll_seconds: for shares inotify cannot see
    poll_seconds: float = 1.0
    stability_seconds: float = 2.0
    rescan_seconds: float = 60.0  # full rescan, whatever the events said
    create: bool = False  # create the folder when missing (the default inbox)
    _patterns_lower: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"watch folder {self.path}"
        if not isinstance(self.path, Path) or not self.path.is_absolute():
            raise ConfigurationError(f"{where}: the path must be absolute")
        for name in ("after", "after_error"):
            value = getattr(self, name)
            if value is not None and value not in AFTER_ACTIONS:
                raise ConfigurationError(
                    f"{where}: {name} must be one of {', '.join(AFTER_ACTIONS)}, got {value!r}"
                )
        if self.after_error is None:
            object.__setattr__(self, "after_error", "leave" if self.after == "leave" else "move")
        if not self.patterns or not all(isinstance(p, str) and p for p in self.patterns):
            raise ConfigurationError(
                f"{where}: patterns must be a non-empty list of names like '*.png', "
                f"got {self.patterns!r}"
            )
        for name, limit in MAX_TEXT_CHARS.items():
            value = getattr(self, name)
            if value is not None and not 0 < len(value) <= limit:
                raise ConfigurationError(
                    f"{where}: {name} must be 1 to {limit} characters, got {value!r}"
                )
        for name in ("poll_seconds", "stability_seconds", "rescan_seconds"):
            value = getattr(self, name)
            minimum = 0.0 if name == "stability_seconds" else 0.01
            if not value >= minimum:  # also refuses NaN
                raise ConfigurationError(f"{where}: {name} must be at least {minimum}, got {value}")
        object.__setattr__(self, "_patterns_lower", tuple(p.lower() for p in self.patterns))

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def acts_after(self) -> bool:
        """Whether anything happens to a file once its image is settled."""
        return self.after != "leave" or self.after_error != "leave" or self.sidecar

    def wants(self, filename: str) -> bool:
        """Whether a file of this name is to be inspected (patterns match case-insensitively)."""
        if is_temporary_name(filename):
            return False
        lower = filename.lower()
        if self.sidecar and lower.endswith(SIDECAR_SUFFIX):
            return False  # our own sidecars, whatever the patterns
        return any(fnmatch.fnmatchcase(lower, p) for p in self._patterns_lower)


# -- parsing --------------------------------------------------------------------------------------
_FIELD_TYPES = {
    "recursive": bool,
    "sidecar": bool,
    "polling": bool,
    "create": bool,
    "priority": int,
    "poll_seconds": float,
    "stability_seconds": float,
    "rescan_seconds": float,
    "line": str,
    "camera": str,
    "lot": str,
    "model_name": str,
    "after": str,
    "after_error": str,
}
_SETTABLE = sorted({f.name for f in fields(WatchFolder) if f.init} - {"create"})
_FILE_KEYS = sorted(({*_SETTABLE} - {"model_name"}) | set(FILE_ALIASES))  # "model", as in the API


def _parse_bool(text: str, where: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{where} must be true or false (1/0, yes/no), got {text!r}")


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, name in ENV_DEFAULTS.items():
        raw = environ.get(key)
        if raw is None or raw.strip() == "":
            continue
        kind = _FIELD_TYPES[name]
        if kind is bool:
            values[name] = _parse_bool(raw, key)
        elif kind is float:
            try:
                values[name] = float(raw)
            except ValueError:
                raise ConfigurationError(f"{key} must be a number, got {raw!r}") from None
        else:
            values[name] = raw.strip()
    return values


def _checked(value: object, name: str, where: str) -> object:
    kind = _FIELD_TYPES.get(name)
    if name == "patterns":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise ConfigurationError(f"{where}: patterns must be a list of strings, got {value!r}")
        return tuple(value)
    if name == "path":
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError(f"{where}: path must be a non-empty string, got {value!r}")
        return value
    return checked_type(value, kind, name, where)


def checked_type(value: object, kind: type | None, name: str, where: str) -> object:
    """``value`` of a JSON setting checked against ``kind`` (bool, int, float or str; None: not
    checked; a number for a float comes back as a float); the error names where it was found."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigurationError(f"{where}: {name} must be true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"{where}: {name} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigurationError(f"{where}: {name} must be a number, got {value!r}")
        return float(value)
    elif kind is str and value is not None and not isinstance(value, str):
        raise ConfigurationError(f"{where}: {name} must be a string, got {value!r}")
    return value


def _entry(raw: object, where: str, *, need_path: bool) -> dict[str, Any]:
    if isinstance(raw, str) and need_path:
        raw = {"path": raw}
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{where}: expected an object, got {raw!r}")
    allowed = ["path", *_FILE_KEYS] if need_path else _FILE_KEYS
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}: "
            f"expected {', '.join(allowed)}"
        )
    if need_path and "path" not in raw:
        raise ConfigurationError(f"{where}: every folder needs a 'path'")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = FILE_ALIASES.get(str(key), str(key))
        if name in values:
            raise ConfigurationError(f"{where}: {key!r} given twice (also as {name!r})")
        values[name] = _checked(value, name, where)
    return values


def _resolve(path: str, base: Path) -> Path:
    return (base / Path(path).expanduser()).resolve()


def read_config_document(path: Path) -> Any:
    """The parsed JSON of the watch configuration file (folders and cameras share it)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"{ENV_CONFIG} names {path}, which does not exist") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read watch configuration {path}: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"watch configuration {path} is not valid JSON: {exc}") from None
    return document


def read_watch_file(path: Path, env_defaults: Mapping[str, Any]) -> list[WatchFolder]:
    """The folders of a JSON watch configuration: ``{"defaults": {...}, "folders": [...]}``
    (or just the list of folders; a file of cameras only has none); a folder is an object with
    a ``path``, or a path string.
    Relative paths are taken from the file's own folder."""
    document = read_config_document(path)
    if isinstance(document, list):
        document = {"folders": document}
    # "cameras" and "camera_defaults" belong to the cameras (inspector.sources.camera_config).
    if not isinstance(document, dict) or set(document) - {
        "defaults",
        "folders",
        "cameras",
        "camera_defaults",
    }:
        raise ConfigurationError(
            f"watch configuration {path}: expected an object with 'folders' (a list), "
            "optionally 'defaults', 'cameras' and 'camera_defaults', or a list of folders"
        )
    folders_raw = document.get("folders", [])
    if not isinstance(folders_raw, list):
        raise ConfigurationError(f"watch configuration {path}: 'folders' must be a list")
    defaults = {
        **env_defaults,
        **_entry(document.get("defaults", {}), f"{path}: defaults", need_path=False),
    }
    base = path.parent
    folders = []
    for n, raw in enumerate(folders_raw):
        where = f"{path}: folders[{n}]"
        values = {**defaults, **_entry(raw, where, need_path=True)}
        values["path"] = _resolve(values["path"], base)
        folders.append(WatchFolder(**values))
    return folders


def _check_overlaps(folders: Sequence[WatchFolder]) -> None:
    for i, a in enumerate(folders):
        for b in folders[i + 1 :]:
            if a.path == b.path:
                raise ConfigurationError(f"watch folder {a.path} is configured twice")
            for outer, inner in ((a, b), (b, a)):
                if outer.recursive and inner.path.is_relative_to(outer.path):
                    raise ConfigurationError(
                        f"watch folder {inner.path} lies inside {outer.path}, which is watched "
                        "recursively: its files would be taken by both"
                    )


def load_watch_folders(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> list[WatchFolder]:
    """The configured watched folders: those of the JSON file named by ``INSPECTOR_WATCH_CONFIG``
    and those of ``INSPECTOR_WATCH_DIRS`` (separated by ``os.pathsep``); when neither is set,
    ``<data_dir>/inbox``, created if missing."""
    env = os.environ if environ is None else environ
    defaults = _from_env(env)
    folders: list[WatchFolder] = []
    config = (env.get(ENV_CONFIG) or "").strip()
    if config:
        folders.extend(read_watch_file(Path(config).expanduser().resolve(), defaults))
    dirs = [d.strip() for d in (env.get(ENV_DIRS) or "").split(os.pathsep) if d.strip()]
    base = Path.cwd()
    folders.extend(WatchFolder(path=_resolve(d, base), **defaults) for d in dirs)
    if not config and not dirs:
        folders.append(
            WatchFolder(path=(settings.data_dir / INBOX_DIR).resolve(), create=True, **defaults)
        )
    _check_overlaps(folders)
    return folders
