"""Running one request in the sandbox: scratch dir, launcher process, output, limits, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog

from arm_sdk import ArmError
from orchestrator_svc.arms.executor._policy import RunRequest
from orchestrator_svc.arms.executor._settings import ExecutorSettings

log = structlog.get_logger(__name__)

LAUNCHER = str(Path(__file__).with_name("_launch.py"))
SNIPPET = "snippet.py"
# Read-only (and executable) for every run: the system's programs and libraries.
SYSTEM_READ_PATHS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/localtime",
)
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_CHUNK = 64 << 10
# After the program exits, how long its output pipes may take to reach end-of-file.
_DRAIN_S = 2.0
_REAP_TRIES = 20


@dataclass(frozen=True, slots=True)
class Isolation:
    """What the kernel actually enforced for one run, as the launcher reported it."""

    network_namespace: bool = False
    pid_namespace: bool = False
    user_namespace: bool = False
    landlock_abi: int = 0
    landlock_fs: bool = False
    landlock_net: bool = False
    uid: int | None = None

    @property
    def network(self) -> str:
        """``isolated``, ``tcp blocked`` (Landlock only: UDP still works) or ``not isolated``."""
        if self.network_namespace:
            return "isolated"
        if self.landlock_net:
            return "tcp blocked"
        return "not isolated"


@dataclass(slots=True)
class RunOutcome:
    """How a run ended."""

    stdout: bytes
    stderr: bytes
    # The exit status; -N when a signal N ended the program (as in subprocess).
    exit_code: int
    duration_s: float
    truncated: bool
    timed_out: bool
    cpu_s: float | None
    isolation: Isolation
    setup_error: str | None
    scratch: str


@dataclass(slots=True, eq=False)
class _Run:
    uid: int | None
    scratch: str = ""
    proc: asyncio.subprocess.Process | None = None
    kept: int = 0
    truncated: bool = False
    killed: bool = False
    status_pipe: Any = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    # Runs made before this one in its scratch dir (the interpreter probe).
    probes: list[_Run] = field(default_factory=list)

    def kill(self) -> None:
        """SIGKILL the launcher's process group: launcher, init and (unless it left the group)
        the program; init and the program die with their parent in any case."""
        for probe in self.probes:
            probe.kill()
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.killed = True
        # NOTE: also after the launcher exited: without a pid namespace, what the program left
        # in its process group is still to be killed.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class Sandbox:
    """Runs requests one per slot, each in a fresh scratch dir, under the configured limits."""

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings
        self.as_root = os.geteuid() == 0
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        # NOTE: as root, each concurrent run gets a uid of its own: RLIMIT_NPROC then counts
        # that run's processes only, and leftovers can be killed by uid.
        self._free_uids = (
            [settings.uid_base + i for i in reversed(range(settings.max_concurrency))]
            if self.as_root
            else []
        )
        self._python: str | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def run(self, request: RunRequest) -> RunOutcome:
        """Run one request to its end (or its limit); the scratch dir is gone when this returns."""
        await self._slots.acquire()
        run = _Run(uid=self._free_uids.pop() if self.as_root else None)
        try:
            return await self._execute(request, run)
        finally:
            run.kill()
            finish = asyncio.ensure_future(self._finish(run))
            self._background.add(finish)
            finish.add_done_callback(self._background.discard)
            # NOTE: shielded: a cancelled handler must still leave no process and no scratch.
            await asyncio.shield(finish)

    async def python(self, run: _Run) -> str:
        """The interpreter for snippets: the configured one, else the arm's own, else python3 on
        the sandbox PATH: the first that starts in this sandbox (found once, with a probe run
        under ``run``'s uid and scratch dir, before ``run`` itself starts)."""
        if self._python is None:
            candidates = [self.settings.python] if self.settings.python else []
            candidates.append(sys.executable)
            found = shutil.which("python3", path=self.settings.sandbox_path)
            if found:
                candidates.append(found)
            for candidate in candidates:
                probe = _Run(uid=run.uid, scratch=run.scratch)
                run.probes.append(probe)
                outcome = await self._launch(probe, (candidate, "-I", "-S", "-c", "pass"), None, 30)
                await self._close(probe)
                if outcome.exit_code == 0 and outcome.setup_error is None:
                    self._python = candidate
                    break
                log.info(
                    "executor_python_unusable",
                    python=candidate,
                    exit_code=outcome.exit_code,
                    error=outcome.setup_error or outcome.stderr.decode(errors="replace")[-300:],
                )
            else:
                raise ArmError(
                    "no Python interpreter starts in the sandbox",
                    code=grpc.StatusCode.FAILED_PRECONDITION,
                    reason="PYTHON_UNAVAILABLE",
                    metadata={"tried": ", ".join(candidates)},
                )
            if self._python != candidates[0]:
                log.warning("executor_python_fallback", wanted=candidates[0], python=self._python)
        return self._python

    async def _execute(self, request: RunRequest, run: _Run) -> RunOutcome:
        run.scratch = self._make_scratch(run.uid, request.python_source)
        argv = request.argv
        if request.python_source is not None:
            argv = (await self.python(run), "-I", "-S", SNIPPET)
        return await self._launch(run, argv, request.stdin, request.wall_s)

    async def _launch(
        self, run: _Run, argv: tuple[str, ...], stdin: bytes | None, wall_s: float
    ) -> RunOutcome:
        """Start the launcher for ``argv`` in ``run``'s scratch dir and wait for the end."""
        settings = self.settings
        spec = {
            "arm_pid": os.getpid(),
            "argv": list(argv),
            "cwd": run.scratch,
            "env": self._environment(run.scratch),
            "uid": run.uid,
            "namespaces": settings.namespaces,
            "landlock": self._landlock_paths(run.scratch, argv[0]) if settings.landlock else None,
            "rlimits": {
                "cpu_s": settings.cpu_s,
                "as_bytes": settings.memory_mb << 20,
                "fsize_bytes": settings.file_bytes,
                "nofile": settings.open_files,
                "max_procs": settings.max_procs,
            },
        }
        read_fd, write_fd = os.pipe()
        spec["status_fd"] = write_fd
        try:
            # NOTE: no user=/preexec_fn here: with those, CPython forks with fork() instead of
            # vfork() and runs the atfork handlers of the arm's threads (grpc's among them) in
            # the child, which crashed it now and then. The launcher drops privileges itself.
            run.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                LAUNCHER,
                json.dumps(spec),
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(write_fd,),
                start_new_session=True,
                cwd="/",
                env={"PATH": settings.sandbox_path, "LANG": "C.UTF-8"},
            )
        finally:
            os.close(write_fd)
            run.status_pipe = os.fdopen(read_fd, "rb", buffering=0)
        started = time.monotonic()
        proc = run.proc
        assert proc.stdout is not None
        assert proc.stderr is not None
        status = asyncio.ensure_future(_read_status(run.status_pipe))
        stdout, stderr = bytearray(), bytearray()
        overflow = asyncio.Event()
        pumps = [
            asyncio.ensure_future(self._pump(run, proc.stdout, stdout, overflow)),
            asyncio.ensure_future(self._pump(run, proc.stderr, stderr, overflow)),
        ]
        over = asyncio.ensure_future(overflow.wait())
        run.tasks.extend([status, *pumps, over])
        if stdin is not None:
            run.tasks.append(asyncio.ensure_future(_feed(proc, stdin)))
        # NOTE: the end of the status pipe, not proc.wait(), says the run is over: it comes
        # when launcher and init have exited, while wait() (Python 3.11) also waits for the
        # output pipes, which a process that escaped the group may hold open.
        await asyncio.wait({status, over}, timeout=wall_s, return_when=asyncio.FIRST_COMPLETED)
        timed_out = not status.done() and not run.truncated
        duration = time.monotonic() - started
        run.kill()
        try:
            events = await asyncio.wait_for(asyncio.shield(status), _DRAIN_S)
        except TimeoutError:
            events = []
        in_pid_namespace = any(e.get("event") == "namespaces" and e.get("pid") for e in events)
        if run.uid is not None and not in_pid_namespace:
            # Processes that left the group would keep the output pipes open.
            await self._reap(run.uid)
        _, pending = await asyncio.wait(pumps, timeout=_DRAIN_S)
        for pump in pending:
            pump.cancel()
        return _outcome(
            events,
            run,
            stdout=bytes(stdout),
            stderr=bytes(stderr),
            duration_s=duration,
            timed_out=timed_out,
            returncode=proc.returncode,
        )

    async def _pump(
        self,
        run: _Run,
        stream: asyncio.StreamReader,
        sink: bytearray,
        overflow: asyncio.Event,
    ) -> None:
        """Keep output up to the limit; past it, flag the overflow and read on, discarding, so
        the pipe reaches end-of-file once the killed writers are gone."""
        limit = self.settings.output_bytes
        while chunk := await stream.read(_CHUNK):
            room = limit - run.kept
            if len(chunk) > room:
                sink += chunk[: max(room, 0)]
                run.kept = limit
                run.truncated = True
                overflow.set()
            else:
                sink += chunk
                run.kept += len(chunk)

    def _make_scratch(self, uid: int | None, source: str | None) -> str:
        scratch = tempfile.mkdtemp(prefix="octollm-exec-", dir=self.settings.scratch_root or None)
        if source is not None:
            snippet = os.path.join(scratch, SNIPPET)
            with open(snippet, "w", encoding="utf-8") as f:
                f.write(source)
            if uid is not None:
                os.chown(snippet, uid, uid)
        if uid is not None:
            os.chown(scratch, uid, uid)
        return scratch

    def _environment(self, scratch: str) -> dict[str, str]:
        return {
            "PATH": self.settings.sandbox_path,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": scratch,
            "TMPDIR": scratch,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONNOUSERSITE": "1",
        }

    def _landlock_paths(self, scratch: str, program: str) -> dict[str, list[str]]:
        read = list(SYSTEM_READ_PATHS)
        real = os.path.realpath(program)
        # The program's own installation (an interpreter under /opt or /root, say).
        prefix = os.path.dirname(os.path.dirname(real))
        if prefix not in ("", "/"):
            read.append(prefix)
        read.append(os.path.dirname(real))
        return {"read": read, "write": [scratch, *DEVICES]}

    async def _reap(self, uid: int) -> None:
        """Kill whatever still runs under a run's uid (only if it escaped every other net)."""
        for _ in range(_REAP_TRIES):
            if not await asyncio.to_thread(_has_processes, uid):
                return
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                LAUNCHER,
                "--reap",
                str(uid),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                cwd="/",
                env={},
            )
            await proc.wait()
            await asyncio.sleep(0.05)
        log.warning("executor_uid_not_reaped", uid=uid)

    async def _close(self, run: _Run) -> None:
        """Make sure ``run``'s process tree is dead and its tasks and pipes are closed."""
        run.kill()
        for task in run.tasks:
            task.cancel()
        if run.tasks:
            await asyncio.wait(run.tasks)
        if run.proc is not None:
            for _ in range(100):
                if run.proc.returncode is not None:
                    break
                await asyncio.sleep(0.02)
            _close_pipes(run.proc)
        if run.status_pipe is not None:
            run.status_pipe.close()

    async def _finish(self, run: _Run) -> None:
        try:
            for probe in run.probes:
                await self._close(probe)
            await self._close(run)
            if run.uid is not None:
                await self._reap(run.uid)
            if run.scratch:
                await asyncio.to_thread(shutil.rmtree, run.scratch, True)
        except Exception:
            log.exception("executor_cleanup_failed", scratch=run.scratch, uid=run.uid)
        finally:
            if run.uid is not None:
                self._free_uids.append(run.uid)
            self._slots.release()


