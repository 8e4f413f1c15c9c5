"""An OpenAI-compatible chat-completions client that returns validated pydantic models.

It works with OpenAI, vLLM, Ollama and llama.cpp's server. They disagree on structured output,
so the client negotiates `response_format`, most to least precise, and remembers per client
what the server took:

1. `{"type": "json_schema", "json_schema": {"name", "schema", "strict": false}}` (OpenAI, vLLM)
2. `{"type": "json_object", "schema": {...}}` (llama.cpp's server: grammar-constrained)
3. `{"type": "json_object"}` (the schema goes into the system prompt)
4. no `response_format` at all (the schema goes into the system prompt)

A server "rejects" a format when it answers HTTP 400/422/500 mentioning response_format,
json_schema or json_object. The schema sent carries no bounds (see `wire_schema`); the reply is
validated by the full pydantic model. Output that is not JSON, violates the model, or copies
placeholders, quoted examples of the system prompt or the schema's descriptions (see copies.py)
is re-asked with what was wrong fed back, `output_retries` more times.

Every call is bounded by `CallLimits` (the task's time and tokens left) as well as the client's
own `timeout_s`, and streamed (`stream=True`), so that a call given up on closes its connection
and the server stops generating; usage comes from the final chunk or is estimated (~4
characters a token), and a call that timed out is charged its prompt plus what it streamed.
Transport trouble (connect errors, HTTP 5xx, 429) is retried `max_retries` more times with
jittered exponential backoff by tenacity (429 honours Retry-After); a timeout is not retried.
All clients of one endpoint share a cap on concurrent calls and a circuit breaker (see
breaker.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import openai
import structlog
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from .breaker import Endpoint, endpoint_for
from .copies import copied_values
from .endpoint import EndpointStatus
from .errors import LLMError, LLMInvalidOutput, LLMRateLimited, LLMRejected, LLMUnavailable
from .limits import NO_LIMITS, CallLimits
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
CHARS_PER_TOKEN = 4
# A streamed answer this many times longer than max_tokens allows is cut off (a runaway server).
RUNAWAY_FACTOR = 2


def default_max_concurrency(base_url: str) -> int:
    """1 for a server on this machine (llama.cpp and Ollama serve one request at a time by
    default), 4 for a remote one."""
    host = urlsplit(base_url).hostname or ""
    if host == "localhost":
        return 1
    with contextlib.suppress(ValueError):
        return 1 if ipaddress.ip_address(host).is_loopback else 4
    return 4


class _FormatRejected(Exception):
    """The server does not take this response_format; try the next one."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Transient(Exception):
    """A failure worth retrying (connect error, HTTP 5xx, 429); `error` is raised if none is
    left, `wait` is the server's Retry-After when it gave one, and `final` stops the retries
    (a Retry-After longer than the client waits)."""

    def __init__(self, error: LLMError, wait: float | None = None, *, final: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait = wait
        self.final = final


@dataclass(frozen=True, slots=True)
class _Answer:
    content: str
    finish_reason: str
    usage: LLMUsage


class OpenAICompatibleClient:
    """See the module docstring. Close it with `await client.aclose()` (or `async with`).

    `max_concurrency` None: `default_max_concurrency(base_url)`; `breaker_failures`: consecutive
    failed calls that open the breaker for `cooldown_s`; `stream` False for a server that cannot
    stream (a call given up on may then keep the server busy)."""

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
        max_concurrency: int | None = None,
        breaker_failures: int = 3,
        stream: bool = True,
    ) -> None:
        if not 0 < timeout_s < float("inf"):
            raise ValueError("timeout_s must be > 0 and finite")
        if max_retries < 0 or output_retries < 0:
            raise ValueError("retries must be >= 0")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if breaker_failures < 1:
            raise ValueError("breaker_failures must be >= 1")
        self._base_url = base_url
        self._model = model
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._price_prompt = price_per_1k_prompt
        self._price_completion = price_per_1k_completion
        self._temperature = temperature
        self._output_retries = output_retries
        self._max_backoff_s = max_backoff_s
        self._cooldown_s = cooldown_s
        self._max_concurrency = max_concurrency or default_max_concurrency(base_url)
        self._breaker_failures = breaker_failures
        self._stream = stream
        self._mode_index: int | None = None
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
    def max_concurrency(self) -> int:
        """Calls this endpoint may have in flight at once (shared by its clients)."""
        return self._max_concurrency

    @property
    def response_format_mode(self) -> ResponseFormatMode | None:
        """The response_format the server accepted last, or None before the first answer."""
        return None if self._mode_index is None else RESPONSE_FORMAT_MODES[self._mode_index]

    def endpoint(self) -> Endpoint:
        """The shared state of this client's endpoint (concurrency cap, breaker)."""
        return endpoint_for(
            self._base_url,
            max_concurrency=self._max_concurrency,
            failures_to_open=self._breaker_failures,
            open_s=self._cooldown_s,
        )

    async def aclose(self) -> None:
        await self._openai.close()

    async def __aenter__(self) -> OpenAICompatibleClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def check_endpoint(self, timeout_s: float = 5.0) -> EndpointStatus:
        """`GET /v1/models`: is the endpoint reachable, and does it list the configured model?

        A server without `/models` (HTTP 404/405) cannot be verified and counts as usable; an
        empty list too. A usable answer closes the breaker (the endpoint is back)."""
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
        self.endpoint().breaker.succeeded()
        return status

    async def complete_json(
        self,
        *,
        system: str,
        user: str,
        schema: type[M],
        max_tokens: int | None = None,
        json_schema: Mapping[str, Any] | None = None,
        limits: CallLimits = NO_LIMITS,
        fresh: bool = False,
    ) -> tuple[M, LLMUsage]:
        """Ask for JSON shaped like `schema` and return it validated, with the usage spent.

        `json_schema` overrides the schema sent to the server (e.g. to add enums only known at
        run time); the reply is always validated by `schema`. `limits` bounds the whole call,
        re-asks included: `max_tokens` is cut to the tokens left after the prompt, and a call
        with no time or tokens left raises `LLMUnavailable` without asking. `fresh` is for
        caches (this client never caches).
        """
        del fresh
        sent_schema = wire_schema(
            json_schema if json_schema is not None else schema.model_json_schema()
        )
        name = schema_name(schema.__name__)
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
        spent = NO_USAGE
        content = ""
        attempts = self._output_retries + 1
        for attempt in range(1, attempts + 1):
            left = limits.spent(spent)
            prompt_chars = sum(len(str(m.get("content", ""))) for m in messages)
            why = left.why_not(prompt_chars, max_tokens)
            if why:
                raise LLMUnavailable(f"LLM not asked: {why}", usage=spent)
            cap = left.completion_tokens(prompt_chars, max_tokens)
            try:
                answer = await self._chat(messages, name, sent_schema, cap, left)
            except LLMError as exc:
                exc.usage = spent + (exc.usage or NO_USAGE)
                raise
            spent += answer.usage
            content = answer.content
            try:
                value = schema.model_validate_json(json_text(content))
            except ValidationError as exc:
                feedback, error_count = _feedback(exc, answer.finish_reason), exc.error_count()
            else:
                copies = copied_values(
                    value.model_dump(mode="json"), system=system, schema=sent_schema
                )
                if not copies:
                    return value, spent
                feedback, error_count = _copy_feedback(copies), len(copies)
            log.info(
                "llm_output_invalid",
                model=self._model,
                schema=name,
                attempt=attempt,
                errors=error_count,
                finish_reason=answer.finish_reason,
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
        limits: CallLimits,
    ) -> _Answer:
        first = self._mode_index or 0
        last_status = 0
        for index in range(first, len(RESPONSE_FORMAT_MODES)):
            mode = RESPONSE_FORMAT_MODES[index]
            try:
                answer = await self._send(mode, messages, name, sent_schema, max_tokens, limits)
            except _FormatRejected as rejected:
                last_status = rejected.status
                log.info("llm_response_format_rejected", model=self._model, mode=mode)
                continue
            if self._mode_index != index:
                self._mode_index = index
                log.info("llm_response_format_chosen", model=self._model, mode=mode)
            return answer
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
        limits: CallLimits,
    ) -> _Answer:
        """One answer, with transport retries (tenacity); a breaker failure when none is left."""
        breaker = self.endpoint().breaker
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(lambda e: isinstance(e, _Transient) and not e.final),
            reraise=True,
            before_sleep=lambda state: log.info(
                "llm_retry",
                model=self._model,
                attempt=state.attempt_number,
                delay_s=round(state.upcoming_sleep, 3),
            ),
        )
        probe = breaker.check()
        try:
            async for attempt in retrying:
                with attempt:
                    answer = await self._send_once(
                        mode, messages, name, sent_schema, max_tokens, limits, attempt.retry_state
                    )
        except _Transient as exhausted:
            error = exhausted.error
            if isinstance(error, LLMRateLimited) and error.retry_after:
                breaker.pause(error.retry_after, error)
            else:
                breaker.failed(error)
            raise error from None
        except _Charged as charged:
            if charged.counts:
                breaker.failed(charged.error)
            elif probe:
                breaker.released()
            raise charged.error from None
        except BaseException:
            if probe:
                breaker.released()
            raise
        breaker.succeeded()
        return answer

    def _wait(self, state: RetryCallState) -> float:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, _Transient) and error.wait is not None:
            return error.wait
        backoff = wait_random_exponential(multiplier=0.25, max=self._max_backoff_s)
        return float(backoff(state))

    async def _send_once(
        self,
        mode: ResponseFormatMode,
        messages: list[ChatCompletionMessageParam],
        name: str,
        sent_schema: dict[str, Any],
        max_tokens: int | None,
        limits: CallLimits,
        state: RetryCallState,
    ) -> _Answer:
        response_format = _response_format(mode, name, sent_schema)
        request_messages = self._request_messages(mode, messages, sent_schema)
        prompt_chars = sum(len(str(m.get("content", ""))) for m in request_messages)
        timeout_s, by_task = self._timeout_s, False
        task_left = limits.seconds_left()
        if task_left is not None and task_left < timeout_s:
            timeout_s, by_task = task_left, True
        if timeout_s <= 0:
            raise _Charged(LLMUnavailable("LLM not asked: no time left"), counts=False)
        endpoint = self.endpoint()
        streamed: list[str] = []
        started = time.monotonic()
        attempt = state.attempt_number
        sent = False
        try:
            # NOTE: the SDK's timeout is per read; asyncio bounds the whole exchange, the wait
            # for a free slot of the endpoint included.
            async with asyncio.timeout(timeout_s):
                async with endpoint.slots:
                    sent = True
                    endpoint.in_flight += 1
                    try:
                        answer = await self._exchange(
                            request_messages, response_format, max_tokens, timeout_s, streamed
                        )
                    finally:
                        endpoint.in_flight -= 1
        except TimeoutError:
            self._log_call(mode, attempt, started, "timeout")
            used = "the task's time left" if by_task else "the client's timeout"
            if limits.stalls is not None:
                limits.stalls.timed_out(f"after {timeout_s:.3g}s")
            if not sent:
                raise _Charged(
                    LLMUnavailable(
                        f"LLM unavailable (no free slot of the endpoint within {timeout_s:.3g}s,"
                        f" {used}; {endpoint.in_flight} call(s) in flight)"
                    ),
                    counts=False,
                ) from None
            # NOTE: the server bills what it generated: what was streamed, or when not
            # streaming, as much as it was allowed to.
            generated = (
                len("".join(streamed)) // CHARS_PER_TOKEN if self._stream else (max_tokens or 0)
            )
            charged = self._price(prompt_chars // CHARS_PER_TOKEN, generated, self._model)
            raise _Charged(
                LLMUnavailable(
                    f"LLM unavailable (timeout after {timeout_s:.3g}s, {used})", usage=charged
                ),
                counts=not by_task,
            ) from None
        except openai.APITimeoutError:
            self._log_call(mode, attempt, started, "timeout")
            raise _Charged(
                LLMUnavailable(f"LLM unavailable (timeout after {timeout_s:.3g}s)"), counts=True
            ) from None
        except openai.RateLimitError as exc:
            self._log_call(mode, attempt, started, "rate_limited")
            wait = _retry_after(exc.response.headers)
            hint = f", retry after {wait:g}s" if wait is not None else ""
            error = LLMRateLimited(f"LLM rate limited (HTTP 429{hint})", retry_after=wait)
            final = wait is not None and wait > self._max_backoff_s
            raise _Transient(error, wait, final=final) from None
        except openai.APIConnectionError as exc:
            self._log_call(mode, attempt, started, "connection_error")
            raise _Transient(
                LLMUnavailable(f"LLM unavailable (connection failed: {exc.message})")
            ) from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            if mode != "none" and _rejects_format(exc):
                self._log_call(mode, attempt, started, "format_rejected")
                raise _FormatRejected(status) from None
            self._log_call(mode, attempt, started, f"http_{status}")
            if status < 500:
                raise _Charged(
                    LLMRejected(
                        f"LLM rejected the request (HTTP {status}: {exc.message[:200]})",
                        status=status,
                    ),
                    counts=False,
                ) from None
            raise _Transient(LLMUnavailable(f"LLM unavailable (HTTP {status})")) from None
        except (openai.APIError, ValueError) as exc:
            # NOTE: the SDK parses a 200 body as JSON without wrapping a ValueError.
            self._log_call(mode, attempt, started, "bad_response")
            what = exc.message[:200] if isinstance(exc, openai.APIError) else type(exc).__name__
            raise _Charged(
                LLMUnavailable(f"LLM unavailable (bad response: {what})"), counts=True
            ) from None
        self._log_call(
            mode,
            attempt,
            started,
            "ok",
            prompt_tokens=answer.usage.prompt_tokens,
            completion_tokens=answer.usage.completion_tokens,
        )
        return answer

    async def _exchange(
        self,
        request_messages: list[ChatCompletionMessageParam],
        response_format: dict[str, Any] | None,
        max_tokens: int | None,
        timeout_s: float,
        streamed: list[str],
    ) -> _Answer:
        """One request and its whole answer; `streamed` collects text as it arrives."""
        common: dict[str, Any] = {
            "model": self._model,
            "messages": request_messages,
            "max_tokens": max_tokens if max_tokens is not None else openai.omit,
            "temperature": self._temperature if self._temperature is not None else openai.omit,
            "extra_body": {"response_format": response_format} if response_format else None,
            "timeout": timeout_s,
        }
        prompt_chars = sum(len(str(m.get("content", ""))) for m in request_messages)
        if not self._stream:
            completion = await self._openai.chat.completions.create(**common)
            if not _is_chat_completion(completion):
                # NOTE: the SDK builds responses without validating them.
                raise ValueError("not a chat completion")
            choice = completion.choices[0] if completion.choices else None
            content = (choice.message.content or "") if choice is not None else ""
            finish = str(choice.finish_reason) if choice is not None else ""
            usage = completion.usage
            return _Answer(
                content,
                finish,
                self._measured(
                    usage.prompt_tokens if usage else None,
                    usage.completion_tokens if usage else None,
                    prompt_chars,
                    content,
                    getattr(completion, "model", None),
                ),
            )
        stream = await self._openai.chat.completions.create(
            **common, stream=True, stream_options={"include_usage": True}
        )
        finish, model, length = "", None, 0
        cap = RUNAWAY_FACTOR * max_tokens * CHARS_PER_TOKEN if max_tokens else None
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        # NOTE: leaving this block, by timeout or cancellation too, closes the connection:
        # llama.cpp's server (and others) stop generating for a client that went away.
        async with stream:
            async for chunk in stream:
                if not isinstance(getattr(chunk, "choices", None), list):
                    # NOTE: the SDK builds chunks without validating them.
                    raise ValueError("not a chat completion chunk")
                model = getattr(chunk, "model", None) or model
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    prompt_tokens = _int_or_none(getattr(usage, "prompt_tokens", None))
                    completion_tokens = _int_or_none(getattr(usage, "completion_tokens", None))
                for choice in chunk.choices:
                    delta = getattr(getattr(choice, "delta", None), "content", None)
                    if delta is not None and not isinstance(delta, str):
                        raise ValueError("stream chunk content is not text")
                    if delta:
                        streamed.append(delta)
                        length += len(delta)
                    if getattr(choice, "finish_reason", None):
                        finish = str(choice.finish_reason)
                if cap is not None and length > cap:
                    # NOTE: a server that ignores max_tokens; stop reading, as it should have.
                    log.warning("llm_stream_over_max_tokens", model=self._model, chars=length)
                    finish = "length"
                    break
        content = "".join(streamed)
        return _Answer(
            content,
            finish,
            self._measured(prompt_tokens, completion_tokens, prompt_chars, content, model),
        )

    # -- bookkeeping -----------------------------------------------------------------------------

    def _measured(
        self,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        prompt_chars: int,
        content: str,
        model: object,
    ) -> LLMUsage:
        """Usage as the server reported it, else estimated; under the model the server named."""
        # NOTE: some servers omit usage; ~4 characters per token keeps budgets honest.
        prompt = prompt_tokens if prompt_tokens is not None else prompt_chars // CHARS_PER_TOKEN
        answer = (
            completion_tokens if completion_tokens is not None else len(content) // CHARS_PER_TOKEN
        )
        named = model if isinstance(model, str) and model.strip() else self._model
        return self._price(prompt, answer, named)

    def _price(self, prompt: int, answer: int, model: str) -> LLMUsage:
        cost = prompt / 1000 * self._price_prompt + answer / 1000 * self._price_completion
        return LLMUsage(model, prompt, answer, cost)

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
            latency_s=round(time.monotonic() - started, 4),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            outcome=outcome,
        )


class _Charged(Exception):
    """A failure not worth retrying; `counts`: it says the endpoint is in trouble (breaker)."""

    def __init__(self, error: LLMError, *, counts: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.counts = counts


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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


def _copy_feedback(copies: list[str]) -> str:
    return (
        "Your previous reply copied placeholders or text from the instructions instead of "
        "answering:\n"
        + "\n".join(f"- {c}" for c in copies[:_FEEDBACK_ERRORS])
        + "\nReply again with one JSON object whose values are your own answer for this request."
    )


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
