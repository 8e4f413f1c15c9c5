"""JSON Schema as sent on the wire, and JSON as found in model replies."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)
_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
# Bounds a grammar compiler turns into repetitions or cannot compile: llama.cpp fails on a string
# maxLength above ~1000 ("failed to parse grammar") and its server then segfaults.
WIRE_BOUND_KEYWORDS = frozenset(
    {
        "maxLength",
        "minLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "maxItems",
        "minItems",
        "uniqueItems",
        "maxProperties",
        "minProperties",
    }
)


def wire_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """`schema` as sent to a server: every local `$ref` inlined, `$defs` removed, and no bounds
    (`WIRE_BOUND_KEYWORDS`: string lengths, patterns, numeric and item-count limits).

    NOTE: grammar-constrained servers (llama.cpp, older vLLM/outlines) resolve `$ref` unevenly
    and compile bounds into grammars that blow up; a self-contained, unbounded schema works
    everywhere. The caller validates the reply with the full pydantic model, bounds included.
    The brain's models are not recursive.
    """
    defs: Mapping[str, Any] = schema.get("$defs", {}) or schema.get("definitions", {})

    def resolve(node: Any, seen: frozenset[str], names: bool = False) -> Any:
        if isinstance(node, Mapping):
            if names:  # the keys of `properties` are field names, not keywords
                return {k: resolve(v, seen) for k, v in node.items()}
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/")):
                name = ref.rsplit("/", 1)[1]
                if name in seen or name not in defs:
                    return {}
                extra = {k: v for k, v in node.items() if k != "$ref"}
                return {**resolve(defs[name], seen | {name}), **resolve(extra, seen)}
            return {
                k: resolve(v, seen, names=k in ("properties", "patternProperties"))
                for k, v in node.items()
                if k not in ("$defs", "definitions") and k not in WIRE_BOUND_KEYWORDS
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