def _outcome(
    events: list[dict[str, Any]],
    run: _Run,
    *,
    stdout: bytes,
    stderr: bytes,
    duration_s: float,
    timed_out: bool,
    returncode: int | None,
) -> RunOutcome:
    namespaces: dict[str, Any] = {}
    landlock: dict[str, Any] = {}
    exit_event: dict[str, Any] | None = None
    setup_error = None
    for event in events:
        kind = event.get("event")
        if kind == "namespaces":
            namespaces = event
        elif kind == "landlock":
            landlock = event
        elif kind == "exit":
            exit_event = event
        elif kind == "error":
            setup_error = f"{event.get('stage')}: {event.get('error')}"
    if exit_event is None and setup_error is None and not run.killed:
        setup_error = f"the launcher exited with {returncode} and no report"
    if exit_event is not None:
        code = exit_event.get("exit_code")
        exit_code = int(code) if code is not None else -int(exit_event.get("signal") or 0)
        cpu_s = float(exit_event.get("cpu_s") or 0.0)
    else:
        exit_code = -signal.SIGKILL if run.killed else (returncode or 0)
        cpu_s = None
    isolation = Isolation(
        network_namespace=bool(namespaces.get("net")),
        pid_namespace=bool(namespaces.get("pid")),
        user_namespace=bool(namespaces.get("user")),
        landlock_abi=int(landlock.get("abi") or 0),
        landlock_fs=bool(landlock.get("fs")),
        landlock_net=bool(landlock.get("net")),
        uid=run.uid,
    )
    return RunOutcome(
        stdout=stdout,
        stderr=stderr,
        exit_code=exit_code,
        duration_s=duration_s,
        truncated=run.truncated,
        timed_out=timed_out,
        cpu_s=cpu_s,
        isolation=isolation,
        setup_error=setup_error,
        scratch=run.scratch,
    )


async def _read_status(pipe: Any) -> list[dict[str, Any]]:
    """The launcher's JSON lines, read to end-of-file (when launcher and init have exited)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        data = await reader.read()
    finally:
        transport.close()
    events = []
    for line in data.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        proc.stdin.close()


def _close_pipes(proc: asyncio.subprocess.Process) -> None:
    # NOTE: Process has no public close(); its transport closes the pipes (already at
    # end-of-file unless a process outside any pid namespace kept one open).
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()


def _has_processes(uid: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            return True
                        break
        except (OSError, ValueError):
            continue
    return False
