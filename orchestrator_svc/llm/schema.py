"""JSON Schema as sent on the wire, and JSON as found in model replies."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)
_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


def wire_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """`schema` with every local `$ref` inlined and `$defs` removed.

    NOTE: grammar-constrained servers (llama.cpp, older vLLM/outlines) resolve `$ref` unevenly;
    a self-contained schema works everywhere. The brain's models are not recursive.
    """
    defs: Mapping[str, Any] = schema.get("$defs", {}) or schema.get("definitions", {})

    def resolve(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, Mapping):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/")):
                name = ref.rsplit("/", 1)[1]
                if name in seen or name not in defs:
                    return {}
                extra = {k: v for k, v in node.items() if k != "$ref"}
                return {**resolve(defs[name], seen | {name}), **resolve(extra, seen)}
            return {
                k: resolve(v, seen) for k, v in node.items() if k not in ("$defs", "definitions")
            }
        if isinstance(node, list):
            return [resolve(v, seen) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema, frozenset())
    return resolved


def schema_name(name: str) -> str:
    """A name OpenAI accepts for `json_schema.name` (^[a-zA-Z0-9_-]{1,64}$)."""
    return (_NAME_CHARS.sub("_", name) or "result")[:64]


def json_text(content: str) -> str:
    """The JSON object inside a model reply: code fences and chatter around it are dropped."""
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    if not text.startswith("{"):
        start, end = text.find("{"), text.rfind("}")
        if 0 <= start < end:
            text = text[start : end + 1]
    return text
