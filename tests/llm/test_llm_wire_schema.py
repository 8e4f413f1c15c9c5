"""Wire schemas: what grammar-constrained servers (llama.cpp, vLLM guided decoding, Ollama) get.

llama.cpp's grammar compiler fails on string `maxLength` above ~1000 and the server then
segfaults; bounds are enforced locally by pydantic instead, so none may reach the wire.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator_svc.arms.coder import CodeDraft
from orchestrator_svc.brain.integrate import _AnswerDraft
from orchestrator_svc.brain.intent import IntentDraft
from orchestrator_svc.brain.planner import plan_json_schema
from orchestrator_svc.brain.validate import _Verdicts
from orchestrator_svc.llm.schema import WIRE_BOUND_KEYWORDS, wire_schema

RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "intent": IntentDraft.model_json_schema(),
    "plan": plan_json_schema(["coder", "retriever"]),
    "integrate": _AnswerDraft.model_json_schema(),
    "validate/judge": _Verdicts.model_json_schema(),
    "coder": CodeDraft.model_json_schema(),
}


def keywords(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, keyword) for every schema keyword in `node`, properties' names excluded."""
    if isinstance(node, dict):
        for key, value in node.items():
            if path.endswith("/properties"):
                yield from keywords(value, f"{path}/{key}")
                continue
            yield path, key
            yield from keywords(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from keywords(value, f"{path}/{i}")


@pytest.mark.parametrize("step", sorted(RESPONSE_SCHEMAS))
def test_wire_schemas_of_every_llm_step_carry_no_length_bounds(step: str) -> None:
    """The schema sent for each brain step and LLM arm has no string bounds, pattern or $ref."""
    sent = wire_schema(RESPONSE_SCHEMAS[step])
    found = [(p, k) for p, k in keywords(sent) if k in WIRE_BOUND_KEYWORDS or k == "$ref"]
    assert found == []
    assert sent["type"] == "object"
    assert sent["properties"]


def test_the_coder_schema_had_the_bounds_that_crash_llama_cpp() -> None:
    """The local schema keeps maxLength 200000 (pydantic enforces it); the wire one drops it."""
    local = [k for _, k in keywords(CodeDraft.model_json_schema())]
    assert "maxLength" in local
    assert "maxLength" not in [k for _, k in keywords(wire_schema(CodeDraft.model_json_schema()))]


def test_wire_schema_keeps_structure_enums_and_required() -> None:
    """Types, enums, required fields and descriptions survive; only the bounds go."""

    class Draft(BaseModel):
        kind: str
        count: int

    schema = Draft.model_json_schema()
    schema["properties"]["kind"].update(enum=["a", "b"], maxLength=5000, pattern="^[ab]$")
    schema["properties"]["count"].update(minimum=0, maximum=10)
    sent = wire_schema(schema)
    assert sent["properties"]["kind"] == {"enum": ["a", "b"], "title": "Kind", "type": "string"}
    assert sent["properties"]["count"] == {"title": "Count", "type": "integer"}
    assert sent["required"] == ["kind", "count"]


def test_a_property_named_like_a_keyword_is_kept() -> None:
    """A field called `pattern` or `maxLength` is data, not a bound: it stays in properties."""
    schema = {
        "type": "object",
        "properties": {"pattern": {"type": "string", "maxLength": 9000}},
        "required": ["pattern"],
    }
    assert wire_schema(schema)["properties"] == {"pattern": {"type": "string"}}
