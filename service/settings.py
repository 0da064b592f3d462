"""Settings of the processes themselves: where the web listens, production or not, the secret."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from inspector.errors import ConfigurationError
from inspector.settings import env_int

ENVIRONMENTS = ("development", "production")


@dataclass(frozen=True)
class ServiceSettings:
    """``INSPECTOR_HOST``/``INSPECTOR_PORT`` (127.0.0.1:8000), ``INSPECTOR_ENV`` (development),
    ``INSPECTOR_SECRET_KEY``, ``INSPECTOR_WEB_PROCESSES`` (2), ``INSPECTOR_WEB_THREADS`` (8),
    ``INSPECTOR_RUN_WORKERS`` (1: workers ``inspector run`` starts), ``INSPECTOR_RUN_WATCHER``
    (1: ``inspector run`` also starts ``inspector watch``; 0: not)."""

    host: str = "127.0.0.1"
    port: int = 8000
    environment: str = "development"
    secret_key: str = ""
    web_processes: int = 2
    web_threads: int = 8
    run_workers: int = 1
    run_watcher: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceSettings:
        env = os.environ if environ is None else environ
        environment = (env.get("INSPECTOR_ENV") or "development").strip().lower()
        if environment not in ENVIRONMENTS:
            raise ConfigurationError(
                f"INSPECTOR_ENV must be one of {', '.join(ENVIRONMENTS)}, got {environment!r}"
            )
        return cls(
            host=(env.get("INSPECTOR_HOST") or "127.0.0.1").strip(),
            port=env_int(env, "INSPECTOR_PORT", 8000, minimum=0),
            environment=environment,
            secret_key=env.get("INSPECTOR_SECRET_KEY", "").strip(),
            web_processes=env_int(env, "INSPECTOR_WEB_PROCESSES", 2, minimum=1),
            web_threads=env_int(env, "INSPECTOR_WEB_THREADS", 8, minimum=1),
            run_workers=env_int(env, "INSPECTOR_RUN_WORKERS", 1, minimum=1),
            run_watcher=env_int(env, "INSPECTOR_RUN_WATCHER", 1, minimum=0) > 0,
        )

    @property
    def production(self) -> bool:
        return self.environment == "production"

    def secret(self, data_dir: Path) -> str:
        """The key that signs the web's sessions.

        In production it must be given (``INSPECTOR_SECRET_KEY``, the same on every web
        machine): a missing secret is an error, never a default. On one machine in development
        a random key is kept in ``<data_dir>/secret_key``.
        """
        if self.secret_key:
            if len(self.secret_key) < 16:
                raise ConfigurationError("INSPECTOR_SECRET_KEY must be at least 16 characters")
            return self.secret_key
        if self.production:
            raise ConfigurationError(
                "INSPECTOR_SECRET_KEY is not set: in production (INSPECTOR_ENV=production) the "
                "web service needs a secret key, the same on every web machine; generate one "
                "with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return local_secret(data_dir / "secret_key")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")


def local_secret(path: Path) -> str:
    """The key kept in ``path`` (readable by its owner only), made on first use."""
    with contextlib.suppress(FileExistsError):
        _write_private(path, secrets.token_urlsafe(32))
    key = path.read_text().strip()
    if len(key) < 16:
        raise ConfigurationError(f"{path} holds no usable secret key: delete it to make a new one")
    return key
