"""The executor arm served for real: commands and snippets in the sandbox, and every bad input."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from jsonschema import Draft202012Validator
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk import Arm, ArmServer, grpc_options
from orchestrator_svc.arms import executor
from orchestrator_svc.arms.executor import ExecutorSettings
from orchestrator_svc.arms.executor._launch import landlock_abi
from orchestrator_svc.arms.executor._policy import CommandPolicy
from tests.arm_sdk.arm_stream import ArmStream

# A hang guard, never a speed target: runs are bounded by their own (smaller) limits.
GUARD_S = 60.0
AS_ROOT = os.geteuid() == 0
HAS_LANDLOCK = landlock_abi() > 0
LAUNCHER = Path(executor.__file__).with_name("_launch.py")

FORK_UNTIL_REFUSED = """
import os, time
children = 0
while True:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children += 1
print(children)
"""
FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""

OpenExecutor = Callable[..., Awaitable[ArmStream]]


@pytest.fixture
def scratch_root() -> Iterator[Path]:
    """A parent for the runs' scratch dirs that the sandbox uids can traverse; empty when a
    test's runs are all cleaned up."""
    root = Path(tempfile.mkdtemp(prefix="octollm-exec-test-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def settings(scratch_root: Path) -> ExecutorSettings:
    """Small limits, a random uid range (another test session may run beside this one)."""
    return ExecutorSettings(
        cpu_s=2,
        wall_s=8,
        uid_base=200_000 + 16 * random.randrange(4096),
        scratch_root=str(scratch_root),
    )


@pytest.fixture
async def open_executor(
    start_arm: Callable[[Arm], Awaitable[ArmServer]], settings: ExecutorSettings
) -> AsyncIterator[OpenExecutor]:
    """Serve an executor arm (with `settings`, overridable) and open an Execute stream to it."""
    channels: list[grpc.aio.Channel] = []

    async def open_(**overrides: Any) -> ArmStream:
        arm = executor.build(settings=settings.model_copy(update=overrides))
        server = await start_arm(arm)
        channel = grpc.aio.insecure_channel(server.address, options=grpc_options.CHANNEL_OPTIONS)
        channels.append(channel)
        stream = ArmStream(channel)
        await stream.handshake()
        return stream

    yield open_
    for channel in channels:
        await channel.close()


_ids = iter(range(1, 1_000_000))


async def execute(
    stream: ArmStream, payload: dict[str, Any], **kwargs: Any
) -> arm_pb.ExecuteResponse:
    """Dispatch one subtask and read up to its Result or SubtaskFailure."""
    subtask_id = f"x{next(_ids)}"
    await stream.dispatch(subtask_id, payload, **kwargs)
    return await terminal(stream, subtask_id)


async def terminal(stream: ArmStream, subtask_id: str) -> arm_pb.ExecuteResponse:
    while True:
        message = await asyncio.wait_for(stream.call.read(), GUARD_S)
        assert message is not grpc.aio.EOF, "stream ended"
        assert isinstance(message, arm_pb.ExecuteResponse)
        kind = message.WhichOneof("kind")
        if kind in ("result", "failure") and getattr(message, kind).subtask_id == subtask_id:
            return message


def result_of(message: arm_pb.ExecuteResponse) -> dict[str, Any]:
    assert message.WhichOneof("kind") == "result", message
    output: dict[str, Any] = json_format.MessageToDict(message.result.output)
    errors = list(Draft202012Validator(executor.OUTPUT_SCHEMA).iter_errors(output))
    assert errors == [], errors
    return output


def failure_of(message: arm_pb.ExecuteResponse) -> common_pb2.Failure:
    assert message.WhichOneof("kind") == "failure", message
    return message.failure.failure


def assert_failure(
    message: arm_pb.ExecuteResponse, code: grpc.StatusCode, reason: str
) -> common_pb2.Failure:
    failure = failure_of(message)
    assert (failure.code, failure.reason) == (code.value[0], reason), failure
    return failure


def sandbox_processes(settings: ExecutorSettings) -> list[int]:
    """Pids of processes running under the run uids of `settings`."""
    uids = range(settings.uid_base, settings.uid_base + settings.max_concurrency + 1)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and int(line.split()[1]) in uids:
                pids.append(int(entry))
    return pids


def scratch_dirs(scratch_root: Path) -> list[Path]:
    return list(scratch_root.iterdir())


def exists(path: str) -> bool:
    return Path(path).exists()


async def assert_cleaned_up(settings: ExecutorSettings, scratch_root: Path) -> None:
    """No process of the sandbox is left and every scratch dir is gone (polled briefly)."""
    for _ in range(100):
        if not scratch_dirs(scratch_root) and not (AS_ROOT and sandbox_processes(settings)):
            return
        await asyncio.sleep(0.05)
    assert scratch_dirs(scratch_root) == []
    assert sandbox_processes(settings) == []


def test_descriptor_declares_schemas_and_capabilities() -> None:
    """The executor declares its type, execution capabilities and valid JSON schemas."""
    descriptor = executor.build(settings=ExecutorSettings(max_concurrency=3)).descriptor()
    assert descriptor.arm_type == "executor"
    assert {"execution", "python", "sandbox"} <= set(descriptor.capabilities)
    assert descriptor.max_concurrency == 3
    for schema in (descriptor.input_schema, descriptor.output_schema):
        Draft202012Validator.check_schema(json_format.MessageToDict(schema))


def test_allowlist_setting_is_comma_separated_and_resolved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OCTOLLM_EXECUTOR_ALLOWLIST is split on commas; names resolve to absolute paths on the
    sandbox PATH and names that do not exist are dropped."""
    monkeypatch.setenv("OCTOLLM_EXECUTOR_ALLOWLIST", " echo, no-such-command-here ,ls,/bin/sh")
    monkeypatch.setenv("OCTOLLM_EXECUTOR_CPU_S", "3")
    settings = ExecutorSettings()
    assert settings.allowlist == ("echo", "no-such-command-here", "ls", "/bin/sh")
    assert settings.cpu_s == 3
    policy = CommandPolicy(settings.allowlist, settings.sandbox_path)
    assert set(policy.commands) == {"echo", "ls"}
    assert all(os.path.isabs(path) for path in policy.commands.values())


async def test_echo_runs_and_reports_its_limits(
    open_executor: OpenExecutor, settings: ExecutorSettings
) -> None:
    """`echo hi` returns stdout, exit code 0, a duration and what the sandbox enforced."""
    stream = await open_executor()
    out = result_of(await execute(stream, {"command": ["echo", "hi"]}))
    assert (out["stdout"], out["stderr"], out["exit_code"], out["truncated"]) == (
        "hi\n",
        "",
        0,
        False,
    )
    assert out["duration_s"] >= 0
    limits = out["limits"]
    assert limits["cpu_s"] == settings.cpu_s
    assert limits["wall_s"] == settings.wall_s
    assert limits["memory_mb"] == 256
    assert limits["output_bytes"] == 1 << 20
    assert limits["max_procs"] == 16
    if AS_ROOT:
        assert limits["network"] == "isolated"
        assert limits["pid_namespace"] is True
        assert settings.uid_base <= limits["uid"] < settings.uid_base + settings.max_concurrency
    assert limits["filesystem"] == ("confined" if HAS_LANDLOCK else "not confined")


async def test_python_snippet_runs_isolated_in_scratch(
    open_executor: OpenExecutor, scratch_root: Path
) -> None:
    """A snippet runs with -I -S in a scratch working dir that is its HOME and is removed after."""
    stream = await open_executor()
    snippet = (
        "import json, os, sys\n"
        "open('note.txt', 'w').write('kept here')\n"
        "print(json.dumps({'cwd': os.getcwd(), 'home': os.environ['HOME'], "
        "'flags': [sys.flags.isolated, sys.flags.no_site], 'note': open('note.txt').read()}))\n"
    )
    out = result_of(await execute(stream, {"python": snippet}))
    seen = json.loads(out["stdout"])
    assert seen["cwd"] == seen["home"]
    assert Path(seen["cwd"]).parent == scratch_root
    assert seen["flags"] == [1, 1]
    assert seen["note"] == "kept here"
    assert not exists(seen["cwd"])


async def test_environment_is_scrubbed(
    open_executor: OpenExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The arm's own environment (here a fake secret) never reaches the program."""
    monkeypatch.setenv("OCTOLLM_TEST_SECRET", "do-not-leak-me")
    stream = await open_executor()
    out = result_of(
        await execute(stream, {"python": "import os, json; print(json.dumps(dict(os.environ)))"})
    )
    env = json.loads(out["stdout"])
    assert "do-not-leak-me" not in out["stdout"]
    assert set(env) <= {
        "PATH",
        "LANG",
        "LC_ALL",
        "HOME",
        "TMPDIR",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONIOENCODING",
        "PYTHONNOUSERSITE",
        "LC_CTYPE",  # NOTE: Python may set it itself when coercing the C locale.
    }
    assert env["HOME"] == env["TMPDIR"]


async def test_stdin_is_fed_to_the_program(open_executor: OpenExecutor) -> None:
    """input.stdin reaches the program's standard input."""
    stream = await open_executor()
    out = result_of(await execute(stream, {"command": ["wc", "-l"], "stdin": "a\nb\nc\n"}))
    assert out["stdout"].strip() == "3"
    out = result_of(await execute(stream, {"command": ["sort"], "stdin": "b\na\n"}))
    assert out["stdout"] == "a\nb\n"


@pytest.mark.parametrize(
    ("payload", "exit_code", "stderr"),
    [
        ({"command": ["false"]}, 1, ""),
        ({"python": "import sys\nprint('bye', file=sys.stderr)\nsys.exit(3)"}, 3, "bye\n"),
        ({"command": ["ls", "no-such-file"]}, 2, "no-such-file"),
    ],
)
async def test_nonzero_exit_is_a_result(
    open_executor: OpenExecutor, payload: dict[str, Any], exit_code: int, stderr: str
) -> None:
    """A program failing on its own is a Result with its exit code and stderr, not a Failure."""
    stream = await open_executor()
    out = result_of(await execute(stream, payload))
    assert out["exit_code"] == exit_code
    assert stderr in out["stderr"]


@pytest.mark.parametrize(
    "command",
    [
        ["rm", "-rf", "x"],
        ["sh", "-c", "echo hi"],
        ["/bin/sh", "-c", "echo hi"],
        ["bash"],
        ["/usr/bin/env", "ls"],
        ["echo hi"],
        ["./echo"],
    ],
)
async def test_command_off_the_allowlist_is_refused(
    open_executor: OpenExecutor, command: list[str]
) -> None:
    """A command that is not on the allowlist is PERMISSION_DENIED / COMMAND_NOT_ALLOWED."""
    stream = await open_executor()
    failure = assert_failure(
        await execute(stream, {"command": command}),
        grpc.StatusCode.PERMISSION_DENIED,
        "COMMAND_NOT_ALLOWED",
    )
    assert failure.retryable is False


async def test_allowlisted_command_by_its_resolved_path(
    open_executor: OpenExecutor, settings: ExecutorSettings
) -> None:
    """argv[0] may also be the absolute path the allowlisted name resolved to."""
    stream = await open_executor()
    echo = CommandPolicy(["echo"], settings.sandbox_path).commands["echo"]
    out = result_of(await execute(stream, {"command": [echo, "ok"]}))
    assert out["stdout"] == "ok\n"


async def test_a_plan_step_runs_the_python_its_dependencies_wrote(
    open_executor: OpenExecutor,
) -> None:
    """Without command or python (a plan's "run it" step) the arm runs the Python code of the
    outputs it depends on (a coder's code + language), in step-id order; other outputs are not
    code and are left out."""
    stream = await open_executor()
    dependencies = {
        "tests": {"code": "assert double(21) == 42\nprint('ok', double(21))", "language": "py"},
        "context": {"answer": "print('not code')"},
        "implement": {"code": "def double(x):\n    return 2 * x\n", "language": "Python"},
        "docs": {"code": "# Title", "language": "markdown"},
    }
    out = result_of(await execute(stream, {"dependencies": dependencies}))
    assert (out["stdout"], out["exit_code"]) == ("ok 42\n", 0)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"dependencies": {"context": {"answer": "no code here"}}},
        {"dependencies": {"implement": {"code": "echo hi", "language": "bash"}}},
        {"command": "ls -l"},
        {"command": []},
        {"command": [1, 2]},
        {"command": [""]},
        {"command": ["ls"], "python": "print(1)"},
        {"python": ""},
        {"python": 42},
        {"command": ["echo"], "timeout_s": -1},
        {"command": ["echo"], "timeout_s": "soon"},
        {"command": ["echo"], "stdin": 5},
    ],
)
async def test_malformed_input_is_bad_input(
    open_executor: OpenExecutor, payload: dict[str, Any]
) -> None:
    """Malformed input is INVALID_ARGUMENT / BAD_INPUT."""
    stream = await open_executor()
    assert_failure(await execute(stream, payload), grpc.StatusCode.INVALID_ARGUMENT, "BAD_INPUT")


