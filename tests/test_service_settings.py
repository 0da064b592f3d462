"""The service's own settings: host and port, production, and the secret key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from inspector.errors import ConfigurationError
from service.settings import ServiceSettings


def test_defaults_listen_on_localhost_8000() -> None:
    service = ServiceSettings.from_env({})
    assert (service.host, service.port) == ("127.0.0.1", 8000)
    assert not service.production


def test_environment_is_read() -> None:
    service = ServiceSettings.from_env(
        {"INSPECTOR_HOST": "0.0.0.0", "INSPECTOR_PORT": "9001", "INSPECTOR_ENV": "Production"}
    )
    assert (service.host, service.port, service.production) == ("0.0.0.0", 9001, True)


@pytest.mark.parametrize(
    ("key", "value"), [("INSPECTOR_ENV", "staging"), ("INSPECTOR_PORT", "eighty")]
)
def test_bad_values_are_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=key):
        ServiceSettings.from_env({key: value})


def test_production_without_a_secret_is_an_error(tmp_path: Path) -> None:
    service = ServiceSettings.from_env({"INSPECTOR_ENV": "production"})
    with pytest.raises(ConfigurationError, match="INSPECTOR_SECRET_KEY is not set"):
        service.secret(tmp_path)
    assert not (tmp_path / "secret_key").exists()  # no default made up behind the operator


def test_a_given_secret_is_used_and_must_be_long_enough(tmp_path: Path) -> None:
    key = "k" * 32
    env = {"INSPECTOR_ENV": "production", "INSPECTOR_SECRET_KEY": key}
    assert ServiceSettings.from_env(env).secret(tmp_path) == key
    short = ServiceSettings.from_env({"INSPECTOR_SECRET_KEY": "short"})
    with pytest.raises(ConfigurationError, match="at least 16"):
        short.secret(tmp_path)


def test_development_keeps_one_private_secret(tmp_path: Path) -> None:
    service = ServiceSettings.from_env({})
    first = service.secret(tmp_path)
    assert len(first) >= 32
    assert service.secret(tmp_path) == first  # the same key on the next start
    mode = stat.S_IMODE((tmp_path / "secret_key").stat().st_mode)
    assert mode == 0o600


def test_run_refuses_a_port_in_use_before_starting_anything(tmp_path: Path) -> None:
    import socket

    from service.run import port_problem

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        problem = port_problem(ServiceSettings(port=port))
        assert problem is not None and f"127.0.0.1:{port}" in problem
    assert port_problem(ServiceSettings(port=port)) is None  # free again
