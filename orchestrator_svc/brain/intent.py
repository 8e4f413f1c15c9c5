"""Intent parsing: a goal (+ constraints, context) becomes a `ParsedIntent`.

`HeuristicIntentParser` is deterministic and offline: the domain comes from weighted keyword and
technology sets, the complexity from length, sentences, action verbs, sequencing words and
constraints; keywords are the most frequent content words; entities are found by regex. The
`LLMIntentParser` asks a model for the same fields (schema-validated) and keeps the user's goal
and constraints verbatim: they are the contract, a rewording could lose a detail. Of the model's
constraints, keywords and entities only those found in the goal are kept (a model invents
constraints and copies examples; neither may become part of the task's contract).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..llm import NO_LIMITS, CallLimits, JSONCompleter, LLMUsage
from ..llm.copies import DATA_RULE, fenced
from .lexicon import (
    ACTION_VERBS,
    DOMAIN_TERMS,
    EXTENSION_DOMAIN,
    EXTENSION_TECH,
    FILE_EXTENSIONS,
    SEQUENCE_WORDS,
    TECHNOLOGIES,
    Domain,
)
from .words import STOPWORDS, is_content, top_terms, words

Complexity = Literal["simple", "medium", "complex"]
DOMAINS: tuple[Domain, ...] = ("code", "security", "data", "infrastructure", "general")
ENTITY_KINDS = ("files", "functions", "technologies", "urls")


class ParsedIntent(BaseModel):
    """What the user wants, in a shape the planner can act on."""

    model_config = ConfigDict(frozen=True)

    goal: str
    constraints: list[str] = []
    domain: Domain = "general"
    complexity: Complexity = "medium"
    keywords: list[str] = []
    entities: dict[str, list[str]] = {}

    @field_validator("entities")
    @classmethod
    def _every_kind(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return {**{kind: [] for kind in ENTITY_KINDS}, **value}


_MIN_DOMAIN_SCORE = 2.0
_TECH_DOMAIN_WEIGHT = 1.5
_EXTENSION_WEIGHT = 3.0

# -- entities ----------------------------------------------------------------------------------

_URL = re.compile(r"https?://[^\s<>\"'`)\]]+", re.IGNORECASE)
_FILE_EXTENSIONS = "|".join(sorted(FILE_EXTENSIONS, key=len, reverse=True))
_FILE = re.compile(
    rf"(?<![\w/.@-])(?:~?/)?(?:[\w.-]+/)*[\w-][\w.-]*\.(?:{_FILE_EXTENSIONS})(?![\w/-])",
    re.IGNORECASE,
)
_BARE_FILE = re.compile(r"(?<![\w/.-])(?:[\w.-]+/)*(?:Dockerfile|Makefile|Jenkinsfile)\b")
_FUNCTION = re.compile(r"(?<![\w.])([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)\([^()\s]{0,40}\)")

# -- complexity --------------------------------------------------------------------------------

_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_CONSTRAINT_START = re.compile(
    r"^(?:don'?t|do not|never|must|must not|mustn'?t|should not|shouldn'?t|cannot|can'?t|"
    r"avoid|only|keep|ensure|make sure|without|no |within|under|limit|stay|preserve|"
    r"use only|it must|it should)",
    re.IGNORECASE,
)
_SIMPLE_BELOW = 1.0
_COMPLEX_FROM = 3.5
_CHAIN_WORDS = frozenset({"and", "or", "then"})


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9+#])")


_DOMAIN_PATTERNS = {
    domain: [(_phrase_pattern(term), weight) for term, weight in terms.items()]
    for domain, terms in DOMAIN_TERMS.items()
}
_TECH_PATTERNS = [
    (name, [_phrase_pattern(s) for s in spellings], domain)
    for name, (spellings, domain) in TECHNOLOGIES.items()
]


def sentences(text: str) -> list[str]:
    """The sentences of `text` (file names like a.py do not end one)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def extract_entities(text: str, context: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """Files, functions, technologies and URLs mentioned in `text` (and listed in `context`)."""
    urls = list(dict.fromkeys(u.rstrip(".,;:!?") for u in _URL.findall(text)))
    without_urls = _URL.sub(" ", text)
    files = list(
        dict.fromkeys(
            m.group(0).rstrip(".")
            for pattern in (_FILE, _BARE_FILE)
            for m in pattern.finditer(without_urls)
        )
    )
    functions = list(dict.fromkeys(m.group(1) for m in _FUNCTION.finditer(without_urls)))
    lowered = without_urls.lower()
    technologies = [
        name for name, patterns, _ in _TECH_PATTERNS if any(p.search(lowered) for p in patterns)
    ]
    for file in files:
        ext = file.rsplit(".", 1)[-1].lower() if "." in file else ""
        tech = EXTENSION_TECH.get(ext) or ("Docker" if file.endswith("Dockerfile") else None)
        if tech and tech not in technologies:
            technologies.append(tech)
    entities = {"files": files, "functions": functions, "technologies": technologies, "urls": urls}
    for kind in ENTITY_KINDS:
        given = (context or {}).get(kind)
        if isinstance(given, list):
            entities[kind] = list(dict.fromkeys([*entities[kind], *map(str, given)]))
    return entities


def keyword_words(text: str) -> list[str]:
    """Content words of `text` minus the imperative verbs that open a sentence ("Find and fix")."""
    found: list[str] = []
    for sentence in sentences(text):
        tokens = words(sentence)
        start = 0
        if tokens and tokens[0] in ACTION_VERBS | STOPWORDS:
            start = 1
            while (
                start + 1 < len(tokens)
                and tokens[start] in _CHAIN_WORDS
                and tokens[start + 1] in ACTION_VERBS
            ):
                start += 2
        found.extend(t for t in tokens[start:] if is_content(t))
    return found


def domain_scores(text: str, entities: Mapping[str, Sequence[str]]) -> dict[Domain, float]:
    """Weighted evidence for each domain (general is what is left when nothing scores)."""
    lowered = text.lower()
    scores: dict[Domain, float] = {
        domain: sum(weight * len(p.findall(lowered)) for p, weight in patterns)
        for domain, patterns in _DOMAIN_PATTERNS.items()
    }
    tech_domains = {name: domain for name, _, domain in _TECH_PATTERNS}
    for tech in entities.get("technologies", ()):
        leaning = tech_domains.get(tech)
        if leaning is not None:
            scores[leaning] += _TECH_DOMAIN_WEIGHT
    for file in entities.get("files", ()):
        leaning = EXTENSION_DOMAIN.get(file.rsplit(".", 1)[-1].lower())
        if leaning is not None:
            scores[leaning] += _EXTENSION_WEIGHT
    return scores


def complexity_score(goal: str, constraints: Sequence[str]) -> float:
    """Evidence of many steps: length, sentences, list items, actions, sequencing, constraints."""
    tokens = re.findall(r"[a-z']+", goal.lower())
    score = 0.0
    score += 1.0 if len(tokens) > 40 else 0.0
    score += 1.0 if len(tokens) > 100 else 0.0
    score += 0.5 * max(0, len(sentences(goal)) - 1)
    score += 0.75 * len(_LIST_ITEM.findall(goal))
    score += sum(SEQUENCE_WORDS.get(t, 0.0) for t in tokens)
    score += 0.5 * max(0, len({t for t in tokens if t in ACTION_VERBS}) - 1)
    score += 0.5 * len(constraints)
    return score


def complexity_of(score: float) -> Complexity:
    if score < _SIMPLE_BELOW:
        return "simple"
    return "medium" if score < _COMPLEX_FROM else "complex"


class HeuristicIntentParser:
    """Deterministic, offline intent parsing; see the module docstring."""

    def __init__(self, keyword_limit: int = 8) -> None:
        self._keyword_limit = keyword_limit

    def parse(
        self,
        goal: str,
        constraints: Sequence[str] = (),
        context: Mapping[str, Any] | None = None,
    ) -> ParsedIntent:
        goal = goal.strip()
        parts = sentences(goal)
        stated = [s for s in parts[1:] if _CONSTRAINT_START.match(s)] if len(parts) > 1 else []
        all_constraints = list(
            dict.fromkeys([*(c.strip() for c in constraints if c.strip()), *stated])
        )
        entities = extract_entities(goal, context)
        hinted = (context or {}).get("domain")
        if hinted in DOMAINS:
            domain: Domain = hinted
        else:
            scores = domain_scores(_URL.sub(" ", goal), entities)
            best = max(scores, key=lambda d: scores[d])  # first wins ties: dict order
            domain = best if scores[best] >= _MIN_DOMAIN_SCORE else "general"
        keyword_text = _FILE.sub(" ", _URL.sub(" ", goal))
        return ParsedIntent(
            goal=goal,
            constraints=all_constraints,
            domain=domain,
            complexity=complexity_of(complexity_score(goal, all_constraints)),
            keywords=top_terms(keyword_words(keyword_text), self._keyword_limit),
            entities=entities,
        )


# -- LLM -------------------------------------------------------------------------------------


class _EntitiesDraft(BaseModel):
    files: list[str] = Field(default=[], max_length=20)
    functions: list[str] = Field(default=[], max_length=20)
    technologies: list[str] = Field(default=[], max_length=20)
    urls: list[str] = Field(default=[], max_length=20)


class IntentDraft(BaseModel):
    """What the LLM is asked for (the goal and the user's constraints are kept verbatim)."""

    constraints: list[str] = Field(default=[], max_length=20)
    domain: Domain
    complexity: Complexity
    keywords: list[str] = Field(default=[], max_length=12)
    entities: _EntitiesDraft = _EntitiesDraft()


INTENT_SYSTEM_PROMPT = f"""You are the intent parser of OctoLLM, a mesh of specialist AI arms.
{DATA_RULE}
Describe the request between <<<REQUEST and >>>REQUEST as one JSON object with these fields:
- constraints: hard requirements the request itself states (time, cost, safety, scope), each
  quoted from the request; an empty list when it states none
- domain: the primary domain of the request: code, security, data, infrastructure or general
- complexity: simple (1 or 2 steps of work), medium (3 to 5) or complex (6 or more)
- keywords: at most 8 important terms that appear in the request, no filler words
- entities: the files, functions, technologies and urls the request names, one list per kind;
  an empty list for a kind it does not name
Take every constraint, keyword and entity from the request; never add one it does not contain."""


def intent_user_prompt(
    goal: str, constraints: Sequence[str], context: Mapping[str, Any] | None
) -> str:
    lines = [fenced("request", goal)]
    if constraints:
        lines.append("Constraints given with the request:")
        lines.append(fenced("constraints", "\n".join(f"- {c}" for c in constraints)))
    if context:
        keys = ", ".join(sorted(str(k) for k in context)[:20])
        lines.append(f"Context keys provided: {keys}")
    return "\n".join(lines)


def _in_goal(value: str, goal: str) -> bool:
    return bool(value) and " ".join(value.lower().split()) in " ".join(goal.lower().split())


def grounded(draft: IntentDraft, goal: str, context: Mapping[str, Any] | None) -> IntentDraft:
    """`draft` without what the request does not contain: constraints not quoted from the goal
    (a model invents them, or copies letters), keywords and entities it does not mention
    (entities listed in the context count as mentioned)."""
    listed = " ".join(
        str(v) for kind in ENTITY_KINDS for v in ((context or {}).get(kind) or ()) if v
    )
    source = f"{goal} {listed}"
    entities = {
        kind: [v.strip() for v in getattr(draft.entities, kind) if _in_goal(v.strip(), source)]
        for kind in ENTITY_KINDS
    }
    return IntentDraft(
        constraints=[
            c.strip() for c in draft.constraints if len(c.split()) >= 2 and _in_goal(c, goal)
        ],
        domain=draft.domain,
        complexity=draft.complexity,
        keywords=[k.strip() for k in draft.keywords if _in_goal(k.strip(), goal)],
        entities=_EntitiesDraft(**entities),
    )


class LLMIntentParser:
    """Intent parsing by an LLM; raises `LLMError` when the model cannot answer validly."""

    def __init__(self, client: JSONCompleter, *, max_tokens: int = 512) -> None:
        self._client = client
        self._max_tokens = max_tokens

    async def parse(
        self,
        goal: str,
        constraints: Sequence[str] = (),
        context: Mapping[str, Any] | None = None,
        *,
        limits: CallLimits = NO_LIMITS,
    ) -> tuple[ParsedIntent, LLMUsage]:
        draft, usage = await self._client.complete_json(
            system=INTENT_SYSTEM_PROMPT,
            user=intent_user_prompt(goal, constraints, context),
            schema=IntentDraft,
            max_tokens=self._max_tokens,
            limits=limits,
        )
        draft = grounded(draft, goal, context)
        given = [c.strip() for c in constraints if c.strip()]
        merged = list(dict.fromkeys([*given, *draft.constraints]))
        keywords = list(dict.fromkeys(k.strip().lower() for k in draft.keywords if k.strip()))
        intent = ParsedIntent(
            goal=goal.strip(),
            constraints=merged,
            domain=draft.domain,
            complexity=draft.complexity,
            keywords=keywords,
            entities=draft.entities.model_dump(),
        )
        return intent, usage
