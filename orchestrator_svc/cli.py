"""`octollm`: dev | serve | arm | ingest | submit | watch.

octollm dev [--once]             orchestrator + local arms in one process, runs a sample task
octollm serve                    the orchestrator alone (arms from OCTOLLM_ARM_ENDPOINTS)
octollm arm echo --listen ...    one reference arm
octollm ingest docs/             index .md/.txt files for the retriever arm
octollm migrate                  apply database migrations (OCTOLLM_POSTGRES_DSN)
octollm submit "goal" --watch    submit a task and follow it
octollm watch TASK_ID            follow a task's events
"""

from __future__ import annotations

import os

# NOTE: before grpc is imported. The commands run on uvloop, whose subprocesses (the executor
# arm's sandbox launcher) start with fork(), which runs grpc's fork handlers in the child; they
# can abort it (SIGABRT before exec). No command forks a process that goes on using grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from google.protobuf import json_format
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc
from pydantic import ValidationError

from .client import follow, open_channel
from .config import ConfigFileError, Settings, describe_errors
from .signals import wait_for_signal
from .store import StoreError
from .telemetry import configure_logging

DEFAULT_ADDRESS = "127.0.0.1:50051"


def _print(line: str) -> None:
    print(line, flush=True)


async def _serve(settings: Settings) -> int:
    from .server import Orchestrator

    orchestrator = await Orchestrator(settings).start()
    try:
        await wait_for_signal()
    finally:
        await orchestrator.stop()
    return 0


async def _dev(settings: Settings, once: bool) -> int:
    from .dev import run

    return await run(settings, once, _print)


async def _arm(name: str, listen: str) -> int:
    from arm_sdk import ServerTLS
    from orchestrator_svc.arms import REFERENCE_ARMS

    settings = Settings()
    port = settings.arm_metrics_port
    metrics = (settings.metrics_host, port) if port >= 0 else None
    server = await REFERENCE_ARMS[name]().start(
        listen, tls=ServerTLS.from_env(), metrics=metrics, allow_insecure=settings.allow_insecure
    )
    _print(f"arm {name} listening on {server.address}")
    try:
        await wait_for_signal()
    finally:
        await server.drain(grace=10.0)
    return 0


async def _migrate(settings: Settings) -> int:
    from .store import migrate

    if not settings.postgres_dsn:
        print("octollm: set OCTOLLM_POSTGRES_DSN to the database to migrate", file=sys.stderr)
        return 2
    applied = await migrate(settings.postgres_dsn)
    _print(f"applied migrations: {', '.join(applied)}" if applied else "schema is up to date")
    return 0


async def _ingest(path: str) -> int:
    from orchestrator_svc.arms.retriever import DimensionMismatch, StoreBusy, ingest

    try:
        report = await ingest(path)
    except (FileNotFoundError, DimensionMismatch, StoreBusy, ValueError) as exc:
        print(f"octollm: cannot ingest {path}: {exc}", file=sys.stderr)
        return 1
    _print(report.summary())
    return 0


async def _submit(args: argparse.Namespace) -> int:
    request = pb.SubmitTaskRequest(
        goal=args.goal, constraints=args.constraint, request_id=args.request_id or ""
    )
    if args.plan_json:
        json_format.Parse(args.plan_json, request.plan)
    async with open_channel(args.address) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        task = (await stub.SubmitTask(request, timeout=10)).task
        _print(task.task_id)
        if not args.watch:
            return 0
        state = await follow(stub, task.task_id, _print)
    return 0 if state == pb.TASK_STATE_SUCCEEDED else 1


async def _watch(args: argparse.Namespace) -> int:
    async with open_channel(args.address) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        state = await follow(stub, args.task_id, _print, after_seq=args.after_seq)
    return 0 if state == pb.TASK_STATE_SUCCEEDED else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="octollm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="orchestrator + local arms in one process, sample task")
    dev.add_argument("--listen", help=f"address to serve on (default {DEFAULT_ADDRESS})")
    dev.add_argument("--once", action="store_true", help="exit after the sample task")
    serve = sub.add_parser("serve", help="run the orchestrator")
    serve.add_argument("--listen", help="address to serve on (default OCTOLLM_LISTEN)")
    serve.add_argument("--arm", action="append", default=[], help="arm endpoint (repeatable)")
    arm = sub.add_parser("arm", help="run a reference arm")
    arm.add_argument("name", choices=sorted(_arm_names()))
    arm.add_argument("--listen", default="127.0.0.1:50061")
    sub.add_parser("migrate", help="apply database migrations (OCTOLLM_POSTGRES_DSN)")
    ingest = sub.add_parser(
        "ingest", help="index text/markdown files for the retriever arm (OCTOLLM_RETRIEVER_PATH)"
    )
    ingest.add_argument("path", help="a folder (walked for .md/.txt) or one file")
    submit = sub.add_parser("submit", help="submit a task")
    submit.add_argument("goal")
    submit.add_argument("--constraint", action="append", default=[])
    submit.add_argument("--plan", help="JSON file with an explicit Plan")
    submit.add_argument("--request-id", help="idempotency key")
    submit.add_argument("--watch", action="store_true", help="follow the task to the end")
    watch = sub.add_parser("watch", help="follow a task's events")
    watch.add_argument("task_id")
    watch.add_argument("--after-seq", type=int, default=0)
    for p in (submit, watch):
        p.add_argument("--address", default=DEFAULT_ADDRESS)
    return parser


def _arm_names() -> list[str]:
    from orchestrator_svc.arms import REFERENCE_ARMS

    return list(REFERENCE_ARMS)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop `OCTOLLM_EVENT_LOOP` asks for: uvloop (`auto` when it is installed; about
    15% less CPU per task for the same work) or asyncio's own (None)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            missing = "octollm: OCTOLLM_EVENT_LOOP=uvloop, but uvloop is not installed"
            raise SystemExit(missing) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        for line in describe_errors(exc).splitlines():
            print(f"octollm: invalid configuration: {line}", file=sys.stderr)
        return 2
    except ConfigFileError as exc:
        print(f"octollm: invalid configuration: {exc}", file=sys.stderr)
        return 2
    updates: dict[str, object] = {}
    if getattr(args, "listen", None):
        updates["listen"] = args.listen
    if getattr(args, "arm", None) and args.command == "serve":
        updates["arm_endpoints"] = settings.arm_endpoints + args.arm
    settings = settings.model_copy(update=updates)
    # Commands that print progress for a human keep logs to warnings unless asked otherwise.
    quiet = (
        args.command in {"dev", "submit", "watch", "ingest"}
        and "OCTOLLM_LOG_LEVEL" not in os.environ
    )
    configure_logging(settings.log_format, "warning" if quiet else settings.log_level)
    if args.command == "submit":
        try:
            args.plan_json = Path(args.plan).read_text() if args.plan else ""
        except OSError as exc:
            print(f"octollm: cannot read plan: {exc}", file=sys.stderr)
            return 2
    commands = {
        "dev": lambda: _dev(settings, args.once),
        "serve": lambda: _serve(settings),
        "arm": lambda: _arm(args.name, args.listen),
        "ingest": lambda: _ingest(args.path),
        "migrate": lambda: _migrate(settings),
        "submit": lambda: _submit(args),
        "watch": lambda: _watch(args),
    }
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            return runner.run(commands[args.command]())
    except grpc.aio.AioRpcError as exc:
        print(f"octollm: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"octollm: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, json_format.ParseError) as exc:
        print(f"octollm: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
