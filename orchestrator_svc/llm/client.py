"""An OpenAI-compatible chat-completions client that returns validated pydantic models.

It works with OpenAI, vLLM, Ollama and llama.cpp's server. They disagree on structured output,
so the client negotiates `response_format`, most to least precise, and remembers per client
what the server took:

1. `{"type": "json_schema", "json_schema": {"name", "schema", "strict": false}}` (OpenAI, vLLM)
2. `{"type": "json_object", "schema": {...}}` (llama.cpp's server: grammar-constrained)
3. `{"type": "json_object"}` (the schema goes into the system prompt)
4. no `response_format` at all (the schema goes into the system prompt)

A server "rejects" a format when it answers HTTP 400/422/500 mentioning response_format,
json_schema or json_object. Output that is not JSON or violates the model is retried with the
validation error fed back, `output_retries` more times. Transport trouble (connect errors, HTTP
5xx, 429) is retried `max_retries` more times with jittered exponential backoff (429 honours
Retry-After); a timeout is not retried, because a slow server stays slow and the caller has
heuristics to fall back on. After a failure that makes the server unusable, the client fails
fast for `cooldown_s` (a small circuit breaker) so a dead endpoint costs each task nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import random
import time
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import openai
import structlog
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from pydantic import BaseModel, ValidationError

from .endpoint import EndpointStatus
from .errors import LLMError, LLMInvalidOutput, LLMRateLimited, LLMRejected, LLMUnavailable
from .schema import json_text, schema_name, wire_schema
from .usage import NO_USAGE, LLMUsage

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

ResponseFormatMode = Literal["json_schema", "json_object_schema", "json_object", "none"]
RESPONSE_FORMAT_MODES: tuple[ResponseFormatMode, ...] = (
    "json_schema",
    "json_object_schema",
    "json_object",
    "none",
)
_FORMAT_WORDS = ("response_format", "response format", "json_schema", "json_object")
_FORMAT_REJECT_STATUSES = frozenset({400, 422, 500})
_FEEDBACK_ERRORS = 8
_ECHO_CHARS = 4000


class _FormatRejected(Exception):
    """The server does not take this response_format; try the next one."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class OpenAICompatibleClient:
    """See the module docstring. Close it with `await client.aclose()` (or `async with`)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        price_per_1k_prompt: float = 0.0,
        price_per_1k_completion: float = 0.0,
        *,
        temperature: float | None = 0.2,
        output_retries: int = 2,
        max_backoff_s: float = 8.0,
        cooldown_s: float = 15.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if max_retries < 0 or output_retries < 0:
            raise ValueError("retries must be >= 0")
        self._model = model
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._price_prompt = price_per_1k_prompt
        self._price_completion = price_per_1k_completion
        self._temperature = temperature
        self._output_retries = output_retries
        self._max_backoff_s = max_backoff_s
        self._cooldown_s = cooldown_s
        self._mode_index: int | None = None
        self._cool_until = 0.0
        self._cool_error: LLMError | None = None
        # NOTE: local servers take any key, but the SDK insists on a non-empty one.
        self._openai = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "not-needed", max_retries=0, timeout=timeout_s
        )

    @property
    def model(self) -> str:
        return self._model

    @property
    def temperature(self) -> float | None:
        """The sampling temperature sent with every request (None: the server's default)."""
        return self._temperature

    @property
    def response_format_mode(self) -> ResponseFormatMode | None:
        """The response_format the server accepted last, or None before the first answer."""
        return None if self._mode_index is None else RESPONSE_FORMAT_MODES[self._mode_index]

    async def aclose(self) -> None:
        await self._openai.close()

    async def check_endpoint(self, timeout_s: float = 5.0) -> EndpointStatus:
        """`GET /v1/models`: is the endpoint reachable, and does it list the configured model?

        A server without `/models` (HTTP 404/405) cannot be verified and counts as usable; an
        empty list too. A usable answer ends a cool-down (the endpoint is back)."""
        try:
            async with asyncio.timeout(timeout_s):
                page = await self._openai.models.list(timeout=timeout_s)
        except (TimeoutError, openai.APITimeoutError):
            return EndpointStatus(False, f"LLM endpoint did not answer within {timeout_s:g}s")
        except openai.APIConnectionError as exc:
            return EndpointStatus(False, f"LLM endpoint unreachable ({exc.message})")
        except openai.APIStatusError as exc:
            status = exc.status_code
            if status in (404, 405):
                return self._endpoint_back(EndpointStatus(True))
            if status in (401, 403):
                return EndpointStatus(
                    False, f"LLM endpoint refused the API key (HTTP {status})", permanent=True
                )
            return EndpointStatus(False, f"LLM endpoint failing (HTTP {status})")
        except (openai.APIError, ValueError) as exc:
            return EndpointStatus(False, f"LLM endpoint answered nonsense ({type(exc).__name__})")
        listed = tuple(
            str(getattr(m, "id", "")) for m in (getattr(page, "data", None) or ()) if m is not None
        )
        if listed and self._model not in listed:
            shown = ", ".join(listed[:10])
            return EndpointStatus(
                False,
                f"model {self._model!r} is not served by the LLM endpoint (it lists: {shown})",
                permanent=True,
                models=listed,
            )
        return self._endpoint_back(EndpointStatus(True, models=listed))

    def _endpoint_back(self, status: EndpointStatus) -> EndpointStatus:
        if self._cool_error is not None:
            log.info("llm_endpoint_back", model=self._model)
        self._cool_error = None
        self._cool_until = 0.0
        return status

    async def __aenter__(self) -> OpenAICompatibleClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def complete_json(
        self,
        *,
        system: str,
        user: str,
        schema: type[M],
        max_tokens: int | None = None,
        json_schema: Mapping[str, Any] | None = None,
    ) -> tuple[M, LLMUsage]:
        """Ask for JSON shaped like `schema` and return it validated, with the usage spent.

        `json_schema` overrides the schema sent to the server (e.g. to add enums only known at
        run time); the reply is always validated by `schema`.
        """
        self._check_cooldown()
        sent_schema = wire_schema(
            json_schema if json_schema is not None else schema.model_json_schema()
        )
        name = schema_name(schema.__name__)
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
        spent = LLMUsage(model=self._model)
        content = ""
        attempts = self._output_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                content, finish_reason, usage = await self._chat(
                    messages, name, sent_schema, max_tokens
                )
            except LLMError as exc:
                exc.usage = spent + (exc.usage or NO_USAGE)
                raise
            spent += usage
            try:
                return schema.model_validate_json(json_text(content)), spent
            except ValidationError as exc:
                feedback, error_count = _feedback(exc, finish_reason), exc.error_count()
            log.info(
                "llm_output_invalid",
                model=self._model,
                schema=name,
                attempt=attempt,
                errors=error_count,
                finish_reason=finish_reason,
            )
            messages.append({"role": "assistant", "content": content[:_ECHO_CHARS]})
            messages.append({"role": "user", "content": feedback})
        raise LLMInvalidOutput(
            f"LLM output invalid after {attempts} attempt(s) ({schema.__name__})",
            last_output=content,
            usage=spent,
        )

    # -- one answer, negotiating response_format ----------------------------------------------

    async def _chat(
        self,
        messages: list[ChatCompletionMessageParam],
        name: str,
        sent_schema: dict[str, Any],
        max_tokens: int | None,
    ) -> tuple[str, str, LLMUsage]:
        first = self._mode_index or 0
        last_status = 0
        for index in range(first, len(RESPONSE_FORMAT_MODES)):
            mode = RESPONSE_FORMAT_MODES[index]
            try:
                completion = await self._send(mode, messages, name, sent_schema, max_tokens)
            except _FormatRejected as rejected:
                last_status = rejected.status
                log.info("llm_response_format_rejected", model=self._model, mode=mode)
                continue
            if self._mode_index != index:
                self._mode_index = index
                log.info("llm_response_format_chosen", model=self._model, mode=mode)
            choice = completion.choices[0] if completion.choices else None
            content = (choice.message.content or "") if choice is not None else ""
            finish_reason = str(choice.finish_reason) if choice is not None else ""
            return content, finish_reason, self._usage(completion, messages, content)
        raise LLMRejected(
            "LLM rejected every response_format", status=last_status
        )  # pragma: no cover - "none" sends no response_format, so it is never rejected for one

    def _request_messages(
        self,
        mode: ResponseFormatMode,
        messages: list[ChatCompletionMessageParam],
        sent_schema: dict[str, Any],
    ) -> list[ChatCompletionMessageParam]:
        if mode in ("json_schema", "json_object_schema"):
            return messages
        hint = (
            "\n\nReply with one JSON object only (no prose, no code fences) that conforms to "
            f"this JSON Schema:\n{json.dumps(sent_schema, separators=(',', ':'))}"
        )
        system = messages[0]
        return [{"role": "system", "content": f"{system.get('content', '')}{hint}"}, *messages[1:]]

    async def _send(
        self,
        mode: ResponseFormatMode,
        messages: list[ChatCompletionMessageParam],
        name: str,
        sent_schema: dict[str, Any],
        max_tokens: int | None,
    ) -> ChatCompletion:
        response_format = _response_format(mode, name, sent_schema)
        request_messages = self._request_messages(mode, messages, sent_schema)
        loop = asyncio.get_running_loop()
        for attempt in range(1, self._max_retries + 2):
            last = attempt > self._max_retries
            started = loop.time()
            delay: float
            try:
                # NOTE: the SDK's timeout is per read; asyncio bounds the whole exchange.
                async with asyncio.timeout(self._timeout_s):
                    completion = await self._openai.chat.completions.create(
                        model=self._model,
                        messages=request_messages,
                        max_tokens=max_tokens if max_tokens is not None else openai.omit,
                        temperature=(
                            self._temperature if self._temperature is not None else openai.omit
                        ),
                        extra_body=(
                            {"response_format": response_format} if response_format else None
                        ),
                        timeout=self._timeout_s,
                    )
            except (TimeoutError, openai.APITimeoutError):
                self._log_call(mode, attempt, started, "timeout")
                raise self._cool_down(
                    LLMUnavailable(f"LLM unavailable (timeout after {self._timeout_s:g}s)")
                ) from None
            except openai.RateLimitError as exc:
                self._log_call(mode, attempt, started, "rate_limited")
                wait = _retry_after(exc.response.headers)
                if last or (wait is not None and wait > self._max_backoff_s):
                    hint = f", retry after {wait:g}s" if wait is not None else ""
                    raise self._cool_down(
                        LLMRateLimited(f"LLM rate limited (HTTP 429{hint})", retry_after=wait),
                        wait,
                    ) from None
                delay = wait if wait is not None else self._backoff(attempt)
            except openai.APIConnectionError as exc:
                self._log_call(mode, attempt, started, "connection_error")
                if last:
                    raise self._cool_down(
                        LLMUnavailable(f"LLM unavailable (connection failed: {exc.message})")
                    ) from None
                delay = self._backoff(attempt)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if mode != "none" and _rejects_format(exc):
                    self._log_call(mode, attempt, started, "format_rejected")
                    raise _FormatRejected(status) from None
                self._log_call(mode, attempt, started, f"http_{status}")
                if status < 500:
                    raise LLMRejected(
                        f"LLM rejected the request (HTTP {status}: {exc.message[:200]})",
                        status=status,
                    ) from None
                if last:
                    raise self._cool_down(
                        LLMUnavailable(f"LLM unavailable (HTTP {status})")
                    ) from None
                delay = self._backoff(attempt)
            except openai.APIError as exc:
                self._log_call(mode, attempt, started, "bad_response")
                raise self._cool_down(
                    LLMUnavailable(f"LLM unavailable (bad response: {exc.message[:200]})")
                ) from None
            except ValueError as exc:
                # NOTE: the SDK parses a 200 body as JSON without wrapping the error.
                self._log_call(mode, attempt, started, "bad_response")
                raise self._cool_down(
                    LLMUnavailable(f"LLM unavailable (bad response: {type(exc).__name__})")
                ) from None
            else:
                if not _is_chat_completion(completion):
                    # NOTE: the SDK builds responses without validating them.
                    self._log_call(mode, attempt, started, "bad_response")
                    raise self._cool_down(
                        LLMUnavailable("LLM unavailable (bad response: not a chat completion)")
                    )
                usage = completion.usage
                self._log_call(
                    mode,
                    attempt,
                    started,
                    "ok",
                    prompt_tokens=usage.prompt_tokens if usage else None,
                    completion_tokens=usage.completion_tokens if usage else None,
                )
                self._cool_error = None
                return completion
            log.info("llm_retry", model=self._model, attempt=attempt, delay_s=round(delay, 3))
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- bookkeeping -----------------------------------------------------------------------------

    def _usage(
        self, completion: ChatCompletion, messages: list[ChatCompletionMessageParam], content: str
    ) -> LLMUsage:
        if completion.usage is not None:
            prompt, answer = completion.usage.prompt_tokens, completion.usage.completion_tokens
        else:
            # NOTE: some servers omit usage; ~4 characters per token keeps budgets honest.
            prompt = sum(len(str(m.get("content", ""))) for m in messages) // 4
            answer = len(content) // 4
        cost = prompt / 1000 * self._price_prompt + answer / 1000 * self._price_completion
        return LLMUsage(self._model, prompt, answer, cost)

    def _backoff(self, attempt: int) -> float:
        cap = min(self._max_backoff_s, 0.25 * 2 ** (attempt - 1))
        return random.uniform(cap / 2, cap)

    def _cool_down(self, error: LLMError, seconds: float | None = None) -> LLMError:
        pause = seconds if seconds is not None else self._cooldown_s
        if self._cooldown_s > 0 and pause > 0:
            self._cool_until = time.monotonic() + pause
            self._cool_error = error
        return error

    def _check_cooldown(self) -> None:
        error = self._cool_error
        left = self._cool_until - time.monotonic()
        if error is None or left <= 0:
            return
        message = f"{error} (cooling down, {left:.1f}s left)"
        if isinstance(error, LLMRateLimited):
            raise LLMRateLimited(message, retry_after=left)
        raise LLMUnavailable(message, retry_after=left)

    def _log_call(
        self,
        mode: ResponseFormatMode,
        attempt: int,
        started: float,
        outcome: str,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> None:
        log.info(
            "llm_call",
            model=self._model,
            response_format=mode,
            attempt=attempt,
            latency_s=round(asyncio.get_running_loop().time() - started, 4),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            outcome=outcome,
        )


def _response_format(
    mode: ResponseFormatMode, name: str, sent_schema: dict[str, Any]
) -> dict[str, Any] | None:
    if mode == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": sent_schema, "strict": False},
        }
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": sent_schema}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def _rejects_format(exc: openai.APIStatusError) -> bool:
    if exc.status_code not in _FORMAT_REJECT_STATUSES:
        return False
    with contextlib.suppress(TypeError, ValueError):
        text = f"{exc.message} {json.dumps(exc.body, default=str)}".lower()
        return any(word in text for word in _FORMAT_WORDS)
    return False


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to wait (`retry-after-ms`, `retry-after`: seconds or a date)."""
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        with contextlib.suppress(ValueError):
            return max(0.0, float(value) / divisor)
        with contextlib.suppress(TypeError, ValueError):
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    return None


def _feedback(exc: ValidationError, finish_reason: str) -> str:
    lines = []
    for error in exc.errors()[:_FEEDBACK_ERRORS]:
        where = ".".join(str(part) for part in error["loc"]) or "(whole reply)"
        lines.append(f"- {where}: {error['msg']}")
    cut = (
        "\nYour reply was cut off at the token limit: answer more briefly."
        if finish_reason == "length"
        else ""
    )
    return (
        "Your previous reply was not valid:\n"
        + "\n".join(lines)
        + cut
        + "\nReply again with only one JSON object that fixes these errors."
    )


def _is_chat_completion(completion: object) -> bool:
    """True if `completion` has the shape the client reads: a list of choices, each with a
    message whose content is text or None, and integer token counts when usage is given."""
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list):
        return False
    for choice in choices:
        content = getattr(getattr(choice, "message", None), "content", 0)
        if content is not None and not isinstance(content, str):
            return False
    usage = getattr(completion, "usage", None)
    return usage is None or all(
        isinstance(getattr(usage, name, None), int)
        for name in ("prompt_tokens", "completion_tokens")
    )
