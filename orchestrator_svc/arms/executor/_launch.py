"""The sandbox launcher: ``python -I -S _launch.py SPEC_JSON`` (or ``--reap UID``).

Standard library only, imports nothing from the project: the executor runs it isolated (-I -S),
in a new session, so it can be killed as one process group. It exists so that no Python code
runs between fork and exec in the arm itself (``preexec_fn`` is unsafe in a process with
threads, and grpc runs threads): the arm forks and execs this script in C, and everything
below happens in a small single-threaded process.

Process tree::

    launcher   the arm's child; unshares namespaces; waits for init
      init     pid 1 of a new pid namespace when possible: when it exits the kernel kills every
               process left in the namespace; it reaps, then reports the target's exit status
        target rlimits, uid, no_new_privs, Landlock, then execve(argv)

Both forked children ask for SIGKILL when their parent dies (PR_SET_PDEATHSIG), so killing the
launcher's process group takes the whole tree down. Each line written to the status fd is one
JSON object, shorter than PIPE_BUF so writes from several processes never interleave::

    {"event": "namespaces", "user": bool, "net": bool, "pid": bool, "ipc": bool}
    {"event": "landlock", "abi": int, "fs": bool, "net": bool, "scoped": bool, "error": str}
    {"event": "exit", "exit_code": int | null, "signal": int | null, "cpu_s": float}
    {"event": "error", "stage": str, "error": str}

``--reap UID`` becomes UID and SIGKILLs every process that UID owns (kill(-1) as that user).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import stat
import sys
from typing import Any

CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

# NOTE: the Landlock syscalls have the same numbers on every architecture (asm-generic).
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
FS_V1_ALL = (1 << 13) - 1
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_RIGHTS = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

EXIT_SETUP_FAILED = 126
EXIT_EXEC_FAILED = 127

_libc = ctypes.CDLL(None, use_errno=True)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [
        ("allowed_access", ctypes.c_uint64),
        ("parent_fd", ctypes.c_int32),
    ]


class SetupError(Exception):
    """A sandbox step that must not be skipped failed."""

    def __init__(self, stage: str, error: str) -> None:
        super().__init__(f"{stage}: {error}")
        self.stage = stage
        self.error = error


def main(args: list[str]) -> int:
    if len(args) == 2 and args[0] == "--reap":
        return reap(int(args[1]))
    spec: dict[str, Any] = json.loads(args[0])
    status_fd: int = spec["status_fd"]
    try:
        die_with_parent(spec["arm_pid"])
    except SetupError as exc:
        report(status_fd, {"event": "error", "stage": exc.stage, "error": exc.error})
        return EXIT_SETUP_FAILED
    namespaces = unshare_namespaces(spec["namespaces"])
    spec["user_namespace"] = namespaces["user"]
    report(status_fd, {"event": "namespaces", **namespaces})
    # NOTE: init may be pid 1 of a new namespace, where getppid() is 0 whoever the parent is:
    # it learns that the launcher died from end-of-file on this pipe instead.
    lifeline_r, lifeline_w = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(lifeline_w)
        os._exit(run_init(spec, status_fd, lifeline_r))
    os.close(lifeline_r)
    _, status = os.waitpid(init, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def run_init(spec: dict[str, Any], status_fd: int, lifeline: int) -> int:
    """The init process: start the target, reap until it exits, report its status."""
    try:
        die_with_parent(None)
        if select.select([lifeline], [], [], 0)[0]:
            return EXIT_SETUP_FAILED  # end-of-file: the launcher died before PDEATHSIG was set
        os.close(lifeline)
        init = os.getpid()
        target = os.fork()
        if target == 0:
            os._exit(run_target(spec, status_fd, init))
        while True:
            try:
                pid, status, usage = os.wait4(-1, 0)
            except ChildProcessError:
                return 0
            if pid == target:
                break
        exit_code = os.waitstatus_to_exitcode(status)
        report(
            status_fd,
            {
                "event": "exit",
                "exit_code": exit_code if exit_code >= 0 else None,
                "signal": -exit_code if exit_code < 0 else None,
                "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            },
        )
        return 0
    except BaseException as exc:
        report(status_fd, {"event": "error", "stage": "init", "error": repr(exc)})
        return EXIT_SETUP_FAILED


def run_target(spec: dict[str, Any], status_fd: int, parent: int) -> int:
    """The target: apply every limit, then become the program (returns only on failure)."""
    try:
        die_with_parent(parent)
        os.chdir(spec["cwd"])
        uid: int | None = spec["uid"]
        limits = rlimits(spec["rlimits"], spec["user_namespace"], uid)
        # NOTE: the ruleset is built while still root, so paths only root can reach (the
        # interpreter under /root, say) can be granted; it is enforced after dropping root.
        ruleset = landlock_ruleset(spec["landlock"]) if spec["landlock"] is not None else None
        if uid is not None:
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            except OSError as exc:
                raise SetupError("setuid", str(exc)) from None
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise SetupError("no_new_privs", os.strerror(ctypes.get_errno()))
        landlock = landlock_restrict(ruleset)
        set_limits(limits)
        # NOTE: Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive execve.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        os.set_inheritable(status_fd, False)
        report(status_fd, landlock)
    except SetupError as exc:
        report(status_fd, {"event": "error", "stage": exc.stage, "error": exc.error})
        return EXIT_SETUP_FAILED
    except BaseException as exc:
        report(status_fd, {"event": "error", "stage": "setup", "error": repr(exc)})
        return EXIT_SETUP_FAILED
    argv: list[str] = spec["argv"]
    try:
        os.execve(argv[0], argv, spec["env"])
    except OSError as exc:
        report(status_fd, {"event": "error", "stage": "exec", "error": str(exc)})
    return EXIT_EXEC_FAILED


def unshare_namespaces(wanted: bool) -> dict[str, bool]:
    """Enter new network, pid and IPC namespaces where permitted (a user namespace first when
    not root); each one is tried on its own and reported."""
    done = {"user": False, "net": False, "pid": False, "ipc": False}
    if not wanted:
        return done
    if os.geteuid() != 0:
        done["user"] = _unshare(CLONE_NEWUSER)
        if not done["user"]:
            return done
    done["net"] = _unshare(CLONE_NEWNET)
    done["pid"] = _unshare(CLONE_NEWPID)
    done["ipc"] = _unshare(CLONE_NEWIPC)
    return done


def _unshare(flag: int) -> bool:
    return bool(_libc.unshare(flag) == 0)


def die_with_parent(parent: int | None) -> None:
    """SIGKILL this process when its parent dies; exit now if the parent is already gone."""
    if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise SetupError("pdeathsig", os.strerror(ctypes.get_errno()))
    if parent is not None and os.getppid() != parent:
        # The parent died before the request took effect.
        os._exit(EXIT_SETUP_FAILED)


def rlimits(limits: dict[str, int], user_namespace: bool, uid: int | None) -> dict[int, int]:
    """The limits to set, each as soft and hard limit alike so the program cannot raise them."""
    return {
        resource.RLIMIT_CPU: limits["cpu_s"],
        resource.RLIMIT_AS: limits["as_bytes"],
        resource.RLIMIT_FSIZE: limits["fsize_bytes"],
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_NOFILE: limits["nofile"],
        resource.RLIMIT_NPROC: nproc_limit(limits["max_procs"], user_namespace, uid),
    }


def set_limits(limits: dict[int, int]) -> None:
    for which, wanted in limits.items():
        _, ceiling = resource.getrlimit(which)
        soft = wanted if ceiling == resource.RLIM_INFINITY else min(wanted, ceiling)
        hard = soft
        if which == resource.RLIMIT_CPU:
            # NOTE: a hard CPU limit one second later turns an ignored SIGXCPU into SIGKILL.
            hard = soft + 1 if ceiling == resource.RLIM_INFINITY else min(soft + 1, ceiling)
        try:
            resource.setrlimit(which, (soft, hard))
        except (OSError, ValueError) as exc:
            raise SetupError("setrlimit", f"{which}: {exc}") from None


def nproc_limit(max_procs: int, user_namespace: bool, uid: int | None) -> int:
    """RLIMIT_NPROC counts every process (and thread) of the real uid, not just ours.

    As root the target runs under a uid of its own, so the count starts at zero. In a new user
    namespace the kernel counts per (namespace, uid), and only the launcher and init are there
    before the target. Otherwise the limit is what the user already runs plus ``max_procs``:
    an approximation, since the user's other processes come and go.
    """
    if uid is not None:
        return max_procs
    if user_namespace:
        return max_procs + 2
    return _tasks_of(os.getuid()) + max_procs


def _tasks_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
        except OSError:
            continue
        real_uid, threads = -1, 1
        for line in status.splitlines():
            if line.startswith("Uid:"):
                real_uid = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        if real_uid == uid:
            count += threads
    return count


def landlock_abi() -> int:
    abi = _libc.syscall(
        ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
    )
    return max(int(abi), 0)


def landlock_ruleset(paths: dict[str, list[str]]) -> tuple[int, int, dict[str, bool]] | None:
    """A ruleset allowing read/execute beneath ``paths["read"]`` and everything beneath
    ``paths["write"]``; None when the kernel has no Landlock. Built before dropping root, so
    paths only root can reach can still be granted."""
    abi = landlock_abi()
    if abi < 1:
        return None
    fs = FS_V1_ALL
    if abi >= 2:
        fs |= FS_REFER
    if abi >= 3:
        fs |= FS_TRUNCATE
    if abi >= 5:
        fs |= FS_IOCTL_DEV
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = _RulesetAttr(fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _libc.syscall(
        ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
        ctypes.byref(attr),
        ctypes.c_size_t(size),
        ctypes.c_uint32(0),
    )
    if ruleset < 0:
        raise SetupError("landlock", os.strerror(ctypes.get_errno()))
    for rights, group in ((READ_RIGHTS, "read"), (fs, "write")):
        for path in paths[group]:
            _allow(ruleset, path, rights & fs)
    return abi, ruleset, {"fs": True, "net": bool(net), "scoped": bool(scoped)}


def _allow(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path this system does not have
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FILE_RIGHTS
        rule = _PathBeneathAttr(rights, fd)
        if (
            _libc.syscall(
                ctypes.c_long(SYS_LANDLOCK_ADD_RULE),
                ctypes.c_int(ruleset),
                ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                ctypes.byref(rule),
                ctypes.c_uint32(0),
            )
            != 0
        ):
            raise SetupError("landlock", f"{path}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def landlock_restrict(ruleset: tuple[int, int, dict[str, bool]] | None) -> dict[str, Any]:
    if ruleset is None:
        return {
            "event": "landlock",
            "abi": 0,
            "fs": False,
            "net": False,
            "scoped": False,
            "error": "Landlock is not available on this kernel or not permitted",
        }
    abi, fd, enforced = ruleset
    if (
        _libc.syscall(
            ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(fd), ctypes.c_uint32(0)
        )
        != 0
    ):
        raise SetupError("landlock", os.strerror(ctypes.get_errno()))
    os.close(fd)
    return {"event": "landlock", "abi": abi, **enforced, "error": ""}


def reap(uid: int) -> int:
    """SIGKILL every process ``uid`` owns, until none is left."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    for _ in range(1000):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return 0
    return 1


def report(fd: int, event: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # nobody is listening any more
        os.write(fd, (json.dumps(event) + "\n").encode())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
