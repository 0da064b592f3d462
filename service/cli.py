"""The ``inspector`` command: the core's commands plus the service's processes."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from inspector import cli as core_cli
from inspector.settings import Settings


def cmd_setup(args: argparse.Namespace, settings: Settings) -> int:
    from service.setup import setup, token_path

    setup(settings, progress=not args.quiet)
    print(f"API token kept in {token_path(settings)}")
    return 0


def cmd_web(args: argparse.Namespace, settings: Settings) -> int:
    from service import webserver
    from service.settings import ServiceSettings
    from workers.config import WorkerSettings

    service = ServiceSettings.from_env()
    if args.host:
        service = dataclasses.replace(service, host=args.host)
    if args.port is not None:
        service = dataclasses.replace(service, port=args.port)
    return webserver.serve(settings, service, WorkerSettings.from_env(), log_level=args.log_level)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from service import worker
    from workers.config import WorkerSettings

    return worker.serve(
        settings, WorkerSettings.from_env(), log_level=args.log_level, quiet=args.quiet
    )


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    from service import watch
    from workers.config import WorkerSettings

    return watch.serve(settings, WorkerSettings.from_env())


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from service.run import run
    from service.settings import ServiceSettings

    return run(settings, ServiceSettings.from_env(), log_level=args.log_level)


def add_service_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run", help="set up and run the whole system on this machine (web, worker, watcher)"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "setup", help="create or migrate the database, make sure a model exists, keep a token"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("web", help="the intake service and API under gunicorn")
    p.add_argument("--host", help="default INSPECTOR_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, help="default INSPECTOR_PORT or 8000")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser(
        "watch", help="watch folders (INSPECTOR_WATCH_CONFIG, INSPECTOR_WATCH_DIRS) for new images"
    )
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("worker", help="a Celery worker running the classifier (one per GPU)")
    p.add_argument("--quiet", action="store_true", help="no start-up banner")
    p.set_defaults(func=cmd_worker)


def main(argv: Sequence[str] | None = None) -> int:
    return core_cli.main(argv, extensions=(add_service_commands,))


if __name__ == "__main__":
    sys.exit(main())
