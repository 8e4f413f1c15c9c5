"""The quality benchmark's checkers: each decides, without an LLM, whether a SUCCEEDED task's
answer is right.

A checker sees `Evidence` (the task's answer text and its result outputs, as a client reads
them from GetTask) and returns a `Verdict`. Checkers are the benchmark's own correctness: each
is unit-tested with a hand-made right and wrong answer (tests/benchmarks/test_quality_bench.py).

- `FactsPresent`: every fact (one of its spellings, or a number) is in the answer text.
- `NotCovered`: a question the indexed documents do not answer: right only when the answer says
  so (or, where `topic` is given, actually explains the topic, as a model may from its own
  knowledge).
- `NumberPresent`: a known number is in the answer or the step outputs.
- `SecretsReported`: every planted kind of secret or PII is named (in the answer, or as a
  finding's `kind` in the outputs) and no planted value appears in the answer.
- `CodePasses`: some Python in the answer or outputs defines the function and passes the
  benchmark's unit tests, run in the executor arm's sandbox (`CodeRunner`).
- `ManifestMatches`: some YAML document in the answer or outputs is a Kubernetes object of the
  wanted kind whose fields have the wanted values.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml  # type: ignore[import-untyped, unused-ignore]

MAX_CANDIDATES = 6  # code or YAML snippets tried per answer


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a client reads of a SUCCEEDED task: the answer and every step's output."""

    answer: str
    outputs: Mapping[str, Any] = field(default_factory=dict)

    def outputs_text(self) -> str:
        return json.dumps(self.outputs, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A checker's decision and why, in a few words."""

    correct: bool
    why: str


class CodeRunner(Protocol):
    """Runs Python source in a sandbox: (exit code, stdout + stderr)."""

    async def run_python(self, source: str) -> tuple[int, str]: ...


class Checker(Protocol):
    """Decides whether a SUCCEEDED task's answer is right."""

    async def check(self, evidence: Evidence, runner: CodeRunner) -> Verdict: ...

    def inputs_leak(self, text: str) -> list[str]:
        """Expected facts found in `text` (the goal and its context): must be none, or an
        answer that merely copies the goal would pass."""
        ...


# -- text helpers -------------------------------------------------------------------------------

# A number standing alone: not part of a word, a version ("1.27.3") or an id ("HF-1140").
_NUMBER = re.compile(r"(?<![\w.-])-?\d+(?:\.\d+)?(?!\.?\w)")


def normalize(text: str) -> str:
    """Lower case, markdown emphasis and code ticks removed, whitespace collapsed."""
    text = re.sub(r"[*_`]+", " ", text.lower().replace("\u2019", "'"))
    return re.sub(r"\s+", " ", text).strip()


def numbers_in(text: str) -> list[float]:
    """Every number written in `text` (thousands separators "338,350" read as one number)."""
    joined = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    return [float(m) for m in _NUMBER.findall(joined)]


def _shown(value: float) -> str:
    return format(value, ".12g")


def has_number(text: str, value: float) -> bool:
    return any(math.isclose(n, value, rel_tol=1e-9, abs_tol=1e-9) for n in numbers_in(text))


@dataclass(frozen=True, slots=True)
class Fact:
    """One expected fact: any of `spellings` (case-insensitive), or the number `number`."""

    spellings: tuple[str, ...] = ()
    number: float | None = None

    def label(self) -> str:
        return self.spellings[0] if self.spellings or self.number is None else _shown(self.number)

    def found_in(self, text: str) -> bool:
        if self.number is not None and has_number(text, self.number):
            return True
        flat = normalize(text)
        return any(normalize(s) in flat for s in self.spellings)


def fact(*spellings: str) -> Fact:
    return Fact(spellings=spellings)


def number(value: float) -> Fact:
    return Fact(number=value)


# Phrases by which an answer says the documents do not cover the question.
NOT_FOUND = re.compile(
    r"not found in the (indexed )?documents|not (covered|mentioned|found|answered) (in|by)"
    r"|(could|can)(not| not|n't|'t) find|unable to find"
    r"|no (relevant )?(information|documents?|answer)"
    r"|(do|does)( ?no|n')t (contain|cover|mention|say)|(don't|do not) know|no mention"
    r"|nothing (in|about)",
)


def says_not_found(answer: str) -> bool:
    return bool(NOT_FOUND.search(normalize(answer)))


def _strings(value: object) -> Iterator[str]:
    """Every string inside a JSON-like value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def fenced_blocks(text: str) -> list[str]:
    """The bodies of the markdown code fences in `text`."""
    return [m.group(2) for m in _FENCE.finditer(text)]


def snippets(evidence: Evidence) -> list[str]:
    """Code-like texts of an answer: its fenced blocks and every string of the outputs (the
    fenced blocks of those that have any), then the answer itself; no duplicates."""
    found: list[str] = []
    for text in (evidence.answer, *_strings(evidence.outputs)):
        blocks = fenced_blocks(text)
        found.extend(blocks if blocks else [text])
    found.append(evidence.answer)
    unique: list[str] = []
    for text in found:
        text = text.strip("\n")
        if text.strip() and text not in unique:
            unique.append(text)
    return unique


# -- checkers -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FactsPresent:
    """Every fact is in the answer text (a retrieval or multi-part question)."""

    facts: tuple[Fact, ...]

    async def check(self, evidence: Evidence, runner: CodeRunner) -> Verdict:
        missing = [f.label() for f in self.facts if not f.found_in(evidence.answer)]
        if missing:
            return Verdict(False, "answer lacks " + ", ".join(repr(m) for m in missing))
        return Verdict(True, f"answer has all {len(self.facts)} fact(s)")

    def inputs_leak(self, text: str) -> list[str]:
        return [f.label() for f in self.facts if f.found_in(text)]


@dataclass(frozen=True, slots=True)
class NotCovered:
    """A question the documents do not answer: the answer must say it was not found there, or
    (with `topic`: groups of words, one of each group present) explain the topic itself."""

    topic: tuple[tuple[str, ...], ...] = ()

    async def check(self, evidence: Evidence, runner: CodeRunner) -> Verdict:
        if says_not_found(evidence.answer):
            return Verdict(True, "says the documents do not cover it")
        flat = normalize(evidence.answer)
        if self.topic and all(any(w in flat for w in group) for group in self.topic):
            return Verdict(True, "explains the topic")
        return Verdict(False, "answers from documents that do not cover the question")

    def inputs_leak(self, text: str) -> list[str]:
        flat = normalize(text)
        if self.topic and all(any(w in flat for w in group) for group in self.topic):
            return ["topic words"]
        return ["not-found phrase"] if says_not_found(text) else []


@dataclass(frozen=True, slots=True)
class NumberPresent:
    """The known number is in the answer, or in a step output (a computation's stdout)."""

    value: float

    async def check(self, evidence: Evidence, runner: CodeRunner) -> Verdict:
        shown = _shown(self.value)
        if has_number(evidence.answer, self.value):
            return Verdict(True, f"answer has {shown}")
        if has_number(evidence.outputs_text(), self.value):
            return Verdict(True, f"outputs have {shown}")
        return Verdict(False, f"{shown} is in neither the answer nor the outputs")

    def inputs_leak(self, text: str) -> list[str]:
        return [_shown(self.value)] if has_number(text, self.value) else []


def _finding_kinds(outputs: Mapping[str, Any]) -> set[str]:
    """The `kind` of every finding in the outputs (the safety arm's report)."""
    kinds: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, Mapping):
            findings = value.get("findings")
            if isinstance(findings, list):
                for item in findings:
                    if isinstance(item, Mapping) and isinstance(item.get("kind"), str):
                        kinds.add(item["kind"].upper())
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(outputs)
    return kinds


@dataclass(frozen=True, slots=True)
class SecretsReported:
    """Every planted kind is reported and no planted value is in the answer.

    `kinds` maps a finding kind (the safety arm's name, e.g. CREDIT_CARD) to other names an
    answer may use for it; `values` are the planted secrets as written in the input."""

    kinds: Mapping[str, tuple[str, ...]]
    values: tuple[str, ...]

    def _named(self, kind: str, answer: str, reported: set[str]) -> bool:
        """`kind` (or another name of it) is in the answer or in a reported finding's kind."""
        texts = [normalize(answer), *(normalize(k) for k in reported)]
        return any(normalize(n) in t for n in (kind, *self.kinds[kind]) for t in texts)

    async def check(self, evidence: Evidence, runner: CodeRunner) -> Verdict:
        leaked = [v for v in self.values if _contains_value(evidence.answer, v)]
        if leaked:
            return Verdict(False, f"answer repeats {len(leaked)} planted secret(s)")
        reported = _finding_kinds(evidence.outputs)
        missing = [k for k in self.kinds if not self._named(k, evidence.answer, reported)]
        if missing:
            return Verdict(False, "not reported: " + ", ".join(missing))
        return Verdict(True, "all kinds reported, no value repeated")

    def inputs_leak(self, text: str) -> list[str]:
        # NOTE: a text holding a planted value can name the kinds: an answer copying it fails
        # for repeating the value.
        if any(_contains_value(text, v) for v in self.values):
            return []
        return [k for k in self.kinds if self._named(k, text, set())]


def _contains_value(text: str, value: str) -> bool:
    """`value` is in `text`, also with its spaces and dashes dropped (a card number)."""
    if value in text:
        return True
    squeeze = re.sub(r"[\s-]", "", value)
    return len(squeeze) >= 8 and squeeze in re.sub(r"[\s-]", "", text)


# A stand-in for the few pytest names generated test code uses at import time (the sandbox runs
# `python -I -S`: no site-packages). Only the benchmark's own tests below it are run.
PYTEST_SHIM = """
import sys as _sys, types as _types, math as _math

class _Raises:
    def __init__(self, expected, *args, match=None, **kwargs):
        self.expected = expected
    def __enter__(self):
        return self
    def __exit__(self, kind, value, tb):
        if kind is None:
            raise AssertionError("DID NOT RAISE")
        return issubclass(kind, self.expected)

class _Approx:
    def __init__(self, expected, rel=1e-6, abs=1e-12):
        self.expected, self.rel, self.abs = expected, rel, abs
    def __eq__(self, other):
        return _math.isclose(other, self.expected, rel_tol=self.rel, abs_tol=self.abs)

class _Decorator:
    def __call__(self, *args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return self
    def __getattr__(self, name):
        return _Decorator()

_pytest = _types.ModuleType("pytest")
_pytest.raises = _Raises
_pytest.approx = _Approx
_pytest.mark = _Decorator()
_pytest.fixture = _Decorator()
_pytest.main = lambda *args, **kwargs: 0
_sys.modules["pytest"] = _pytest
"""


def tests_program(candidate: str, function: str, tests: str, marker: str) -> str:
    """A program that defines `candidate` in a namespace of its own (its `__main__` block does
    not run), binds `function` from it, runs `tests` and prints `marker` if they all pass."""
    return (
        f"{PYTEST_SHIM}\n"
        "_candidate = {'__name__': 'candidate'}\n"
        f"exec(compile({candidate!r}, 'candidate.py', 'exec'), _candidate)\n"
        f"{function} = _candidate[{function!r}]\n"
        f"{tests}\n"
        f"print({marker!r})\n"
    )


@dataclass(frozen=True, slots=True)
class CodePasses:
    """Some Python of the answer defines `function` and passes `tests` (plain asserts that call
    it), run in the executor's sandbox."""

    function: str
    tests: str

    async def check(self, evidence: Evidence, runner: CodeRunner) -> Verdict:
        definition = re.compile(rf"^\s*def {re.escape(self.function)}\s*\(", re.MULTILINE)
        candidates = [s for s in snippets(evidence) if definition.search(s)][:MAX_CANDIDATES]
        if not candidates:
            return Verdict(False, f"no code defines {self.function}()")
        last = ""
        for candidate in candidates:
            marker = f"QUALITY-TESTS-PASSED-{secrets.token_hex(8)}"
            exit_code, output = await runner.run_python(
                tests_program(candidate, self.function, self.tests, marker)
            )
            if exit_code == 0 and marker in output:
                return Verdict(True, f"{self.function}() passes the benchmark's tests")
            last = output.strip().splitlines()[-1] if output.strip() else f"exit {exit_code}"
        return Verdict(False, f"{self.function}() fails the tests: {last[:120]}")

    def inputs_leak(self, text: str) -> list[str]:
        return []


def yaml_documents(evidence: Evidence) -> list[Mapping[str, Any]]:
    """Every YAML mapping that parses out of the answer's and outputs' code-like texts."""
    found: list[Mapping[str, Any]] = []
    for text in snippets(evidence):
        try:
            documents = list(yaml.safe_load_all(text))
        except yaml.YAMLError:
            continue
        found.extend(d for d in documents if isinstance(d, Mapping))
    return found


def dig(document: object, path: str) -> list[object]:
    """The values at a dotted `path` ("spec.template.spec.containers.image"), descending into
    every item of a list on the way."""
    values: list[object] = [document]
    for key in path.split("."):
        step: list[object] = []
        for value in values:
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, Mapping) and key in item:
                    step.append(item[key])
        values = step
    flat: list[object] = []
    for value in values:
        flat.extend(value if isinstance(value, list) else [value])
    return flat


