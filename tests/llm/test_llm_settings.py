"""The OCTOLLM_LLM_* settings refuse values that would silently disable a bound."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator_svc.config import Settings
from orchestrator_svc.llm.configured import client_from_settings


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
