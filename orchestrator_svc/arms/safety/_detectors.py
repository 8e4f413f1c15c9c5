"""Detectors for PII and secrets: each yields candidate findings with exact character offsets.

Every detector is a regular expression with linear-time structure plus, where a pattern alone
would flag too much, a check in Python (Luhn and card prefixes, JWT headers, placeholders).
A finding's ``detail`` says what was found, never any part of the value.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Finding:
    """A piece of the text that is PII or a secret: ``text[start:end]``, and what it is."""

    kind: str
    start: int
    end: int
    detail: str

    def to_dict(self) -> dict[str, object]:
        """The finding as the arm's output shows it."""
        return {"kind": self.kind, "start": self.start, "end": self.end, "detail": self.detail}


# A candidate: (priority, finding). On overlap the lower priority number wins, then the longer.
Candidate = tuple[int, Finding]
Detector = Callable[[str], Iterator[Candidate]]

_PEM = re.compile(
    r"-----BEGIN (?P<label>(?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----"
    r"(?:(?:(?!-----).){0,20000}?-----END (?P=label)-----|(?:\s*[A-Za-z0-9+/=]{16,})*)",
    re.DOTALL,
)
_JWT = re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_TOKENS: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    (
        "AWS_ACCESS_KEY",
        "AWS access key ID",
        re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?![A-Za-z0-9])"),
    ),
    (
        "GITHUB_TOKEN",
        "GitHub token",
        re.compile(
            r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"
            r"(?![A-Za-z0-9_])"
        ),
    ),
    (
        "SLACK_TOKEN",
        "Slack token",
        re.compile(r"(?<![A-Za-z0-9])xox[abposre]-[A-Za-z0-9-]{10,250}"),
    ),
    (
        "OPENAI_KEY",
        "OpenAI API key",
        re.compile(r"(?<![A-Za-z0-9_-])sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,250}"),
    ),
    (
        "STRIPE_KEY",
        "Stripe secret key",
        re.compile(r"(?<![A-Za-z0-9])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,250}"),
    ),
    (
        "GOOGLE_API_KEY",
        "Google API key",
        re.compile(r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])"),
    ),
)
_BEARER = re.compile(r"(?i)\bbearer\s+(?P<value>[A-Za-z0-9._~+/-]{16,}=*)")
_BASIC = re.compile(r"(?i)\bauthorization\s*[:=]\s*basic\s+(?P<value>[A-Za-z0-9+/]{8,}=*)")
_URL_PASSWORD = re.compile(
    r"\b[A-Za-z][A-Za-z0-9+.-]{0,20}://[^\s/:@]{1,100}:(?P<value>[^\s/@]{1,200})@"
)
# NOTE: the key word is matched on its own and the rest of the name found by looking back:
# a lazy name prefix in the pattern would be tried at every position of long words.
_ASSIGNMENT = re.compile(
    r"(?i)(?P<word>api[_-]?key|apikey|secret[_-]?key|access[_-]?key|private[_-]?key"
    r"|client[_-]?secret|secret|access[_-]?token|auth[_-]?token|refresh[_-]?token|token"
    r"|password|passwd|pwd)\b[\"']?\s*(?::=|=>|:|=)\s*[\"']?"
    r"(?P<value>[^\s\"'`,;<>{}()\[\]]{4,300})"
)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_PLACEHOLDER = re.compile(
    r"(?i)^(?:none|null|nil|true|false|undefined|empty|redacted|required|optional|string"
    r"|\*+|x+|\.+|-+|_+|\$.*|%.*|<.*|\{.*|\[redacted.*)$"
    r"|your|example|environ|getenv|placeholder|redacted|\.\.\."
)
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
# Unicode letters are allowed (internationalised addresses): \w is Unicode-aware on str.
_EMAIL = re.compile(
    r"(?<![\w.+%-])[^\W_](?:[\w.%+-]{0,63})@"
    r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.){1,8}(?P<tld>[^\W\d_]{2,24})(?![\w-])"
)
_NOT_A_TLD = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "css", "js", "ts", "py"})
# US Social Security numbers: dashed, without the never-issued area numbers 000, 666 and 9xx,
# group 00 or serial 0000, and named as such just before (an order number looks the same).
_SSN = re.compile(r"(?<![\w-])(?!000|666|9)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
_SSN_NAMED = re.compile(r"(?i)\b(?:ssn|social[ -]security(?: number| no\.?)?)\b")
_SSN_NAME_WINDOW = 40
# NOTE: a loose, linear candidate checked in Python: nested quantifiers over digit groups
# would backtrack exponentially on long digit runs.
_PHONE_INTL = re.compile(r"(?<![\w+])\+[1-9][\d ().-]{6,22}\d(?![\w-])")
_PHONE_BAD_SEPARATORS = re.compile(r"[ .-]{2,}|\(\)|\(.*\(|\).*\)")
_PHONE_US = re.compile(
    r"(?<![\w+.-])(?:1[ .-]?)?(?:\([2-9]\d{2}\)[ .-]?|[2-9]\d{2}[ .-])\d{3}[ .-]\d{4}(?![\w-])"
)


# What an earlier redaction left (``scan`` writes it): the secret was there, so it still counts.
_MARKER = re.compile(r"\[REDACTED:(?P<kind>[A-Z][A-Z_]{1,40})\]")


def markers(text: str) -> Iterator[Candidate]:
    for m in _MARKER.finditer(text):
        yield 0, Finding(m.group("kind"), m.start(), m.end(), "already redacted")


def private_keys(text: str) -> Iterator[Candidate]:
    for m in _PEM.finditer(text):
        yield 0, Finding("PRIVATE_KEY", m.start(), m.end(), f"PEM {m.group('label')}")


def jwts(text: str) -> Iterator[Candidate]:
    for m in _JWT.finditer(text):
        if _jwt_header(m.group().split(".", 1)[0]):
            yield 1, Finding("JWT", m.start(), m.end(), "JSON Web Token")


def tokens(text: str) -> Iterator[Candidate]:
    for kind, detail, pattern in _TOKENS:
        for m in pattern.finditer(text):
            if kind == "OPENAI_KEY" and not _mixed(m.group()[3:]):
                continue
            yield 2, Finding(kind, m.start(), m.end(), detail)


def auth_headers(text: str) -> Iterator[Candidate]:
    for m in _BEARER.finditer(text):
        yield 3, Finding("BEARER_TOKEN", m.start("value"), m.end("value"), "bearer token")
    for m in _BASIC.finditer(text):
        yield 3, Finding("BASIC_AUTH", m.start("value"), m.end("value"), "basic auth credentials")
    for m in _URL_PASSWORD.finditer(text):
        yield 3, Finding("URL_PASSWORD", m.start("value"), m.end("value"), "password in a URL")


def assignments(text: str) -> Iterator[Candidate]:
    for m in _ASSIGNMENT.finditer(text):
        value, word = m.group("value"), m.group("word").lower()
        if _PLACEHOLDER.search(value):
            continue
        is_password = word in ("password", "passwd", "pwd")
        if is_password:
            if len(value) < 6:
                continue
        elif len(value) < 8 or not (any(c.isdigit() for c in value) or len(value) >= 20):
            continue
        name = _name_before(text, m.start("word"), m.end("word"))
        kind = "PASSWORD" if is_password else "API_KEY"
        yield 4, Finding(kind, m.start("value"), m.end("value"), f"value assigned to {name!r}")


def cards(text: str) -> Iterator[Candidate]:
    for m in _CARD.finditer(text):
        raw = m.group()
        separators = {c for c in raw if not c.isdigit()}
        if len(separators) > 1:
            continue
        digits = raw.replace(" ", "").replace("-", "")
        brand = card_brand(digits)
        if brand is None or not luhn_valid(digits):
            continue
        yield 5, Finding("CREDIT_CARD", m.start(), m.end(), f"{brand} card number (Luhn-valid)")


def emails(text: str) -> Iterator[Candidate]:
    for m in _EMAIL.finditer(text):
        if m.group("tld").lower() in _NOT_A_TLD:
            continue
        yield 6, Finding("EMAIL", m.start(), m.end(), "email address")


def ssns(text: str) -> Iterator[Candidate]:
    for m in _SSN.finditer(text):
        if not _SSN_NAMED.search(text, max(0, m.start() - _SSN_NAME_WINDOW), m.start()):
            continue
        yield 6, Finding("SSN", m.start(), m.end(), "US Social Security number")


def phones(text: str) -> Iterator[Candidate]:
    for m in _PHONE_INTL.finditer(text):
        raw = m.group()
        if (
            8 <= sum(c.isdigit() for c in raw) <= 15
            and raw.count("(") == raw.count(")")
            and not _PHONE_BAD_SEPARATORS.search(raw)
        ):
            yield 7, Finding("PHONE", m.start(), m.end(), "phone number (international)")
    for m in _PHONE_US.finditer(text):
        yield 7, Finding("PHONE", m.start(), m.end(), "phone number (US)")


DETECTORS: tuple[Detector, ...] = (
    markers,
    private_keys,
    jwts,
    tokens,
    auth_headers,
    assignments,
    cards,
    emails,
    ssns,
    phones,
)


def detect(text: str) -> list[Finding]:
    """Every finding in ``text``, non-overlapping, in order of position."""
    candidates = [c for detector in DETECTORS for c in detector(text)]
    candidates.sort(key=lambda c: (c[0], c[1].start - c[1].end, c[1].start))
    starts: list[int] = []
    taken: list[Finding] = []
    for _, finding in candidates:
        i = bisect.bisect_left(starts, finding.start)
        if i > 0 and taken[i - 1].end > finding.start:
            continue
        if i < len(taken) and taken[i].start < finding.end:
            continue
        starts.insert(i, finding.start)
        taken.insert(i, finding)
    return taken


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) checksum that every payment card number satisfies."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_brand(digits: str) -> str | None:
    """The card network whose number prefix and length ``digits`` has, or None."""
    n = len(digits)
    two, four, six = int(digits[:2]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4" and n in (13, 16, 19):
        return "Visa"
    if (51 <= two <= 55 or 2221 <= four <= 2720) and n == 16:
        return "Mastercard"
    if two in (34, 37) and n == 15:
        return "American Express"
    if (four == 6011 or two == 65 or 644 <= int(digits[:3]) <= 649 or 622126 <= six <= 622925) and (
        16 <= n <= 19
    ):
        return "Discover"
    if 3528 <= four <= 3589 and 16 <= n <= 19:
        return "JCB"
    if (300 <= int(digits[:3]) <= 305 or two in (36, 38, 39)) and 14 <= n <= 19:
        return "Diners Club"
    if two == 62 and 16 <= n <= 19:
        return "UnionPay"
    return None


def _jwt_header(segment: str) -> bool:
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(header, dict) and ("alg" in header or "typ" in header)


def _name_before(text: str, start: int, end: int) -> str:
    begin = start
    while begin > 0 and start - begin < 40 and text[begin - 1] in _NAME_CHARS:
        begin -= 1
    return text[begin:end]


def _mixed(value: str) -> bool:
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)