@dataclass(frozen=True, slots=True)
class ManifestMatches:
    """A YAML document of `kind` in which every `fields` path has (among its values) the wanted
    value; a path listed with alternatives `a|b` may match at either."""

    kind: str
    fields: Mapping[str, object]

    def _mismatches(self, document: Mapping[str, Any]) -> list[str]:
        wrong = []
        for paths, want in self.fields.items():
            got = [v for p in paths.split("|") for v in dig(document, p)]
            if not any(_same(v, want) for v in got):
                wrong.append(f"{paths}={want!r}")
        return wrong

    async def check(self, evidence: Evidence, runner: CodeRunner) -> Verdict:
        documents = [d for d in yaml_documents(evidence) if d.get("kind") == self.kind]
        if not documents:
            return Verdict(False, f"no YAML document of kind {self.kind}")
        best = min((self._mismatches(d) for d in documents), key=len)
        if best:
            return Verdict(False, f"{self.kind} lacks " + ", ".join(best))
        return Verdict(True, f"{self.kind} with every wanted field")

    def inputs_leak(self, text: str) -> list[str]:
        return []


def _same(got: object, want: object) -> bool:
    if isinstance(want, int | float) and not isinstance(want, bool):
        try:
            return float(str(got).rstrip("%")) == float(want)
        except ValueError:
            return False
    return str(got).strip() == str(want)


__all__: Sequence[str] = (
    "Checker",
    "CodePasses",
    "CodeRunner",
    "Evidence",
    "Fact",
    "FactsPresent",
    "ManifestMatches",
    "NotCovered",
    "NumberPresent",
    "SecretsReported",
    "Verdict",
    "fact",
    "number",
)
