"""Whether retrieved text covers a goal, and the offline answer quoted from it.

A goal is cut into parts (at "?", ";", ":", sentence ends, commas, and "and" before a question
word); a part's terms are its content words, without stop words and without the words that say
how to answer rather than what ("explain", "difference", "briefly", ...), reduced to crude
roots. Paragraphs of the retrieved passages are chosen greedily, the one adding the most goal
terms not yet found first, then any other paragraph covering half of a part's terms (the one
naming every term of a question need not hold its answer), at most `MAX_PARAGRAPHS`, and quoted
exactly as indexed. A part is
covered when at least half of its terms appear in the chosen paragraphs (headings included) or
in the text of steps that served it otherwise (a program that computed what the goal asks);
the goal is covered when every part with terms is. A part asking who, when or how many (or
much, long) is covered only by a paragraph that also holds what it asks for, a name, a time or
a number the goal does not already give: a paragraph that merely names the subject is no
answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .lexicon import names
from .words import STOPWORDS, stem

FROM_DOCUMENTS = "From the indexed documents (no model wrote this answer{note}):"
NOT_FOUND = "not found in the indexed documents"
MAX_PARAGRAPHS = 4
COVERED_SHARE = 0.5

# Words that say how to answer, not what about: they never need covering.
FILLER = names(
    """answer answers question questions goal task tasks explain explains explained describe
    describes difference differences differ different compare compared comparison versus vs
    between list lists summarize summarise summary overview write written short shorter brief
    briefly concise concisely keep keeps keeping sure making nothing left find tell show give
    based work works mean means happen happens really simple simply detail detailed please
    note notes provide report review many much one two three four five six seven eight nine
    ten several following"""
)

_TERM = re.compile(r"[a-z0-9]+")
_PART_BREAK = re.compile(
    r"[?;:\n]+|\.\s+|,\s*|\s+and\s+(?=(?:how|what|why|when|where|which|who|whether)\b)",
    re.IGNORECASE,
)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_MARKUP_LINE = re.compile(r"^\s*(#{1,6}\s|```|~~~|[-=*_]{3,}\s*$|\|?[-:| ]+\|[-:| ]*$)")


# What a question asks for, by its first words, and how that looks in a paragraph.
_NAME = re.compile(r"\b[A-Z][a-z]+(?:[ -][A-Z][a-z]+)+\b")
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
_TIME = re.compile(
    r"\d+(?:[.:]\d+)*|\b(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday|january|february|march"
    r"|april|may|june|july|august|september|october|november|december|noon|midnight|daily"
    r"|weekly|monthly|hourly)\b",
    re.IGNORECASE,
)
_ASKS_FOR = (
    (re.compile(r"^(?:and\s+)?(?:who|whom|whose)\b", re.IGNORECASE), _NAME),
    (re.compile(r"^(?:and\s+)?how\s+(?:many|much|long|large|big|old)\b", re.IGNORECASE), _NUMBER),
    (re.compile(r"^(?:and\s+)?(?:when|what\s+time|at\s+what\s+time)\b", re.IGNORECASE), _TIME),
)


def asks_for(part: str) -> re.Pattern[str] | None:
    """The shape of what a question part asks for (a name, a number, a time), or None."""
    return next((shape for asks, shape in _ASKS_FOR if asks.search(part.strip())), None)


def root(word: str) -> str:
    """A crude root: the shared stem, and a final "e" dropped ("upgrade" meets "upgrading")."""
    base = stem(word)
    return base[:-1] if base.endswith("e") and len(base) > 4 else base


def _surface_terms(text: str) -> list[str]:
    return [
        w
        for w in _TERM.findall(text.lower())
        if w not in STOPWORDS and w not in FILLER and (len(w) >= 3 or any(c.isdigit() for c in w))
    ]


def content_terms(text: str) -> list[str]:
    """The roots of a text's content words, in order, repeats kept."""
    return [root(w) for w in _surface_terms(text)]


def terms(text: str) -> set[str]:
    """The roots of a text's content words (stop words and FILLER left out)."""
    return {root(w) for w in _surface_terms(text)}


