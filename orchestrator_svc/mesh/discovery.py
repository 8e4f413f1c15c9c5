"""Arm discovery: static endpoints and DNS names whose every address is one arm replica.

`host:port` is dialled as is. `dns:///name:port` is resolved now and every `refresh_s`; each
address it yields (A and AAAA records, as for a Kubernetes headless Service) becomes one
connection, and addresses that disappear are removed (their in-flight subtasks fail over).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

import structlog

from .mesh import Mesh

log = structlog.get_logger(__name__)

DNS_SCHEME = "dns:///"


def split_host_port(target: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); raises ValueError with a readable message."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"arm endpoint {target!r} must be host:port")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def resolve(name: str, port: int) -> set[str]:
    """Every address `name` resolves to, as dialable host:port strings."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return {join_host_port(str(info[4][0]), port) for info in infos}


class Discovery:
    """Keeps the mesh's endpoints in line with the configured targets."""

    def __init__(self, mesh: Mesh, targets: Iterable[str], refresh_s: float = 10.0) -> None:
        self._mesh = mesh
        self._targets = list(targets)
        self._refresh_s = refresh_s
        self._tasks: list[asyncio.Task[None]] = []
        for target in self._targets:  # fail at start-up on a malformed target, not later
            split_host_port(target.removeprefix(DNS_SCHEME))

    def start(self) -> None:
        for target in self._targets:
            if target.startswith(DNS_SCHEME):
                host, port = split_host_port(target.removeprefix(DNS_SCHEME))
                self._tasks.append(
                    asyncio.create_task(self._follow_dns(host, port), name=f"dns {target}")
                )
            else:
                self._mesh.add(target)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow_dns(self, host: str, port: int) -> None:
        current: set[str] = set()
        while True:
            try:
                found = await asyncio.wait_for(resolve(host, port), timeout=5.0)
            except (OSError, TimeoutError) as exc:
                # Keep the last known replicas: a DNS hiccup must not empty the mesh.
                log.warning("dns_resolve_failed", host=host, error=str(exc))
            else:
                for address in sorted(found - current):
                    self._mesh.add(address)
                for address in sorted(current - found):
                    await self._mesh.remove(address)
                if found != current:
                    log.info("dns_arms", host=host, addresses=sorted(found))
                current = found
            await asyncio.sleep(self._refresh_s)