@pytest.mark.parametrize(
    "command",
    [
        ["cat", "/etc/passwd"],
        ["cat", "../../../etc/passwd"],
        ["head", "-n1", "~/.bashrc"],
        ["grep", "-r", "root", "/etc"],
        ["grep", "--file=/etc/passwd", "x"],
        ["sort", "-o/tmp/out", "x"],
        ["ls", ".."],
        ["tail", "a/../../b"],
        ["date", "-r", "/etc/hostname"],
    ],
)
async def test_command_reading_outside_scratch_is_refused(
    open_executor: OpenExecutor, command: list[str]
) -> None:
    """A path argument outside the scratch dir is refused before running: PATH_OUTSIDE_SCRATCH."""
    stream = await open_executor()
    failure = assert_failure(
        await execute(stream, {"command": command}),
        grpc.StatusCode.PERMISSION_DENIED,
        "PATH_OUTSIDE_SCRATCH",
    )
    assert failure.metadata["enforced_by"] == "argv_check"


@pytest.mark.skipif(not HAS_LANDLOCK, reason="the kernel has no Landlock")
async def test_python_reading_outside_scratch_is_refused(
    open_executor: OpenExecutor, tmp_path: Path
) -> None:
    """Landlock refuses files outside the scratch dir: a program dying of it is a
    PATH_OUTSIDE_SCRATCH Failure, one that handles it sees EACCES, and no byte leaks."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    secret.chmod(0o644)
    stream = await open_executor()
    for payload in (
        {"python": f"print(open({str(secret)!r}).read())"},
        {"python": "print(open('/etc/passwd').read())"},
        {"command": ["python3", "-c", "print(open('/etc/hostname').read())"]},
    ):
        message = await execute(stream, payload)
        failure = assert_failure(message, grpc.StatusCode.PERMISSION_DENIED, "PATH_OUTSIDE_SCRATCH")
        assert failure.metadata["enforced_by"] == "landlock"
        assert "TOP-SECRET-CONTENT" not in str(message)
    handled = (
        "import os\n"
        f"paths = [{str(secret)!r}, '/etc/passwd', '/proc/1/environ', os.path.expanduser('~')]\n"
        "for path in paths:\n"
        "    try:\n"
        "        print(path, len(open(path).read()))\n"
        "    except OSError as exc:\n"
        "        print(path, type(exc).__name__)\n"
        "print(sorted(os.listdir('.')))\n"
    )
    out = result_of(await execute(stream, {"python": handled}))
    lines = out["stdout"].splitlines()
    assert lines[0] == f"{secret} PermissionError"
    assert lines[1] == "/etc/passwd PermissionError"
    assert lines[2] == "/proc/1/environ PermissionError"
    assert lines[3].endswith("IsADirectoryError")  # the scratch dir itself: reachable
    assert lines[4] == "['snippet.py']"


async def test_fork_bomb_is_cut_off(
    open_executor: OpenExecutor, settings: ExecutorSettings, scratch_root: Path
) -> None:
    """A fork bomb is held to max_procs by RLIMIT_NPROC, killed at the wall limit as
    DEADLINE_EXCEEDED / EXECUTION_TIMEOUT, and leaves no process behind."""
    stream = await open_executor()
    failure = assert_failure(
        await execute(stream, {"python": FORK_BOMB, "timeout_s": 2}),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "EXECUTION_TIMEOUT",
    )
    assert failure.metadata["limit_s"] == "2"
    await assert_cleaned_up(settings, scratch_root)


async def test_process_count_is_bounded_by_max_procs(
    open_executor: OpenExecutor, settings: ExecutorSettings, scratch_root: Path
) -> None:
    """fork() fails once the run has max_procs processes; the children it left are killed."""
    stream = await open_executor(max_procs=8)
    out = result_of(await execute(stream, {"python": FORK_UNTIL_REFUSED}))
    assert out["exit_code"] == 0
    if AS_ROOT:
        assert int(out["stdout"]) == 7  # itself plus seven children
    else:
        assert int(out["stdout"]) <= 7
    await assert_cleaned_up(settings, scratch_root)


async def test_infinite_loop_hits_the_cpu_limit(open_executor: OpenExecutor) -> None:
    """A busy loop is killed at its CPU limit: RESOURCE_EXHAUSTED / CPU_LIMIT."""
    stream = await open_executor(cpu_s=1, wall_s=30)
    failure = assert_failure(
        await execute(stream, {"python": "while True:\n    pass"}),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "CPU_LIMIT",
    )
    assert float(failure.metadata["cpu_s"]) > 0.5


async def test_sleeping_program_hits_the_wall_limit(
    open_executor: OpenExecutor, settings: ExecutorSettings, scratch_root: Path
) -> None:
    """A program that waits forever is killed at timeout_s: DEADLINE_EXCEEDED /
    EXECUTION_TIMEOUT."""
    stream = await open_executor()
    assert_failure(
        await execute(stream, {"python": "import time\ntime.sleep(600)", "timeout_s": 1}),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "EXECUTION_TIMEOUT",
    )
    await assert_cleaned_up(settings, scratch_root)


async def test_gigabyte_of_output_is_truncated(open_executor: OpenExecutor) -> None:
    """1 GiB written to stdout: the run is killed at output_bytes and the Result says
    truncated, with exactly the first output_bytes bytes."""
    stream = await open_executor(output_bytes=256 << 10)
    snippet = "import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * (1 << 20))\n"
    out = result_of(await execute(stream, {"python": snippet}))
    assert out["truncated"] is True
    assert out["stdout"] == "x" * (256 << 10)
    assert out["exit_code"] < 0  # killed


async def test_memory_hog_hits_the_memory_limit(open_executor: OpenExecutor) -> None:
    """Allocating past RLIMIT_AS is RESOURCE_EXHAUSTED / MEMORY_LIMIT."""
    stream = await open_executor()
    failure = assert_failure(
        await execute(stream, {"python": "hog = bytearray(1 << 30)"}),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "MEMORY_LIMIT",
    )
    assert failure.metadata["limit_mb"] == "256"
    assert "MemoryError" in failure.metadata["stderr_tail"]


async def test_big_file_hits_the_file_size_limit(open_executor: OpenExecutor) -> None:
    """Writing a file past RLIMIT_FSIZE is RESOURCE_EXHAUSTED / FILE_SIZE_LIMIT."""
    stream = await open_executor(file_bytes=1 << 20)
    snippet = "with open('big', 'wb') as f:\n    f.write(b'x' * (4 << 20))\n"
    assert_failure(
        await execute(stream, {"python": snippet}),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "FILE_SIZE_LIMIT",
    )


@pytest.mark.skipif(not AS_ROOT and not HAS_LANDLOCK, reason="no way to isolate the network")
async def test_network_is_isolated(open_executor: OpenExecutor) -> None:
    """A snippet cannot reach a TCP server on the arm's own loopback."""
    connections = 0

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        stream = await open_executor()
        snippet = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('refused', type(exc).__name__)\n"
        )
        out = result_of(await execute(stream, {"python": snippet}))
    finally:
        server.close()
        await server.wait_closed()
    assert out["stdout"].startswith("refused")
    assert connections == 0
    assert out["limits"]["network"] in ("isolated", "tcp blocked")


