"""Orchestrator configuration: environment variables prefixed `OCTOLLM_`, validated by pydantic.

Lists are given as JSON (`OCTOLLM_ARM_ENDPOINTS='["127.0.0.1:50061","dns:///arms.local:50061"]'`)
or comma-separated (`OCTOLLM_ARM_ENDPOINTS=127.0.0.1:50061,127.0.0.1:50062`).

`OCTOLLM_CONFIG_FILE` names a TOML file of the same settings, keyed by their names without the
prefix (`listen = "0.0.0.0:50051"`, `arm_endpoints = ["arms:50061"]`); environment variables
override it. A missing or unreadable file, or a key that is not a setting, stops start-up with
one line that says so (a typo in a file must not be silently ignored).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .llm.settings import CONFIG_FILE_VARIABLE, LLMSettings


class ConfigFileError(ValueError):
    """The configuration file cannot be used; the message names it and says why."""


class _ConfigFile(TomlConfigSettingsSource):
    """The TOML file OCTOLLM_CONFIG_FILE names, checked: it exists, parses, has only settings."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        if not path.is_file():
            raise ConfigFileError(f"{CONFIG_FILE_VARIABLE}={str(path)!r}: no such file")
        super().__init__(settings_cls, toml_file=path)
        unknown = sorted(set(self.toml_data) - set(settings_cls.model_fields))
        if unknown:
            raise ConfigFileError(
                f"{CONFIG_FILE_VARIABLE}={str(path)!r}: not settings: {', '.join(unknown)}"
            )

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            return super()._read_file(file_path)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigFileError(f"{CONFIG_FILE_VARIABLE}={str(file_path)!r}: {exc}") from None


