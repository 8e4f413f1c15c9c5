"""Splitting a document into chunks: by headings, then paragraphs, up to ``chunk_chars``.

A chunk never crosses a Markdown heading (ATX ``# Title`` or setext ``Title\\n===``) and carries
the heading trail it sits under (``"Guide > Install"``). Paragraphs (blank-line separated; a
fenced code block is one paragraph) are packed greedily; a paragraph longer than a chunk is cut
at sentence ends, then at spaces, then anywhere. Consecutive chunks of one section overlap by up
to ``overlap`` characters: the tail of the previous chunk, snapped to a sentence start when one
is in reach (else a word start), so a fact on a boundary is whole in at least one chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_HAS_WORD = re.compile(r"[^\W_]")

MIN_CHUNK_CHARS = 20


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a document and the heading trail above it ("" when none)."""

    text: str
    heading: str


@dataclass(frozen=True, slots=True)
class _Heading:
    level: int
    title: str


def chunk_document(
    text: str, *, markdown: bool = True, chunk_chars: int = 800, overlap: int = 100
) -> list[Chunk]:
    """The chunks of ``text``; headings are only recognised when ``markdown``."""
    check_sizes(chunk_chars, overlap)
    chunks: list[Chunk] = []
    trail: list[_Heading] = []
    section: list[str] = []

    def flush() -> None:
        heading = " > ".join(h.title for h in trail if h.title)
        for body in _pack(section, chunk_chars, overlap):
            if _HAS_WORD.search(body):
                chunks.append(Chunk(text=body, heading=heading))
        section.clear()

    for block in _blocks(text, markdown=markdown):
        if isinstance(block, _Heading):
            flush()
            while trail and trail[-1].level >= block.level:
                trail.pop()
            trail.append(block)
        else:
            section.append(block)
    flush()
    return chunks


def check_sizes(chunk_chars: int, overlap: int) -> None:
    """Raise ValueError unless ``chunk_chars`` >= 20 and ``overlap`` is 0..half a chunk."""
    if chunk_chars < MIN_CHUNK_CHARS:
        raise ValueError(f"chunk_chars must be at least {MIN_CHUNK_CHARS}, got {chunk_chars}")
    if not 0 <= overlap <= chunk_chars // 2:
        raise ValueError(f"overlap must be 0..{chunk_chars // 2} (half a chunk), got {overlap}")


def _blocks(text: str, *, markdown: bool) -> list[_Heading | str]:
    """Headings and paragraphs, in order."""
    blocks: list[_Heading | str] = []
    lines: list[str] = []
    fence = ""

    def end_paragraph() -> None:
        body = "\n".join(lines).strip("\n")
        if body.strip():
            blocks.append(body)
        lines.clear()

    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if markdown and (opened := _FENCE.match(line)):
            marker = opened.group(1)
            if not fence:
                end_paragraph()
                fence = marker[0] * len(marker)
            elif marker.startswith(fence):
                fence = ""
                lines.append(line)
                end_paragraph()
                continue
        if fence:
            lines.append(line)
            continue
        if not line.strip():
            end_paragraph()
            continue
        if markdown and (atx := _ATX.match(line)):
            end_paragraph()
            blocks.append(_Heading(len(atx.group(1)), (atx.group(2) or "").strip()))
            continue
        if markdown and len(lines) == 1 and lines[0].strip() and (setext := _SETEXT.match(line)):
            title = lines[0].strip()
            lines.clear()
            blocks.append(_Heading(1 if setext.group(1)[0] == "=" else 2, title))
            continue
        lines.append(line)
    end_paragraph()
    return blocks


def _pack(paragraphs: list[str], chunk_chars: int, overlap: int) -> list[str]:
    """Paragraphs packed into chunks of at most ``chunk_chars``, overlapping by the tail."""
    # NOTE: units leave room for the overlap carried into the next chunk, so no chunk exceeds
    # chunk_chars even after the tail is prepended.
    limit = chunk_chars - overlap - 2
    chunks: list[str] = []
    current = ""
    for paragraph in paragraphs:
        joiner = "\n\n"
        for unit in _units(paragraph, limit):
            if current and len(current) + len(joiner) + len(unit) > chunk_chars:
                chunks.append(current)
                tail = _tail(current, overlap)
                current = f"{tail}{joiner}{unit}" if tail else unit
            else:
                current = f"{current}{joiner}{unit}" if current else unit
            joiner = " "
    if current:
        chunks.append(current)
    return chunks


def _units(paragraph: str, limit: int) -> list[str]:
    """``paragraph`` whole when it fits in ``limit``, else its sentences, each cut to fit."""
    paragraph = paragraph.strip()
    if len(paragraph) <= limit:
        return [paragraph]
    return [part for sentence in _SENTENCE_END.split(paragraph) for part in _cut(sentence, limit)]


def _cut(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit``, preferring to cut at whitespace."""
    parts: list[str] = []
    text = text.strip()
    while len(text) > limit:
        cut = text.rfind(" ", 0, limit + 1)
        if cut <= limit // 2:
            cut = max(text.rfind("\n", 0, limit + 1), cut)
        if cut <= 0:
            cut = limit
        parts.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        parts.append(text)
    return parts


def _tail(text: str, overlap: int) -> str:
    """The last ``overlap`` characters of ``text``, from a sentence start (else a word start)."""
    if overlap <= 0:
        return ""
    window = text[-overlap:]
    if len(window) == len(text):
        return ""
    sentence = _SENTENCE_END.search(window)
    if sentence is not None and sentence.end() < len(window):
        return window[sentence.end() :].strip()
    space = re.search(r"\s", window)
    return window[space.end() :].strip() if space is not None else ""
