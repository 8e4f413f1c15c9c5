"""Text embedders: an OpenAI-compatible endpoint when configured, else a local hashing one.

Shared by the retriever arm (its document store) and the orchestrator's task memory.

Anything with ``name`` and ``async embed(texts) -> vectors`` (and ``aclose()``) is an
``Embedder``; vectors of one embedder all have the same length. ``embedder_from_env()`` picks
from the LLM library's settings (``LLMSettings``):

- ``OCTOLLM_EMBEDDINGS_BASE_URL`` set: ``OpenAIEmbedder`` (``openai.AsyncOpenAI(...).embeddings``)
  with ``OCTOLLM_EMBEDDINGS_MODEL`` (default ``text-embedding-3-small``), the key in
  ``OCTOLLM_LLM_API_KEY`` and the timeout in ``OCTOLLM_LLM_TIMEOUT_S`` (default 30 s);
- otherwise ``HashEmbedder``: deterministic, offline, no model. Word terms (see ``terms``) and
  character 3- and 4-grams of every word (with boundary marks, so "install" and "installation"
  share most features) are hashed (blake2b, stable across processes) with a sign into a fixed
  dimension (384), weighted ``1 + ln(count)``, and L2-normalised. It finds paraphrases that
  share word pieces, not synonyms; a real embedding model does better.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import math
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .settings import LLMSettings
from .terms import STOP_WORDS, stem, words

if TYPE_CHECKING:
    from openai import AsyncOpenAI

DEFAULT_DIMENSION = 384
DEFAULT_EMBEDDINGS_MODEL = "text-embedding-3-small"
WORD_WEIGHT = 1.0
NGRAM_WEIGHT = 0.35
NGRAM_SIZES = (3, 4)
# NOTE: below this many texts hashing runs on the event loop; above, in a worker thread.
_INLINE_TEXTS = 4


class DimensionMismatch(ValueError):
    """A vector collection holds vectors of another length than the embedder makes."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of one fixed length."""

    @property
    def name(self) -> str:
        """Identifies the embedding space (vectors of different names do not compare)."""
        ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...

    async def aclose(self) -> None:
        """Release connections; the embedder is not used afterwards."""
        ...


class HashEmbedder:
    """Feature hashing of words and character n-grams into ``dimension`` floats, L2-normalised.

    Stop words are left out unless the text has nothing else; the vector of a text without
    any word is all zeros.
    """

    def __init__(self, dimension: int = DEFAULT_DIMENSION) -> None:
        if dimension < 8:
            raise ValueError(f"dimension must be at least 8, got {dimension}")
        self.dimension = dimension

    @property
    def name(self) -> str:
        return f"hash-ngram-v1-{self.dimension}"

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if len(texts) <= _INLINE_TEXTS:
            return [self.vector(t) for t in texts]
        return await asyncio.to_thread(lambda: [self.vector(t) for t in texts])

    async def aclose(self) -> None:
        return None

    def vector(self, text: str) -> list[float]:
        """The embedding of one text (synchronous)."""
        tokens = words(text)
        # NOTE: a text of stop words only ("to be or not to be") keeps them rather than vanish.
        content = [w for w in tokens if w not in STOP_WORDS] or tokens
        features: Counter[str] = Counter()
        for word in content:
            features["w:" + stem(word)] += 1
            marked = f"<{word}>"
            for n in NGRAM_SIZES:
                for i in range(len(marked) - n + 1):
                    features["g:" + marked[i : i + n]] += 1
        values = [0.0] * self.dimension
        for feature, count in features.items():
            slot, sign = _slot(feature, self.dimension)
            weight = WORD_WEIGHT if feature.startswith("w:") else NGRAM_WEIGHT
            values[slot] += sign * weight * (1.0 + math.log(count))
        norm = math.sqrt(sum(v * v for v in values))
        return [v / norm for v in values] if norm > 0 else values


@lru_cache(maxsize=65_536)
def _slot(feature: str, dimension: int) -> tuple[int, float]:
    digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "big")
    return digest % dimension, 1.0 if digest >> 63 else -1.0


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible ``/v1/embeddings`` endpoint, in batches."""

    def __init__(
        self,
        base_url: str,
        model: str = DEFAULT_EMBEDDINGS_MODEL,
        *,
        api_key: str = "",
        timeout_s: float = 30.0,
        max_retries: int = 2,
        batch_size: int = 64,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self._base_url = base_url
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._client: AsyncOpenAI | None = None

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        client = await self._connect()
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            # NOTE: explicit "float": some compatible servers (vLLM, Ollama) lack base64.
            response = await client.embeddings.create(
                model=self.model, input=batch, encoding_format="float"
            )
            ordered = sorted(response.data, key=lambda item: item.index)
            if len(ordered) != len(batch):
                raise RuntimeError(
                    f"embeddings endpoint returned {len(ordered)} vectors for {len(batch)} texts"
                )
            vectors.extend([float(x) for x in item.embedding] for item in ordered)
        return vectors

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _connect(self) -> AsyncOpenAI:
        if self._client is None:
            # NOTE: openai takes most of a second to import: imported on first use, in a thread,
            # so neither the CLI (which imports every reference arm) nor the event loop waits.
            module = await asyncio.to_thread(importlib.import_module, "openai")
            self._client = module.AsyncOpenAI(
                base_url=self._base_url,
                api_key=self._api_key or "not-needed",
                timeout=self._timeout_s,
                max_retries=self._max_retries,
            )
        return self._client


def embedder_from_env(settings: LLMSettings | None = None) -> Embedder:
    """``OpenAIEmbedder`` when ``OCTOLLM_EMBEDDINGS_BASE_URL`` is set (in ``settings``, else
    the environment and the config file), else ``HashEmbedder``."""
    settings = settings if settings is not None else LLMSettings()
    if not settings.embeddings_base_url.strip():
        return HashEmbedder()
    return OpenAIEmbedder(
        settings.embeddings_base_url.strip(),
        settings.embeddings_model.strip() or DEFAULT_EMBEDDINGS_MODEL,
        api_key=settings.llm_api_key.get_secret_value(),
        timeout_s=settings.llm_timeout_s,
    )