async def test_cancel_kills_the_run_and_removes_scratch(
    open_executor: OpenExecutor, settings: ExecutorSettings, scratch_root: Path
) -> None:
    """Cancel ends a running program at once: CANCELLED, no process and no scratch dir left."""
    stream = await open_executor(wall_s=600)
    await stream.dispatch("long", {"python": "import time\ntime.sleep(600)"})
    await stream.recv_until("accepted", "long")
    for _ in range(200):  # the program is running once its scratch dir exists
        if scratch_dirs(scratch_root):
            break
        await asyncio.sleep(0.02)
    await stream.cancel("long")
    assert_failure(await terminal(stream, "long"), grpc.StatusCode.CANCELLED, "CANCELLED")
    await assert_cleaned_up(settings, scratch_root)


async def test_subtask_deadline_kills_the_run(
    open_executor: OpenExecutor, settings: ExecutorSettings, scratch_root: Path
) -> None:
    """The orchestrator's deadline (Dispatch.timeout) also ends the program and cleans up."""
    stream = await open_executor(wall_s=600)
    assert_failure(
        await execute(stream, {"python": "import time\ntime.sleep(600)"}, timeout=1.0),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "SUBTASK_TIMEOUT",
    )
    await assert_cleaned_up(settings, scratch_root)


