"""The executor arm: runs allowlisted commands and short Python snippets in a sandbox.

Input: ``{"command": ["ls", "-l"]}`` (an argv list; there is never a shell) or
``{"python": "print(1 + 1)"}``, with optional ``"stdin": str`` and ``"timeout_s": float`` (can
only shorten the configured wall-clock limit). With neither, as a plan's "run it" step, it runs
the Python code the steps it depends on wrote: the ``code`` of each output in ``dependencies``
whose ``language`` is Python (a coder's output), in step-id order. Output: ``{stdout, stderr,
exit_code, duration_s, truncated, limits}``. A program that exits non-zero is a result
(``exit_code``), not a Failure; ``exit_code`` is ``-N`` when signal N ended it.

Failures (all non-retryable: the same run would hit the same limit):

=================  ===================  ================================================
code               reason               when
=================  ===================  ================================================
INVALID_ARGUMENT   BAD_INPUT            malformed input
PERMISSION_DENIED  COMMAND_NOT_ALLOWED  argv[0] is not on the allowlist
PERMISSION_DENIED  PATH_OUTSIDE_SCRATCH an argument names a path outside the scratch dir
                                        (checked before running), or a Python program was
                                        refused such a path by Landlock and died of it
DEADLINE_EXCEEDED  EXECUTION_TIMEOUT    wall-clock limit reached; the whole tree is killed
RESOURCE_EXHAUSTED CPU_LIMIT            RLIMIT_CPU reached (SIGXCPU, then SIGKILL)
RESOURCE_EXHAUSTED MEMORY_LIMIT         the program died of a failed allocation under
                                        RLIMIT_AS (MemoryError, "memory exhausted", ...)
RESOURCE_EXHAUSTED FILE_SIZE_LIMIT      RLIMIT_FSIZE reached
INTERNAL           SANDBOX_SETUP_FAILED the sandbox could not be set up or exec failed
=================  ===================  ================================================

Output beyond the limit is not a Failure: the run is killed at once and the result carries
the first ``OUTPUT_BYTES`` (stdout and stderr together) with ``truncated: true``.

Serving it on uvloop (as ``octollm arm`` does) needs ``GRPC_ENABLE_FORK_SUPPORT=false`` set
before grpc is imported (the ``octollm`` commands set it): uvloop starts subprocesses with
fork(), which runs grpc's fork handlers in the child, and they can abort it before exec.

What is enforced (settings are ``OCTOLLM_EXECUTOR_*``; see ``_settings.py``):

- **Allowlist**: ``ALLOWLIST`` names, resolved on ``SANDBOX_PATH`` to absolute paths at start;
  argv[0] must be one of those names (or its resolved path). Executed with ``execve``, no shell.
- **Arguments**: for every allowlisted command except echo/true/false, arguments that are
  absolute or ``~`` paths, that climb with ``..``, or that carry such a path after ``=`` or
  glued to a short option (``-f/etc/passwd``) are refused before anything runs. This is a
  string check: it cannot see what an interpreter's code (``python3 -c ...``) opens.
- **Limits** per process, soft = hard so the program cannot raise them: ``CPU_S``
  (RLIMIT_CPU, hard limit one second later), ``MEMORY_MB`` (RLIMIT_AS), ``FILE_BYTES``
  (RLIMIT_FSIZE), ``OPEN_FILES`` (RLIMIT_NOFILE), RLIMIT_CORE = 0, ``MAX_PROCS``
  (RLIMIT_NPROC). ``WALL_S`` and ``OUTPUT_BYTES`` are enforced by the arm, which kills the
  whole process tree.
- **RLIMIT_NPROC counts all processes (and threads) of a user**, not of a run, and does not
  apply to root at all. So: when the arm runs as root (as in the tests), each concurrent run
  gets a uid of its own (``UID_BASE`` + slot, dropped to before exec, no supplementary groups)
  and the limit is exactly ``MAX_PROCS`` for that run; whatever still runs under that uid
  afterwards is killed before the uid is used again (two root arms on one host need disjoint
  ranges). When
  the arm is not root, the launcher first enters a new user namespace, where the kernel counts
  per (namespace, uid), so the limit again covers only the run; if user namespaces are not
  permitted, the limit is the user's current process count plus ``MAX_PROCS``, an
  approximation. The wall-clock limit and process-group kill bound a fork bomb in every case.
- **Process tree**: the program runs in its own session under a small launcher; where
  permitted, in a new pid namespace whose init is the launcher's child, so when the run ends
  the kernel kills every process the program left, even ones that called setsid(). Without a
  pid namespace, the process group is killed, and (as root) the run's uid is swept.
- **Network**: a new network namespace (no interfaces but a down loopback) where permitted:
  as root, or inside the user namespace otherwise; ``limits.network`` says ``isolated``. With
  only Landlock ABI >= 4, TCP bind/connect are refused (``tcp blocked``; UDP still works).
  Otherwise ``not isolated``.
- **Files**: Landlock, where the kernel has it (``limits.filesystem: confined``): read and
  execute beneath /usr, /bin, /sbin, /lib*, the program's own installation prefix,
  /etc/ld.so.cache and /etc/localtime; read-write in the scratch dir and /dev/null-like
  devices; nothing else (no /etc/passwd, /proc, /home, /root, /tmp outside scratch, the
  project). With Landlock ABI >= 6 the program also cannot signal processes outside its
  sandbox or reach abstract unix sockets. Without Landlock (``not confined``), only the
  argument check above applies to commands, and a Python snippet can read whatever its uid
  can (as root: only world-readable files, since the run has a uid of its own).
- **Environment**: only PATH, LANG, LC_ALL, HOME and TMPDIR (both the scratch dir),
  PYTHONDONTWRITEBYTECODE, PYTHONIOENCODING, PYTHONNOUSERSITE. The scratch dir (a fresh
  ``tempfile.mkdtemp``, the working directory) is removed after the run, also when the
  subtask is cancelled or times out. Python snippets run as ``python -I -S snippet.py``.

Not enforced: the wall-clock limit is per run, not per subtask retry; the scratch dir's total
size is bounded only per file (RLIMIT_FSIZE) and by the disk; RLIMIT_AS is per process (a run
may use ``MAX_PROCS`` times it); pathname unix sockets are not covered by Landlock before
kernel support for it; a kernel or Landlock escape is out of scope. The snippet interpreter
must be startable by the run's uid: when the arm runs as root from an interpreter in a
directory other users cannot enter (a pyenv under /root), snippets run with ``python3`` from
``SANDBOX_PATH`` instead (logged once as ``executor_python_fallback``).
"""

