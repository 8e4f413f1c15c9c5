"""A PostgreSQL server of a test's own: initdb in a temporary folder, its own port.

Fault tests stop, restart and kill it; the machine's shared PostgreSQL is never touched. As root
the server runs as the unprivileged `postgres` user (initdb refuses root); the binaries come from
the Debian layout (/usr/lib/postgresql/N/bin) or PATH.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tests.tools import tool_unavailable

START_TIMEOUT_S = 60.0  # hang guard for initdb and start-up on a busy machine


def _bin_dir() -> Path:
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if debian:
        return debian[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        tool_unavailable("a private PostgreSQL needs initdb and pg_ctl")
    return Path(pg_ctl).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivatePostgres:
    """One private server: `dsn` reaches its `postgres` database as user `postgres`."""

    def __init__(self, data: Path, port: int) -> None:
        self.data = data
        self.port = port
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self._bin = _bin_dir()

    async def _run(self, *args: str, check: bool = True) -> int:
        command = [str(self._bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(proc.communicate(), START_TIMEOUT_S)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{args[0]} {args[1]} failed: {err.decode()[-500:]}")
        return proc.returncode or 0

    async def init(self) -> None:
        await self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync"
        )

    async def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        await self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w", "start")

    async def stop(self, mode: str = "fast", *, check: bool = True) -> None:
        await self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=check)

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@asynccontextmanager
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    """A started private server, stopped and deleted afterwards whatever the test did."""
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            tool_unavailable("a private PostgreSQL as root needs the unprivileged user postgres")
    with tempfile.TemporaryDirectory(prefix="octollm-pg-") as folder:
        data = Path(folder) / "data"
        data.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chmod(folder, 0o755)
            os.chown(data, owner.pw_uid, owner.pw_gid)
        server = PrivatePostgres(data, _free_port())
        await server.init()
        await server.start()
        try:
            yield server
        finally:
            await server.stop("immediate", check=False)
