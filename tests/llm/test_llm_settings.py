"""The OCTOLLM_LLM_* settings: the LLM library's own, and they refuse values that would silently
disable a bound."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator_svc.config import Settings
from orchestrator_svc.llm.configured import client_from_settings
from orchestrator_svc.llm.settings import LLMSettings


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OCTOLLM_LLM_TIMEOUT_S", "inf"),
        ("OCTOLLM_LLM_TIMEOUT_S", "nan"),
        ("OCTOLLM_LLM_TIMEOUT_S", "1e9"),
        ("OCTOLLM_LLM_COOLDOWN_S", "inf"),
        ("OCTOLLM_LLM_CHECK_INTERVAL_S", "inf"),
        ("OCTOLLM_LLM_PRICE_PER_1K_PROMPT", "nan"),
        ("OCTOLLM_LLM_MAX_CONCURRENCY", "0"),
        ("OCTOLLM_LLM_BREAKER_FAILURES", "0"),
    ],
)
def test_non_finite_or_absurd_llm_values_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """`OCTOLLM_LLM_TIMEOUT_S=inf` and the like stop start-up with an error naming the setting."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert variable.removeprefix("OCTOLLM_").lower() in str(raised.value)


async def test_the_endpoint_settings_reach_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """OCTOLLM_LLM_MAX_CONCURRENCY caps calls per endpoint; unset, a local server gets 1."""
    monkeypatch.setenv("OCTOLLM_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    client = client_from_settings(Settings())
    assert client is not None
    assert client.max_concurrency == 1
    await client.aclose()
    monkeypatch.setenv("OCTOLLM_LLM_MAX_CONCURRENCY", "3")
    client = client_from_settings(Settings())
    assert client is not None
    assert client.max_concurrency == 3
    await client.aclose()


def test_the_llm_library_reads_its_own_settings_and_the_orchestrator_extends_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LLMSettings holds every OCTOLLM_LLM_* and OCTOLLM_EMBEDDINGS_* setting, defined once: the
    orchestrator's Settings inherits them, and the same variable reaches both."""
    assert issubclass(Settings, LLMSettings)
    own = set(LLMSettings.model_fields)
    assert own == {n for n in Settings.model_fields if n.startswith(("llm_", "embeddings_"))}
    monkeypatch.setenv("OCTOLLM_LLM_MODEL", "tiny")
    monkeypatch.setenv("OCTOLLM_EMBEDDINGS_MODEL", "tiny-embed")
    assert LLMSettings().llm_model == Settings().llm_model == "tiny"
    assert LLMSettings().embeddings_model == "tiny-embed"


def test_an_arm_reads_the_llm_settings_of_the_config_file_under_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """LLMSettings (what the reference arms read) takes OCTOLLM_CONFIG_FILE's llm_* keys, skips
    the orchestrator's keys, and lets environment variables override the file."""
    config = tmp_path / "octollm.toml"
    config.write_text('listen = "0.0.0.0:50051"\nllm_model = "from-file"\nllm_timeout_s = 7\n')
    monkeypatch.setenv("OCTOLLM_CONFIG_FILE", str(config))
    settings = LLMSettings()
    assert settings.llm_model == "from-file"
    assert settings.llm_timeout_s == 7
    monkeypatch.setenv("OCTOLLM_LLM_MODEL", "from-env")
    assert LLMSettings().llm_model == "from-env"