@dataclass(frozen=True, slots=True)
class GoalPart:
    """A part of the goal and its terms; `names` maps each term back to the goal's word."""

    text: str
    terms: frozenset[str]
    names: Mapping[str, str]


def goal_parts(goal: str) -> list[GoalPart]:
    """The goal's parts that carry terms, in order."""
    parts = []
    for piece in _PART_BREAK.split(goal):
        words = _surface_terms(piece)
        if words:
            named: dict[str, str] = {}
            for w in words:
                named.setdefault(root(w), w)
            parts.append(GoalPart(piece.strip(" ,.!"), frozenset(named), named))
    return parts


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved chunk: its text, heading, and where it comes from (source, chunk number)."""

    text: str
    heading: str = ""
    source: str = "?"
    chunk: int = 0

    @property
    def cite(self) -> str:
        where = f"{self.source} #{self.chunk}"
        return f"{where}, {self.heading}" if self.heading else where


@dataclass(frozen=True, slots=True)
class Paragraph:
    """One paragraph of a passage, exactly as indexed, with the terms it (and its heading) has
    and its place: (rank of its source among the passages, chunk, paragraph)."""

    text: str
    cite: str
    terms: frozenset[str]
    place: tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Coverage:
    """The chosen paragraphs, whether they cover the goal, and the parts they do not cover
    with the goal's words missing from each."""

    paragraphs: tuple[Paragraph, ...]
    covered: bool
    uncovered: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(word for _, words in self.uncovered for word in words))


def passages_of(output: Mapping[str, Any]) -> list[Passage]:
    """The passages of a retriever's output (`results`: source, chunk, heading, text)."""
    found = []
    for item in output.get("results") or ():
        if not isinstance(item, Mapping) or not isinstance(item.get("text"), str):
            continue
        heading, source, chunk = item.get("heading"), item.get("source"), item.get("chunk")
        found.append(
            Passage(
                item["text"],
                heading if isinstance(heading, str) else "",
                source if isinstance(source, str) else "?",
                int(chunk) if isinstance(chunk, int | float) else 0,
            )
        )
    return found


def is_retrieval(output: Mapping[str, Any]) -> bool:
    """An output shaped like a retriever's: a list of `results` with text."""
    results = output.get("results")
    return isinstance(results, list) and all(
        isinstance(r, Mapping) and isinstance(r.get("text"), str) for r in results
    )


def _paragraphs(passages: Iterable[Passage]) -> list[Paragraph]:
    found: list[Paragraph] = []
    seen: set[str] = set()
    sources: dict[str, int] = {}
    for passage in passages:
        heading = terms(passage.heading)
        rank = sources.setdefault(passage.source, len(sources))
        for n, piece in enumerate(_PARAGRAPH_BREAK.split(passage.text)):
            lines = [line for line in piece.splitlines() if not _MARKUP_LINE.match(line)]
            text = piece.strip()
            if not lines or not text or text in seen:
                continue
            seen.add(text)
            place = (rank, passage.chunk, n)
            found.append(Paragraph(text, passage.cite, frozenset(terms(text) | heading), place))
    return found


