"""Settings read from the environment (INSPECTOR_*), once, at each entry point."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from inspector.errors import ConfigurationError

DEFAULT_MAX_IMAGE_PIXELS = 50_000_000


def env_int(environ: Mapping[str, str], key: str, default: int, minimum: int = 0) -> int:
    raw = environ.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{key} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{key} must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the core needs from its environment, typed and validated."""

    data_dir: Path
    model_store_dir: Path
    weights_dir: Path
    database_url: str = ""
    device: str = "auto"
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    batch_size: int = 32
    decode_workers: int = 2

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        data_dir = Path(env.get("INSPECTOR_DATA_DIR") or "data").expanduser().resolve()
        store = env.get("INSPECTOR_MODEL_STORE")
        weights = env.get("INSPECTOR_WEIGHTS_DIR")
        device = env.get("INSPECTOR_DEVICE") or "auto"
        if device not in {"auto", "cpu"} and not device.startswith("cuda"):
            raise ConfigurationError(
                f"INSPECTOR_DEVICE must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}"
            )
        return cls(
            data_dir=data_dir,
            database_url=env.get("INSPECTOR_DATABASE_URL")
            or f"sqlite:///{data_dir / 'inspector.db'}",
            model_store_dir=Path(store).expanduser().resolve() if store else data_dir / "models",
            weights_dir=Path(weights).expanduser().resolve() if weights else data_dir / "weights",
            device=device,
            max_image_pixels=env_int(
                env, "INSPECTOR_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS, minimum=1
            ),
            batch_size=env_int(env, "INSPECTOR_BATCH_SIZE", 32, minimum=1),
            decode_workers=env_int(env, "INSPECTOR_DECODE_WORKERS", 2, minimum=0),
        )