async def test_more_runs_than_slots_all_complete(
    start_arm: Callable[[Arm], Awaitable[ArmServer]],
    settings: ExecutorSettings,
    scratch_root: Path,
) -> None:
    """Two streams dispatching up to their credit make twice as many runs as the arm has slots:
    the extra runs wait for a slot, all complete, and each slot runs under its own uid."""
    server = await start_arm(
        executor.build(settings=settings.model_copy(update={"max_concurrency": 2}))
    )
    channels = [
        grpc.aio.insecure_channel(server.address, options=grpc_options.CHANNEL_OPTIONS)
        for _ in range(2)
    ]
    try:
        streams = [ArmStream(channel) for channel in channels]
        for stream in streams:
            _, credit = await stream.handshake()
            assert credit.n == 2
        snippet = "import os, time\ntime.sleep(0.2)\nprint(os.getuid())"
        for s, stream in enumerate(streams):
            for i in range(2):
                await stream.dispatch(f"c{s}{i}", {"python": snippet})
        outputs = []
        for s, stream in enumerate(streams):
            pending = {f"c{s}{i}" for i in range(2)}
            while pending:
                message = await asyncio.wait_for(stream.recv(), GUARD_S)
                if message.WhichOneof("kind") in ("result", "failure"):
                    outputs.append(result_of(message))
                    pending.discard(message.result.subtask_id)
    finally:
        for channel in channels:
            await channel.close()
    assert [out["exit_code"] for out in outputs] == [0, 0, 0, 0]
    if AS_ROOT:
        assert {int(out["stdout"]) for out in outputs} == {settings.uid_base, settings.uid_base + 1}
    await assert_cleaned_up(settings, scratch_root)


