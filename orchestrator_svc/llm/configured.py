"""The LLM client the `OCTOLLM_LLM_*` settings describe (shared by the orchestrator and arms)."""

from __future__ import annotations

from .client import OpenAICompatibleClient
from .settings import LLMSettings


def client_from_settings(settings: LLMSettings) -> OpenAICompatibleClient | None:
    """The configured OpenAI-compatible endpoint, or None when `llm_base_url` is empty."""
    if not settings.llm_base_url:
        return None
    return OpenAICompatibleClient(
        base_url=settings.llm_base_url,
        # NOTE: local servers (llama.cpp, Ollama) need no key, but the SDK wants a non-empty one.
        api_key=settings.llm_api_key.get_secret_value() or "unused",
        model=settings.llm_model,
        timeout_s=settings.llm_timeout_s,
        max_retries=settings.llm_max_retries,
        price_per_1k_prompt=settings.llm_price_per_1k_prompt,
        price_per_1k_completion=settings.llm_price_per_1k_completion,
        temperature=settings.llm_temperature,
        output_retries=settings.llm_output_retries,
        cooldown_s=settings.llm_cooldown_s,
        max_concurrency=settings.llm_max_concurrency,
        breaker_failures=settings.llm_breaker_failures,
        stream=settings.llm_stream,
    )
