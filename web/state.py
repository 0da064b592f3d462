"""What every view needs from the app it runs in: settings, engine, the wake-up, metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from flask import current_app
from sqlalchemy import Engine

from inspector.settings import Settings
from web.config import WebSettings
from web.metrics import WebMetrics

# Wakes the workers for a new job; the job is already in the database when it is called.
Enqueue = Callable[[str], None]
# A readiness check: raises (any exception, its message shown) when the service is not ready;
# a returned string is shown as the check's detail.
ReadyCheck = Callable[[], object]

EXTENSION_KEY = "inspector"


@dataclass(frozen=True)
class WebState:
    """Kept on ``app.extensions["inspector"]``."""

    settings: Settings
    web: WebSettings
    engine: Engine
    enqueue: Enqueue
    ready_checks: tuple[ReadyCheck, ...]
    metrics: WebMetrics


def web_state() -> WebState:
    """The state of the app handling the current request."""
    return cast(WebState, current_app.extensions[EXTENSION_KEY])
