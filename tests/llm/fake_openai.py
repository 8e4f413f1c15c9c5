"""A real, tiny OpenAI-compatible HTTP server for tests: scriptable replies, recorded requests.

It speaks just enough HTTP/1.1 (request line, headers, Content-Length body; one request per
connection, answered with `Connection: close`) for `openai.AsyncOpenAI` to talk to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP answer.

    To a streamed request (`"stream": true`) a chat completion is sent as server-sent events,
    its content in pieces `chunk_delay_s` apart (`endless`: the content again and again, a
    runaway generation, until the client goes away)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    endless: bool = False


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
        self.disconnects = 0  # streams the client closed before the answer was over
        self.streams_open = 0
        self.most_streams_open = 0
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

    async def _stream(
        self, writer: asyncio.StreamWriter, reply: Reply, request: dict[str, Any]
    ) -> None:
        head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        writer.write(head.encode("latin-1"))
        self.streams_open += 1
        self.most_streams_open = max(self.most_streams_open, self.streams_open)
        try:
            for event in _events(reply, request):
                writer.write(f"data: {event}\n\n".encode())
                await writer.drain()
                if reply.chunk_delay_s:
                    await asyncio.sleep(reply.chunk_delay_s)
                if writer.is_closing() or writer.transport.get_write_buffer_size() > 1 << 16:
                    raise ConnectionResetError
        except ConnectionError:
            self.disconnects += 1
        finally:
            self.streams_open -= 1

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
            body = json.loads(raw) if raw and method == "POST" else {}
            if method == "GET" and path.endswith("/models"):
                self.model_checks += 1
                reply = self.models_reply or Reply(
                    body={
                        "object": "list",
                        "data": [{"id": m, "object": "model"} for m in self.model_ids],
                    }
                )
            else:
                reply = self._reply_for(body)
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            if body.get("stream") and reply.status == 200:
                await self._stream(writer, reply, body)
                return
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


def _events(reply: Reply, request: dict[str, Any]) -> Iterator[str]:
    """The server-sent events of `reply` (a chat completion, or any other body as one event)."""
    body = reply.body
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        yield body if isinstance(body, str) else json.dumps(body)
        return
    choice = choices[0]
    raw = (choice.get("message") or {}).get("content")
    base = {k: body[k] for k in ("id", "created", "model") if k in body}
    base["object"] = "chat.completion.chunk"

    def chunk(delta: dict[str, Any], finish: str | None) -> str:
        piece = {"index": 0, "delta": delta, "finish_reason": finish}
        return json.dumps({**base, "choices": [piece]})

    yield chunk({"role": "assistant", "content": ""}, None)
    if raw is not None and not isinstance(raw, str):
        yield chunk({"content": raw}, None)  # as wrong as the scripted body
    content = raw if isinstance(raw, str) else ""
    while True:
        for start in range(0, len(content), 16):
            yield chunk({"content": content[start : start + 16]}, None)
        if not reply.endless:
            break
    yield chunk({}, str(choice.get("finish_reason") or "stop"))
    if (request.get("stream_options") or {}).get("include_usage") and "usage" in body:
        yield json.dumps({**base, "choices": [], "usage": body["usage"]})
    yield "[DONE]"


def refused_base_url() -> str:
    """A base URL on a loopback port where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
