"""Okapi BM25 over pre-tokenised documents, with postings so a query only touches its terms.

idf is the Lucene form ``ln(1 + (N - df + 0.5) / (df + 0.5))``: always positive, so a term that
appears in most documents still counts a little instead of pushing scores negative.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterable, Sequence


class BM25Index:
    """Scores documents (lists of terms) against a query (terms); k1=1.5, b=0.75 by default."""

    def __init__(self, documents: Iterable[Sequence[str]], *, k1: float = 1.5, b: float = 0.75):
        self.k1 = k1
        self.b = b
        self._lengths: list[int] = []
        self._postings: dict[str, list[tuple[int, int]]] = {}
        for doc_id, document in enumerate(documents):
            self._lengths.append(len(document))
            for term, count in Counter(document).items():
                self._postings.setdefault(term, []).append((doc_id, count))
        self._avg_length = sum(self._lengths) / len(self._lengths) if self._lengths else 0.0
        n = len(self._lengths)
        self._idf = {
            term: math.log(1.0 + (n - len(posts) + 0.5) / (len(posts) + 0.5))
            for term, posts in self._postings.items()
        }

    def __len__(self) -> int:
        return len(self._lengths)

    def idf(self, term: str) -> float:
        """The term's inverse document frequency; 0 for a term no document has."""
        return self._idf.get(term, 0.0)

    def scores(self, query: Iterable[str]) -> dict[int, float]:
        """BM25 score of every document sharing a term with the query (repeats count once)."""
        totals: dict[int, float] = {}
        avg = self._avg_length or 1.0
        for term in set(query):
            idf = self._idf.get(term)
            if idf is None:
                continue
            for doc_id, tf in self._postings[term]:
                norm = self.k1 * (1.0 - self.b + self.b * self._lengths[doc_id] / avg)
                totals[doc_id] = totals.get(doc_id, 0.0) + idf * tf * (self.k1 + 1.0) / (tf + norm)
        return totals

    def top(self, query: Iterable[str], n: int) -> list[tuple[int, float]]:
        """The ``n`` best (doc_id, score), best first; ties go to the earlier document."""
        scored = self.scores(query)
        return heapq.nsmallest(n, ((doc, s) for doc, s in scored.items()), key=_rank_key)


def _rank_key(item: tuple[int, float]) -> tuple[float, int]:
    return (-item[1], item[0])