async def test_arm_keeps_serving_after_every_bad_input(
    open_executor: OpenExecutor, settings: ExecutorSettings, scratch_root: Path
) -> None:
    """After each bad input of the issue on one stream, the arm still answers `echo hi`."""
    stream = await open_executor(cpu_s=1, output_bytes=64 << 10)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"command": ["rm", "-rf", "/"]}, "COMMAND_NOT_ALLOWED"),
        ({"python": FORK_BOMB, "timeout_s": 1}, "EXECUTION_TIMEOUT"),
        ({"python": "while True:\n    pass"}, "CPU_LIMIT"),
        ({"python": "import sys\nwhile True:\n    sys.stdout.write('y' * 65536)"}, ""),
        ({"python": "hog = bytearray(1 << 30)"}, "MEMORY_LIMIT"),
        ({"command": ["cat", "/etc/shadow"]}, "PATH_OUTSIDE_SCRATCH"),
    ]
    for payload, reason in bad:
        message = await execute(stream, payload)
        if reason:
            assert failure_of(message).reason == reason
        else:
            assert result_of(message)["truncated"] is True
    out = result_of(await execute(stream, {"command": ["echo", "hi"]}))
    assert out["stdout"] == "hi\n"
    await assert_cleaned_up(settings, scratch_root)


