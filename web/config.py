"""The web service's own settings (INSPECTOR_*), read once when the app is created."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from inspector.errors import ConfigurationError
from inspector.settings import env_int

DEFAULT_MAX_UPLOAD_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_QUEUE_DEPTH = 100_000
DEFAULT_INSPECT_TIMEOUT = 10.0


def _seconds(environ: Mapping[str, str], key: str, default: float) -> float:
    raw = environ.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{key} must be a number of seconds, got {raw!r}") from None
    if not 0 <= value <= 3600:
        raise ConfigurationError(f"{key} must be between 0 and 3600 seconds, got {value}")
    return value


def _roots(environ: Mapping[str, str], key: str) -> tuple[Path, ...]:
    roots = []
    for part in (environ.get(key) or "").split(os.pathsep):
        if not part.strip():
            continue
        path = Path(part.strip()).expanduser()
        if not path.is_absolute():
            raise ConfigurationError(f"{key} must list absolute folders, got {part!r}")
        # Compared against the real paths of requested files, so resolve symlinks here too.
        roots.append(Path(os.path.realpath(path)))
    return tuple(roots)


@dataclass(frozen=True)
class WebSettings:
    """Limits of the intake service; see ``from_env`` for the variables."""

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    allowed_roots: tuple[Path, ...] = ()  # folders JSON ``paths`` may name; none: refused
    max_queue_depth: int = DEFAULT_MAX_QUEUE_DEPTH  # open images beyond which intake says 503
    inspect_timeout: float = DEFAULT_INSPECT_TIMEOUT  # how long /inspect waits for a verdict

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebSettings:
        """``INSPECTOR_MAX_UPLOAD_BYTES``, ``INSPECTOR_ALLOWED_ROOTS`` (os.pathsep-separated),
        ``INSPECTOR_MAX_QUEUE_DEPTH`` and ``INSPECTOR_INSPECT_TIMEOUT`` (seconds)."""
        env = os.environ if environ is None else environ
        return cls(
            max_upload_bytes=env_int(
                env, "INSPECTOR_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES, minimum=1
            ),
            allowed_roots=_roots(env, "INSPECTOR_ALLOWED_ROOTS"),
            max_queue_depth=env_int(
                env, "INSPECTOR_MAX_QUEUE_DEPTH", DEFAULT_MAX_QUEUE_DEPTH, minimum=1
            ),
            inspect_timeout=_seconds(env, "INSPECTOR_INSPECT_TIMEOUT", DEFAULT_INSPECT_TIMEOUT),
        )
