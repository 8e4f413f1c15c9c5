"""Container health check: grpc.health.v1 Check on loopback; exit 0 when SERVING, else 1.

    healthcheck.py [PORT | HOST:PORT] [--service NAME] [--timeout SECONDS]

With no address it checks the port the container's own process listens on: the `--listen`
argument of PID 1 (`octollm arm echo --listen 0.0.0.0:50061`), else OCTOLLM_LISTEN, else 50051,
always dialled on 127.0.0.1. One image serves the orchestrator and every arm, so the image's
HEALTHCHECK needs no per-service override.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORT = 50051
PID1_CMDLINE = Path("/proc/1/cmdline")


def listen_from_argv(argv: Sequence[str]) -> str | None:
    """The value of `--listen ADDR` or `--listen=ADDR` in a command line, if any."""
    for index, arg in enumerate(argv):
        if arg == "--listen" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--listen="):
            return arg.partition("=")[2]
    return None


def port_of(address: str) -> int:
    """The port of `host:port`, `[v6]:port` or a bare port."""
    port = address.rpartition(":")[2]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"no port in {address!r}")
    return int(port)


def default_target() -> str:
    """127.0.0.1 and the port this container's server listens on."""
    try:
        argv = PID1_CMDLINE.read_bytes().decode(errors="replace").split("\0")
    except OSError:
        argv = []
    address = listen_from_argv(argv) or os.environ.get("OCTOLLM_LISTEN") or str(DEFAULT_PORT)
    return f"127.0.0.1:{port_of(address)}"


def check(target: str, service: str, timeout_s: float) -> bool:
    """True when `target` answers SERVING for `service` within `timeout_s`."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else type(exc).__name__
            print(f"unhealthy: {target}: {code}", file=sys.stderr)
            return False
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        print(f"unhealthy: {target}: {status}", file=sys.stderr)
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", help="PORT or HOST:PORT (default: see above)")
    parser.add_argument("--service", default="", help="health service name ('' = overall)")
    parser.add_argument("--timeout", type=float, default=3.0, help="RPC deadline in seconds")
    args = parser.parse_args(argv)
    try:
        if args.target is None:
            target = default_target()
        elif args.target.isdigit():
            target = f"127.0.0.1:{port_of(args.target)}"
        else:
            target = args.target
    except ValueError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0 if check(target, args.service, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
