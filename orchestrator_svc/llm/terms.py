"""Text to index terms, shared by BM25 and the local embedder.

Lower-cased word runs (letters and digits, Unicode-aware), English stop words dropped, and a
light suffix stripper so "installing", "installed" and "installs" meet at "install". The
stripper is deliberately crude: it only has to map a query and a passage to the same terms.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[^\W_]+")

_STOP_WORDS = """a about above after again all also am an and any are as at be been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers him his how i if in into is it its itself just me more most
    my no nor not of off on once only or other our ours out over own same she should so some
    such than that the their theirs them then there these they this those through to too under
    until up very was we were what when where which while who whom why will with would you your
    yours"""
STOP_WORDS = frozenset(_STOP_WORDS.split())

# (suffix, replacement), tried in order; the first match leaving a stem of 3+ characters wins.
_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("izations", "iz"),
    ("ization", "iz"),
    ("ations", ""),
    ("ation", ""),
    ("ments", ""),
    ("ment", ""),
    ("nesses", ""),
    ("ness", ""),
    ("ings", ""),
    ("ing", ""),
    ("ies", "y"),
    ("ied", "y"),
    ("sses", "ss"),
    ("ers", ""),
    ("er", ""),
    ("ed", ""),
    ("ly", ""),
    ("es", ""),
    ("s", ""),
    ("e", ""),
)
_MIN_STEM = 3
_UNDOUBLE = frozenset({"ing", "ings", "ed", "er", "ers"})


def words(text: str) -> list[str]:
    """Lower-cased word runs, stop words included (for n-grams and display)."""
    return _WORD.findall(text.lower())


def stem(word: str) -> str:
    """A light suffix strip; never leaves fewer characters than the rule allows."""
    if len(word) <= 3 or word.isdigit():
        return word
    for suffix, replacement in _SUFFIXES:
        if not word.endswith(suffix) or len(word) - len(suffix) < _MIN_STEM:
            continue
        if suffix == "s" and word.endswith(("ss", "us", "is")):
            return word
        base = word[: len(word) - len(suffix)] + replacement
        # NOTE: "running" -> "runn" -> "run": undouble a final consonant left by -ing/-ed/-er.
        if suffix in _UNDOUBLE and len(base) > 3 and base[-1] == base[-2] and base[-1] not in "ls":
            base = base[:-1]
        return base
    return word


def terms(text: str) -> list[str]:
    """Index terms of ``text``: stemmed words without stop words, in order, repeats kept."""
    return [stem(w) for w in words(text) if w not in STOP_WORDS]