async def test_orchestrator_runs_a_snippet_step(
    start_arm: Callable[[Arm], Awaitable[ArmServer]],
    start_orchestrator: Callable[..., Awaitable[Any]],
    connect: Callable[[str], Any],
    settings: ExecutorSettings,
) -> None:
    """Through the orchestrator: a snippet step succeeds with an output that passes the arm's
    own output schema, and an off-allowlist step fails the task with its reason."""
    server = await start_arm(executor.build(settings=settings))
    orch = await start_orchestrator([server.address], wait_for=("executor",))
    stub = connect(orch.address)

    async def run(payload: dict[str, Any]) -> pb.Task:
        request = pb.SubmitTaskRequest(goal="Run a snippet in the sandbox")
        request.plan.steps.add(step_id="run", arm_type="executor").input.update(payload)
        task = (await stub.SubmitTask(request)).task
        async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=GUARD_S):
            pass
        done: pb.Task = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
        return done

    task = await run({"python": "print(6 * 7)"})
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
    (sub,) = task.subtasks
    assert json_format.MessageToDict(sub.output)["stdout"] == "42\n"
    task = await run({"command": ["curl", "http://example.com"]})
    assert task.state == pb.TASK_STATE_FAILED
    assert task.failure.reason == "COMMAND_NOT_ALLOWED"


