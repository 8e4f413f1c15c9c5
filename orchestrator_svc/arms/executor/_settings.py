"""Executor settings: environment variables prefixed ``OCTOLLM_EXECUTOR_``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_ALLOWLIST = (
    "python3",
    "ls",
    "cat",
    "echo",
    "wc",
    "head",
    "tail",
    "grep",
    "sort",
    "uniq",
    "date",
    "true",
    "false",
)


class ExecutorSettings(BaseSettings):
    """Limits and policy of the executor arm; every run gets the same limits."""

    model_config = SettingsConfigDict(env_prefix="OCTOLLM_EXECUTOR_", extra="ignore")

    allowlist: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_ALLOWLIST,
        description="command names that may run, comma-separated; resolved on SANDBOX_PATH",
    )
    cpu_s: int = Field(5, ge=1, le=3600, description="CPU seconds per run (RLIMIT_CPU)")
    wall_s: float = Field(10.0, gt=0, le=3600, description="wall-clock seconds per run")
    memory_mb: int = Field(256, ge=32, description="address space per process (RLIMIT_AS)")
    output_bytes: int = Field(
        1 << 20, ge=1, description="stdout + stderr kept per run; the run is killed beyond it"
    )
    max_procs: int = Field(16, ge=1, le=4096, description="processes per run (RLIMIT_NPROC)")
    file_bytes: int = Field(
        16 << 20, ge=0, description="largest file a run may write (RLIMIT_FSIZE)"
    )
    open_files: int = Field(64, ge=8, description="open file descriptors (RLIMIT_NOFILE)")
    max_concurrency: int = Field(4, ge=1, le=256, description="runs at once")
    uid_base: int = Field(
        60100,
        ge=1,
        description="when the arm runs as root, run i uses uid uid_base+i (i < max_concurrency); "
        "these uids must own nothing on the host",
    )
    sandbox_path: str = Field(
        "/usr/local/bin:/usr/bin:/bin", description="PATH for resolving and running commands"
    )
    python: str = Field(
        "", description="interpreter for snippets; empty: the arm's own, else python3 on the path"
    )
    scratch_root: str = Field("", description="parent of the scratch dirs; empty: the temp dir")
    namespaces: bool = Field(
        True, description="enter new network, pid and IPC namespaces where permitted"
    )
    landlock: bool = Field(True, description="confine file access with Landlock where available")

    @field_validator("allowlist", mode="before")
    @classmethod
    def _split_allowlist(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value
