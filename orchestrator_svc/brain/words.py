"""Words of a text: tokens, stopwords, crude stems. Shared by the parser and the validator."""

from __future__ import annotations

import re
from collections import Counter

from .lexicon import names

# Letters first; keeps c++, c#, fan-out, k8s, node.js-like words whole.
_WORD = re.compile(r"[a-z][a-z0-9_]*(?:[-+#][a-z0-9_+#]*)*")

STOPWORDS = names(
    """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing don down during each either
    else even ever every few for from further get gets got had has have having he her here hers
    him his how however i if in into is it its itself just let lets like may me might more most
    much must my need needs no nor not now of off on once only or other our ours out over own
    per please same shall she should so some such than that the their theirs them then there
    these they this those though through to too under until up upon us use used using very via
    want was we were what when where which while who whom why will with within without would
    yet you your yours
    explain describe tell show give help make sure thing things way ways something anything
    everything one ones etc e.g i.e across along around see say set detail details
    example examples kind kinds lot lots"""
)

_SUFFIXES = ("ations", "ation", "ings", "ing", "ers", "er", "ed", "es", "ly", "s")


def words(text: str) -> list[str]:
    """Lower-cased word tokens, in order."""
    return _WORD.findall(text.lower())


def content_words(text: str) -> list[str]:
    """Words that carry meaning: no stopwords, at least 3 characters (or containing a digit)."""
    return [
        w
        for w in words(text)
        if w not in STOPWORDS and (len(w) >= 3 or any(c.isdigit() for c in w))
    ]


def stem(word: str) -> str:
    """A crude suffix-stripping stem, good enough to match "tests" with "testing"."""
    if word.endswith(("ies", "ied")) and len(word) > 4:
        return word[:-3] + "y"
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def is_content(word: str) -> bool:
    """Whether a lower-cased word carries meaning (not a stopword, long enough or has a digit)."""
    return word not in STOPWORDS and (len(word) >= 3 or any(c.isdigit() for c in word))


def top_terms(found: list[str], limit: int) -> list[str]:
    """The `limit` most frequent of `found`; ties keep the order of first appearance."""
    counts = Counter(found)
    first = {w: i for i, w in reversed(list(enumerate(found)))}
    return sorted(counts, key=lambda w: (-counts[w], first[w]))[:limit]