def cover(goal: str, passages: Sequence[Passage], served: Iterable[str] = ()) -> Coverage:
    """Which paragraphs answer `goal` and whether they cover it; see the module docstring.
    `served`: text of other steps of the answer, covering the parts it speaks to."""
    parts = goal_parts(goal)
    limit = max(MAX_PARAGRAPHS, len(parts) + 1)
    done = set().union(*(terms(text) for text in served))
    wanted = set().union(*(p.terms for p in parts)) - done
    candidates = _paragraphs(passages)
    chosen: list[Paragraph] = []
    have: set[str] = set()

    def choose(paragraph: Paragraph) -> None:
        chosen.append(paragraph)
        have.update(paragraph.terms)
        candidates.remove(paragraph)

    # A question asking who, when or how many takes first the paragraph holding the fact.
    asking = [p for p in parts if asks_for(p.text) is not None and p.terms - done]
    for part in asking:
        holding = [c for c in candidates if _answers(c, part, goal)]
        if holding and len(chosen) < limit:
            choose(max(holding, key=lambda c: len(c.terms & part.terms)))
    if not parts and candidates:
        choose(candidates[0])
    while wanted and candidates and len(chosen) < limit:
        best = max(candidates, key=lambda c: len((c.terms & wanted) - have))
        if not (best.terms & wanted) - have:
            break
        choose(best)
    # NOTE: a paragraph naming every term of a question need not hold the fact asked for (the
    # next may: "The release manager is ..."): others covering half a part's terms are quoted
    # too, within the limit. They add no term, so coverage is as the greedy choice found.
    close = [c for c in candidates if any(_covers(c.terms, part.terms) for part in parts)]
    close.sort(key=lambda c: len(c.terms & wanted), reverse=True)
    chosen += close[: max(0, limit - len(chosen))] if chosen else []
    found = have | done
    uncovered = []
    for part in parts:
        if not _covers(found, part.terms):
            missing = tuple(part.names[t] for t in part.names if t not in found)
            uncovered.append((part.text, missing))
        elif part in asking and not any(_answers(p, part, goal) for p in chosen):
            uncovered.append((part.text, (_WHAT_IS_ASKED[asks_for(part.text)],)))
    # NOTE: quoted in document order (sources in rank order): a runbook reads as written.
    chosen.sort(key=lambda p: p.place)
    return Coverage(tuple(chosen), not uncovered, tuple(uncovered))


def _answers(paragraph: Paragraph, part: GoalPart, goal: str) -> bool:
    """`paragraph` speaks to `part` and, when the part asks who, when or how many, holds a name,
    time or number the goal does not already give. Speaking to it is covering half its terms,
    or for a question asking for such a fact one term (the rest may sit in the paragraphs
    around it: "unreachable for 47 minutes" answers how long the outage lasted)."""
    shape = asks_for(part.text)
    if shape is None:
        return _covers(paragraph.terms, part.terms)
    if not paragraph.terms & part.terms:
        return False
    given = {m.group(0).lower() for m in shape.finditer(goal)}
    return any(m.group(0).lower() not in given for m in shape.finditer(paragraph.text))


def _covers(found: Iterable[str], wanted: frozenset[str]) -> bool:
    """At least `COVERED_SHARE` of the `wanted` terms are among `found`."""
    return len(wanted.intersection(found)) >= COVERED_SHARE * len(wanted)


_WHAT_IS_ASKED = {_NAME: "a name", _NUMBER: "a number", _TIME: "a time", None: "the fact"}


@dataclass(frozen=True, slots=True)
class RetrievalAnswer:
    """The offline answer quoted from retrieved text, and the coverage it rests on."""

    text: str
    coverage: Coverage


def retrieval_answer(
    goal: str,
    passages: Sequence[Passage],
    *,
    served: Iterable[str] = (),
    note: str = "",
) -> RetrievalAnswer:
    """The paragraphs that answer `goal`, quoted exactly with their sources, under a first line
    saying no model wrote them; "not found in the indexed documents" for each part of the goal
    they do not cover. `note` is added to the first line (e.g. that the query was cut). The
    text is empty when `served` covers the whole goal and no paragraph adds to it."""
    coverage = cover(goal, passages, served)
    parts = goal_parts(goal)
    if coverage.covered and parts and not coverage.paragraphs:
        return RetrievalAnswer("", coverage)  # the other steps served every part
    head = FROM_DOCUMENTS.format(note=f"; {note}" if note else "")
    covered_some = len(coverage.uncovered) < len(parts) or not parts
    if not coverage.paragraphs or not covered_some:
        missing = ", ".join(coverage.missing) or "the goal's terms"
        text = (
            f"{head} {NOT_FOUND}: no indexed passage covers {missing} "
            f"({len(passages)} passage(s) searched)."
        )
        return RetrievalAnswer(text, Coverage((), False, coverage.uncovered))
    blocks = [head, *(f"{p.text}\n({p.cite})" for p in coverage.paragraphs)]
    for part, words in coverage.uncovered:
        blocks.append(
            f"Not found in the indexed documents: {part!r} (no passage mentions "
            f"{', '.join(words)})."
        )
    return RetrievalAnswer("\n\n".join(blocks), coverage)
