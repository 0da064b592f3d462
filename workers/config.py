"""The workers' own settings (``INSPECTOR_BROKER_URL`` and friends), read at entry points."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from inspector.settings import env_int


@dataclass(frozen=True)
class WorkerSettings:
    """How workers reach the queue and how patiently they retry (the rest: ``Settings``)."""

    broker_url: str = ""  # empty: Kombu's filesystem transport under <data_dir>/queue/
    lease_seconds: int = 600
    max_attempts: int = 3
    default_model: str | None = None  # for jobs that name none; None: the store's only model
    poll_seconds: int = 5
    visibility_timeout: int = 3600  # Redis redelivers an unacked wake-up after this long
    queue: str = "inspector"  # the broker queue; one per deployment sharing a Redis

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if environ is None else environ
        return cls(
            broker_url=env.get("INSPECTOR_BROKER_URL", "").strip(),
            lease_seconds=env_int(env, "INSPECTOR_LEASE_SECONDS", 600, minimum=1),
            max_attempts=env_int(env, "INSPECTOR_MAX_ATTEMPTS", 3, minimum=1),
            default_model=env.get("INSPECTOR_DEFAULT_MODEL") or None,
            poll_seconds=env_int(env, "INSPECTOR_POLL_SECONDS", 5, minimum=1),
            visibility_timeout=env_int(env, "INSPECTOR_VISIBILITY_TIMEOUT", 3600, minimum=60),
            queue=env.get("INSPECTOR_QUEUE") or "inspector",
        )