@pytest.mark.skipif(
    not AS_ROOT or shutil.which("setpriv") is None or not Path("/usr/bin/python3").exists(),
    reason="needs root, setpriv and /usr/bin/python3 to start the launcher as another user",
)
def test_launcher_as_non_root_user_still_bounds_the_run(scratch_root: Path) -> None:
    """Started by a non-root user, the launcher enters a user namespace, so RLIMIT_NPROC
    counts only the run's processes; network and files are still cut off where permitted."""
    scratch = scratch_root / "scratch"
    scratch.mkdir()
    os.chown(scratch, 65534, 65534)
    # NOTE: the checkout may sit in a directory uid 65534 cannot enter (a 0700 temp dir), so
    # the launcher runs from a copy it can read; the arm itself starts it as root.
    launcher = scratch_root / "_launch.py"
    shutil.copyfile(LAUNCHER, launcher)
    launcher.chmod(0o644)
    (scratch / "s.py").write_text(
        FORK_UNTIL_REFUSED + "import socket\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n"
        "try:\n"
        "    open('/etc/passwd')\n"
        "    print('read')\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    read_fd, write_fd = os.pipe()
    spec = {
        "arm_pid": os.getpid(),
        "argv": ["/usr/bin/python3", "-I", "-S", "s.py"],
        "cwd": str(scratch),
        "env": {"PATH": "/usr/bin:/bin"},
        "uid": None,
        "namespaces": True,
        "landlock": {"read": ["/usr", "/lib", "/lib64", "/bin"], "write": [str(scratch)]},
        "rlimits": {
            "cpu_s": 5,
            "as_bytes": 256 << 20,
            "fsize_bytes": 1 << 20,
            "nofile": 64,
            "max_procs": 6,
        },
        "status_fd": write_fd,
    }
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-I",
            "-S",
            str(launcher),
            json.dumps(spec),
        ],
        pass_fds=(write_fd,),
        capture_output=True,
        timeout=GUARD_S,
        check=False,
    )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as status:
        events = {e["event"]: e for e in map(json.loads, status.read().splitlines())}
    assert proc.returncode == 0, proc.stderr
    if not events["namespaces"]["user"]:
        pytest.skip("user namespaces are not permitted here")
    children, network, passwd = proc.stdout.decode().split()
    assert int(children) == 5  # max_procs 6: itself plus five children
    assert events["exit"]["exit_code"] == 0
    if events["namespaces"]["net"] or events["landlock"]["net"]:
        assert network in ("OSError", "PermissionError", "ConnectionRefusedError")
    if events["landlock"]["fs"]:
        assert passwd == "PermissionError"