from __future__ import annotations

from arm_sdk import Arm, ArmError, SubtaskInput, SubtaskOutput
from orchestrator_svc.arms.executor._policy import CommandPolicy, parse_request
from orchestrator_svc.arms.executor._report import limit_failure, output
from orchestrator_svc.arms.executor._sandbox import Sandbox
from orchestrator_svc.arms.executor._settings import ExecutorSettings

INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "command": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "description": "argv; argv[0] must be on the allowlist; no shell",
        },
        "python": {"type": "string", "minLength": 1, "description": "Python source to run"},
        "stdin": {"type": "string"},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0},
        "dependencies": {
            "type": "object",
            "description": "earlier steps' outputs: their Python code runs when neither "
            "command nor python is given",
        },
    },
    "oneOf": [
        {"required": ["command"]},
        {"required": ["python"]},
        {
            "required": ["dependencies"],
            "not": {"anyOf": [{"required": ["command"]}, {"required": ["python"]}]},
        },
    ],
}

_NULLABLE_INT = {"type": ["integer", "null"]}
OUTPUT_SCHEMA = {
    "type": "object",
    "required": ["stdout", "stderr", "exit_code", "duration_s", "truncated", "limits"],
    "properties": {
        "answer": {"type": "string"},
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "exit_code": {"type": "integer"},
        "duration_s": {"type": "number", "minimum": 0},
        "truncated": {"type": "boolean"},
        "limits": {
            "type": "object",
            "required": ["cpu_s", "wall_s", "memory_mb", "output_bytes", "max_procs", "network"],
            "properties": {
                "cpu_s": {"type": "number"},
                "wall_s": {"type": "number"},
                "memory_mb": {"type": "integer"},
                "output_bytes": {"type": "integer"},
                "max_procs": {"type": "integer"},
                "file_bytes": {"type": "integer"},
                "network": {"enum": ["isolated", "tcp blocked", "not isolated"]},
                "filesystem": {"enum": ["confined", "not confined"]},
                "pid_namespace": {"type": "boolean"},
                "uid": _NULLABLE_INT,
            },
        },
    },
}


def build(arm_id: str | None = None, *, settings: ExecutorSettings | None = None) -> Arm:
    """A new executor arm; settings from the environment unless given."""
    settings = settings or ExecutorSettings()
    policy = CommandPolicy(settings.allowlist, settings.sandbox_path)
    sandbox = Sandbox(settings)
    arm = Arm(
        arm_type="executor",
        description="Runs allowlisted commands (argv, no shell) and Python snippets in a sandbox",
        capabilities=("execution", "shell", "testing", "python", "sandbox"),
        max_concurrency=settings.max_concurrency,
        cost_tier="low",
        version="0.1.0",
        input_schema=INPUT_SCHEMA,
        output_schema=OUTPUT_SCHEMA,
        arm_id=arm_id,
    )

    @arm.handler
    async def execute(inp: SubtaskInput) -> SubtaskOutput:
        request = parse_request(inp.input, policy, settings.wall_s)
        outcome = await sandbox.run(request)
        failure: ArmError | None = limit_failure(outcome, settings, request.wall_s)
        if failure is not None:
            raise failure
        return SubtaskOutput(output=output(outcome, settings, request.wall_s))

    return arm


__all__ = ["ExecutorSettings", "build"]
