"""A real, tiny OpenAI-compatible HTTP server for tests: scriptable replies, recorded requests.

It speaks just enough HTTP/1.1 (request line, headers, Content-Length body; one request per
connection, answered with `Connection: close`) for `openai.AsyncOpenAI` to talk to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP answer."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def completion(
    content: Any,
    *,
    prompt_tokens: int = 11,
    completion_tokens: int = 7,
    finish_reason: str = "stop",
    model: str = "fake-model",
) -> Reply:
    """A chat completion whose message content is `content` (dicts and lists become JSON)."""
    text = content if isinstance(content, str) else json.dumps(content)
    return Reply(
        body={
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def error(status: int, message: str, *, headers: dict[str, str] | None = None) -> Reply:
    """An OpenAI-style error body with `status`."""
    return Reply(
        status=status,
        body={"error": {"message": message, "type": "invalid_request_error", "code": None}},
        headers=headers or {},
    )


Script = Sequence[Reply] | Callable[[dict[str, Any], int], Reply]

_REASONS = {200: "OK", 400: "Bad Request", 422: "Unprocessable Entity", 429: "Too Many Requests"}


class FakeOpenAI:
    """Serves `/v1/chat/completions` (and `/v1/models`) from a script.

    `script` is either a list of replies (served in order; the last one repeats forever) or a
    function of (request JSON body, request index) returning the reply. `/v1/models` lists
    `model_ids`, or answers `models_reply` when one is set (e.g. an error while "down");
    `model_checks` counts those requests.
    """

    def __init__(self, script: Script) -> None:
        self._script = script
        self.requests: list[dict[str, Any]] = []
        self.model_ids: list[str] = ["fake-model"]
        self.models_reply: Reply | None = None
        self.model_checks = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeOpenAI:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers))
        if self._server is not None:
            await self._server.wait_closed()

    def _reply_for(self, body: dict[str, Any]) -> Reply:
        index = len(self.requests)
        self.requests.append(body)
        if callable(self._script):
            return self._script(body, index)
        return self._script[min(index, len(self._script) - 1)]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request_line = await reader.readline()
            if not request_line:
                return
            method, path, _ = request_line.decode("latin-1").split(" ", 2)
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            if method == "GET" and path.endswith("/models"):
                self.model_checks += 1
                reply = self.models_reply or Reply(
                    body={
                        "object": "list",
                        "data": [{"id": m, "object": "model"} for m in self.model_ids],
                    }
                )
            else:
                reply = self._reply_for(json.loads(raw) if raw else {})
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            payload = (
                reply.body.encode()
                if isinstance(reply.body, str)
                else json.dumps(reply.body).encode()
            )
            head = [
                f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}",
                "Content-Type: application/json",
                f"Content-Length: {len(payload)}",
                "Connection: close",
                *(f"{k}: {v}" for k, v in reply.headers.items()),
            ]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def refused_base_url() -> str:
    """A base URL on a loopback port where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
