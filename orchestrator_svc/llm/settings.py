"""The LLM library's settings: `OCTOLLM_LLM_*` and `OCTOLLM_EMBEDDINGS_*` environment variables.

One definition for everything that talks to a model: the reference arms read these alone, and
the orchestrator's `Settings` extends them with its own. Like the orchestrator's, they are read
from the TOML file `OCTOLLM_CONFIG_FILE` names too (environment variables override it); keys of
other settings are skipped here, and the orchestrator checks the file at its own start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_VARIABLE = "OCTOLLM_CONFIG_FILE"


class LLMSettings(BaseSettings):
    """The OpenAI-compatible chat and embeddings endpoints and how calls to them behave."""

    model_config = SettingsConfigDict(env_prefix="OCTOLLM_", extra="ignore")
    # How the OCTOLLM_CONFIG_FILE file is read: here keys that are not these settings are
    # skipped (the file is the orchestrator's too); the orchestrator's Settings refuse them.
    config_file_source: ClassVar[type[TomlConfigSettingsSource]] = TomlConfigSettingsSource

    llm_base_url: str = Field(
        "", description="OpenAI-compatible endpoint (…/v1); empty runs the offline heuristic brain"
    )
    llm_api_key: SecretStr = Field(SecretStr(""), description="API key for the LLM endpoint")
    llm_model: str = Field("gpt-4o-mini", description="model name (or alias) at the endpoint")
    llm_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="per-request LLM timeout (a task's time left bounds it further)",
    )
    llm_max_retries: int = Field(2, ge=0, description="retries of a failed LLM request")
    llm_output_retries: int = Field(
        2, ge=0, description="re-asks after output that fails its JSON schema"
    )
    llm_temperature: float = Field(
        0.2, ge=0, le=2, allow_inf_nan=False, description="sampling temperature"
    )
    llm_price_per_1k_prompt: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="USD per 1k prompt tokens"
    )
    llm_price_per_1k_completion: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="USD per 1k completion tokens"
    )
    llm_cooldown_s: float = Field(
        15.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="the endpoint's breaker stays open this long, then lets one probe through",
    )
    llm_breaker_failures: int = Field(
        3, ge=1, le=100, description="consecutive failed LLM calls that open the breaker"
    )
    llm_max_concurrency: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="LLM calls in flight at once per endpoint (default: 1 local, 4 remote)",
    )
    llm_stream: bool = Field(
        True, description="stream LLM answers, so a call given up on stops the server"
    )
    llm_check_interval_s: float = Field(
        15.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="LLM-backed arms check their endpoint (GET /v1/models) this often",
    )
    embeddings_base_url: str = Field(
        "",
        description="OpenAI-compatible embeddings endpoint (…/v1); empty = a local hashing "
        "embedder",
    )
    embeddings_model: str = Field(
        "text-embedding-3-small", description="embeddings model at that endpoint"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments first, then OCTOLLM_* variables, then the OCTOLLM_CONFIG_FILE file."""
        path = os.environ.get(CONFIG_FILE_VARIABLE, "").strip()
        if not path:
            return init_settings, env_settings
        file_source = cls.config_file_source(settings_cls, Path(path))
        return init_settings, env_settings, file_source