class Settings(LLMSettings):
    """Every knob of the orchestrator; the defaults are the embedded, dependency-free setup.

    The `llm_*` and `embeddings_*` settings are the LLM library's own (`LLMSettings`, which the
    reference arms read alone); this class adds the orchestrator's.
    """

    model_config = SettingsConfigDict(env_prefix="OCTOLLM_", extra="ignore")
    config_file_source = _ConfigFile

    listen: str = Field("127.0.0.1:50051", description="host:port the gRPC server binds")
    arm_endpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="arm addresses: host:port (static) or dns:///name:port (every A record)",
    )
    dns_refresh_s: float = Field(10.0, gt=0, description="how often DNS targets are re-resolved")
    shutdown_grace_s: float = Field(10.0, ge=0, description="drain time on SIGTERM")
    subtask_timeout_s: float = Field(60.0, gt=0, description="per-subtask timeout by default")
    task_timeout_s: float = Field(300.0, gt=0, description="end-to-end task time by default")
    max_task_time_s: float = Field(
        86_400.0, gt=0, description="longest budget.max_time a SubmitTask may ask for"
    )
    max_concurrent_tasks: int = Field(
        10, gt=0, description="tasks running at once; more wait in PENDING, none is dropped"
    )
    max_parallel_subtasks: int = Field(16, gt=0, description="ready subtasks run at once per task")
    max_retries: int = Field(3, ge=0, description="retries of a subtask after a transient failure")
    safety: bool = Field(
        False,
        description="run the safety arm on task input and the final answer (on/off; fails closed)",
    )
    max_concurrent_streams: int = Field(
        1000, gt=0, description="HTTP/2 streams one client connection may have open at once"
    )
    allow_insecure: bool = Field(
        False,
        description="serve plaintext on non-loopback addresses (e.g. behind a mesh with mTLS)",
    )
    metrics_host: str = Field("127.0.0.1", description="address of the Prometheus endpoint")
    metrics_port: int = Field(
        9464, ge=-1, le=65535, description="Prometheus /metrics port; 0 picks one, -1 turns it off"
    )
    arm_metrics_port: int = Field(
        -1, ge=-1, le=65535, description="Prometheus port of `octollm arm`; -1 turns it off"
    )
    postgres_dsn: str = Field(
        "", description="PostgreSQL DSN for durable state; empty keeps state in process memory"
    )
    retain_finished_tasks: int = Field(
        10_000,
        ge=1,
        description="without PostgreSQL: finished tasks kept in process memory; beyond it the "
        "oldest finished are forgotten (unfinished tasks always stay)",
    )
    postgres_startup_wait_s: float = Field(
        10.0, ge=0, description="how long start-up waits (with backoff) for PostgreSQL"
    )
    lease_ttl_s: float = Field(
        10.0,
        ge=0.5,
        description="with PostgreSQL: how long a replica's task leases last without renewal "
        "(renewed every third of it); a dead replica's tasks resume elsewhere after it",
    )
    replica_name: str = Field(
        "", description="names this replica in task leases (default: the host name)"
    )
    redis_url: str = Field(
        "",
        pattern=r"^$|^(redis|rediss|unix)://",
        description="Redis for the cache (redis://host:6379/0); empty = a cache in process memory",
    )
    cache_ttl_s: float = Field(
        300.0,
        ge=0,
        description="how long cached LLM replies, plans and deterministic results live; 0 = off",
    )
    # -- security (issue 7, item 4) ---------------------------------------------------------
    auth_tokens: SecretStr = Field(
        SecretStr(""),
        description="client bearer tokens: comma-separated `token` or `name:token`; empty = off",
    )
    rate_limit_rps: float = Field(
        0.0, ge=0, description="requests per second per client (token name or peer); 0 = off"
    )
    max_tasks_per_client: int = Field(
        0, ge=0, description="unfinished tasks one client may have; 0 = off"
    )
    tls_cert: str = Field("", description="PEM file: the server certificate chain (enables TLS)")
    tls_key: str = Field("", validate_default=True, description="PEM file: the server private key")
    tls_client_ca: str = Field(
        "",
        validate_default=True,
        description="PEM file: CA for client certificates; set = clients need one (mTLS)",
    )
    arm_tls_ca: str = Field(
        "", description="PEM file: CA that signs arm certificates; set = dial arms over TLS"
    )
    arm_tls_cert: str = Field("", description="PEM file: client certificate for arms (mTLS)")
    arm_tls_key: str = Field(
        "", validate_default=True, description="PEM file: client key for arms (mTLS)"
    )
    arm_tls_server_name: str = Field(
        "", description="name arm certificates are checked against instead of the dialled host"
    )
    event_loop: str = Field(
        "auto",
        pattern="^(auto|uvloop|asyncio)$",
        description="event loop of the octollm commands: uvloop (auto: when installed) or asyncio",
    )
    log_format: str = Field("auto", pattern="^(auto|json|console)$")
    log_level: str = Field("info", pattern="^(debug|info|warning|error)$")
    otel_endpoint: str = Field(
        "",
        description="OTLP/gRPC collector for task spans (e.g. http://otel:4317; http:// means "
        "plaintext); empty = no export. Needs the `otel` extra",
    )
    # -- task memory (issue 5, item 5) ------------------------------------------------------
    memory: bool = Field(
        True,
        description="remember succeeded tasks in Qdrant and show similar ones to the planner "
        "(on/off)",
    )
    memory_path: str = Field(
        ".octollm/memory",
        description="folder of the memory in Qdrant local mode; `:memory:` keeps it in process",
    )
    memory_timeout_s: float = Field(
        2.0, gt=0, description="time limit of one memory call (embedding + Qdrant)"
    )
    qdrant_url: str = Field(
        "", description="Qdrant server (http://host:6333) instead of local mode; empty = local"
    )
    qdrant_api_key: SecretStr = Field(SecretStr(""), description="API key of the Qdrant server")

    # NOTE: field validators, not a model validator: a model validator's error carries every
    # setting as its input, and describe_errors would print secrets such as the auth tokens.
    @field_validator("tls_key", "tls_client_ca", "arm_tls_key")
    @classmethod
    def _tls_pairs(cls, value: str, info: ValidationInfo) -> str:
        data = info.data
        if info.field_name == "tls_key" and bool(value) != bool(data.get("tls_cert")):
            raise ValueError("OCTOLLM_TLS_CERT and OCTOLLM_TLS_KEY must be set together")
        if info.field_name == "tls_client_ca" and value and not data.get("tls_cert"):
            raise ValueError("OCTOLLM_TLS_CLIENT_CA needs OCTOLLM_TLS_CERT and OCTOLLM_TLS_KEY")
        if info.field_name == "arm_tls_key":
            if bool(value) != bool(data.get("arm_tls_cert")):
                raise ValueError(
                    "OCTOLLM_ARM_TLS_CERT and OCTOLLM_ARM_TLS_KEY must be set together"
                )
            if value and not data.get("arm_tls_ca"):
                raise ValueError("OCTOLLM_ARM_TLS_CERT needs OCTOLLM_ARM_TLS_CA")
        return value

    @field_validator("arm_endpoints", mode="before")
    @classmethod
    def _split_endpoints(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


def describe_errors(exc: ValidationError) -> str:
    """One line per bad setting, naming the environment variable, for a start-up error."""
    prefix = Settings.model_config.get("env_prefix", "")
    config_file = os.environ.get(CONFIG_FILE_VARIABLE, "").strip()
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        variable = f"{prefix}{field}".upper()
        if config_file and variable not in os.environ:
            variable = f"{field} in {config_file}"
        lines.append(f"{variable}={error.get('input')!r}: {error['msg']}")
    return "\n".join(lines)
