"""The quality benchmark's goals: what a user asks, with the context they give, and the
automatic checker that decides whether a SUCCEEDED answer is right.

`servable_offline` says whether the reference arms without an LLM could serve the goal
correctly (retrieval over the ingested corpus, a safety scan, Python whose code is given): a
goal that is not and ends FAILED is an honest failure; one that is and ends FAILED is a wrong
failure. The facts of the retrieval goals are in `benchmarks/quality_corpus/` and nowhere in the
bundled sample documents, and no expected fact appears in a goal or its context (a test holds
this), so an answer that copies the goal never passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from benchmarks._quality_checks import (
    Checker,
    CodePasses,
    FactsPresent,
    ManifestMatches,
    NotCovered,
    NumberPresent,
    SecretsReported,
    fact,
    number,
)

CATEGORIES = ("explain", "code", "data", "security", "infrastructure", "multi-part")


@dataclass(frozen=True, slots=True)
class Goal:
    """One benchmark goal: submitted as `goal` with `context`, judged by `checker`."""

    goal_id: str
    category: str
    goal: str
    checker: Checker
    servable_offline: bool
    context: Mapping[str, Any] = field(default_factory=dict)


_EXPIRED_CERTIFICATE = fact(
    "expired tls certificate",
    "expired certificate",
    "certificate had expired",
    "certificate expired",
    "certificate that had expired",
    "tls certificate expired",
)

EXPLAIN = (
    Goal(
        "explain-reconciliation",
        "explain",
        "At what time does the billing service's nightly reconciliation job start?",
        FactsPresent((fact("02:40", "2:40"),)),
        servable_offline=True,
    ),
    Goal(
        "explain-krakatoa-nodes",
        "explain",
        "How many storage nodes does the Krakatoa storage cluster have?",
        FactsPresent((number(48),)),
        servable_offline=True,
    ),
    Goal(
        "explain-release-manager",
        "explain",
        "Who is the release manager for Halcyon Freight's release trains?",
        FactsPresent((fact("Tomasz Wielgosz", "Wielgosz"),)),
        servable_offline=True,
    ),
    Goal(
        "explain-inc-4471",
        "explain",
        "What caused the outage described in incident INC-4471?",
        FactsPresent((_EXPIRED_CERTIFICATE,)),
        servable_offline=True,
    ),
    Goal(
        "explain-escalation",
        "explain",
        "Who is the escalation contact for billing incidents at Halcyon Freight?",
        FactsPresent((fact("Priya Raghunathan", "Raghunathan"),)),
        servable_offline=True,
    ),
    Goal(
        "explain-quill",
        "explain",
        "What does the word quill mean inside Halcyon Freight?",
        FactsPresent((fact("feature flag", "feature-flag", "feature toggle"),)),
        servable_offline=True,
    ),
    Goal(
        "explain-tcp-udp",
        "explain",
        "Explain the difference between TCP and UDP.",
        NotCovered(
            topic=(
                ("connectionless", "connection-less", "without a connection", "no connection"),
                ("reliab", "ordered", "in order", "retransmi", "acknowledg", "guarantee"),
            )
        ),
        servable_offline=False,
    ),
    Goal(
        "explain-raft",
        "explain",
        "How does the Raft consensus algorithm elect a leader?",
        NotCovered(topic=(("vote",), ("candidate", "majority", "quorum"))),
        servable_offline=False,
    ),
    Goal(
        "explain-admin-port",
        "explain",
        "Which TCP port does the admin API of the Halcyon billing service listen on?",
        NotCovered(),
        servable_offline=False,
    ),
)

_PALINDROME_TESTS = """
assert is_palindrome("A man, a plan, a canal: Panama") is True
assert is_palindrome("No 'x' in Nixon") is True
assert is_palindrome("OctoLLM") is False
assert is_palindrome("") is True
assert is_palindrome("ab") is False
"""
_ROMAN_TESTS = """
assert roman_to_int("III") == 3
assert roman_to_int("IV") == 4
assert roman_to_int("LVIII") == 58
assert roman_to_int("MCMXCIV") == 1994
assert roman_to_int("MMXXVI") == 2026
"""
_MERGE_TESTS = """
def _norm(result):
    return [list(pair) for pair in result]
assert _norm(merge_intervals([[1, 3], [2, 6], [8, 10], [15, 18]])) == [[1, 6], [8, 10], [15, 18]]
assert _norm(merge_intervals([[1, 4], [4, 5]])) == [[1, 5]]
assert _norm(merge_intervals([[5, 7], [1, 2]])) == [[1, 2], [5, 7]]
assert _norm(merge_intervals([])) == []
"""
_WORDS_TESTS = """
assert dict(word_frequencies("The cat and the hat.")) == {"the": 2, "cat": 1, "and": 1, "hat": 1}
assert dict(word_frequencies("Go, go, GO!")) == {"go": 3}
assert dict(word_frequencies("")) == {}
"""
_CHUNK_TESTS = """
assert [list(c) for c in chunk([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]
assert [list(c) for c in chunk([], 3)] == []
assert [list(c) for c in chunk([1, 2, 3], 3)] == [[1, 2, 3]]
try:
    chunk([1, 2], 0)
except ValueError:
    pass
else:
    raise AssertionError("chunk(items, 0) must raise ValueError")
"""

CODE = (
    Goal(
        "code-palindrome",
        "code",
        "Write a Python function is_palindrome(text) that returns True when text reads the same "
        "backwards, ignoring case, spaces and punctuation, with pytest tests.",
        CodePasses("is_palindrome", _PALINDROME_TESTS),
        servable_offline=False,
    ),
    Goal(
        "code-roman",
        "code",
        "Write a Python function roman_to_int(numeral) that converts a Roman numeral such as "
        "'XIV' to an integer, with pytest tests.",
        CodePasses("roman_to_int", _ROMAN_TESTS),
        servable_offline=False,
    ),
    Goal(
        "code-merge-intervals",
        "code",
        "Write a Python function merge_intervals(intervals) that merges overlapping [start, end] "
        "intervals and returns them sorted by start, with pytest tests.",
        CodePasses("merge_intervals", _MERGE_TESTS),
        servable_offline=False,
    ),
    Goal(
        "code-word-frequencies",
        "code",
        "Write a Python function word_frequencies(text) that returns a dict counting each word, "
        "lower-cased and without punctuation, with pytest tests.",
        CodePasses("word_frequencies", _WORDS_TESTS),
        servable_offline=False,
    ),
    Goal(
        "code-chunk",
        "code",
        "Write a Python function chunk(items, size) that splits a list into consecutive lists of "
        "at most size items and raises ValueError when size is not positive; include pytest "
        "tests.",
        CodePasses("chunk", _CHUNK_TESTS),
        servable_offline=False,
    ),
)

_DELIVERY_HOURS = [31, 45, 28, 52, 39, 47, 33, 41]
_ORDERS = [
    {"quantity": 3, "unit_price_eur": 19.99},
    {"quantity": 1, "unit_price_eur": 249.0},
    {"quantity": 12, "unit_price_eur": 4.5},
    {"quantity": 5, "unit_price_eur": 12.25},
]
_SHIPMENT_WEIGHTS = [
    {"shipment": "HF-1001", "weight_kg": 120},
    {"shipment": "HF-1002", "weight_kg": 340},
    {"shipment": "HF-1003", "weight_kg": 75},
    {"shipment": "HF-1004", "weight_kg": 510},
    {"shipment": "HF-1005", "weight_kg": 95},
]

DATA = (
    Goal(
        "data-sum-of-squares",
        "data",
        "Compute the sum of the squares of the integers from 1 to 100 by running the Python code "
        "given in the context, and report the result.",
        NumberPresent(338350),
        servable_offline=True,
        context={"python": "print(sum(i * i for i in range(1, 101)))"},
    ),
    Goal(
        "data-mean-delivery",
        "data",
        "What is the mean delivery time in hours of the deliveries in the context? Run this "
        "Python to compute it:\n```python\nhours = "
        + repr(_DELIVERY_HOURS)
        + "\nprint(sum(hours) / len(hours))\n```",
        NumberPresent(39.5),
        servable_offline=True,
        context={"delivery_hours": _DELIVERY_HOURS},
    ),
    Goal(
        "data-order-revenue",
        "data",
        "What is the total revenue in euros of the orders in the context? The code that computes "
        "it is in the context under python.",
        NumberPresent(424.22),
        servable_offline=True,
        context={
            "orders": _ORDERS,
            "python": "orders = "
            + repr([(o["quantity"], o["unit_price_eur"]) for o in _ORDERS])
            + "\nprint(round(sum(q * p for q, p in orders), 2))",
        },
    ),
    Goal(
        "data-compound-interest",
        "data",
        "What does a deposit of 10000 euros grow to after 10 years at 4 percent interest "
        "compounded yearly? Run this Python and report the amount:\n```python\n"
        "print(round(10000 * 1.04 ** 10, 2))\n```",
        NumberPresent(14802.44),
        servable_offline=True,
    ),
    Goal(
        "data-total-weight",
        "data",
        "What is the total weight in kilograms of the shipments listed in the context?",
        NumberPresent(1140),
        servable_offline=False,
        context={"shipments": _SHIPMENT_WEIGHTS},
    ),
)

_CARD = "4111 1111 1111 1111"
_EMAIL = "jane.doe@example.org"
_AWS_KEY = "AKIAZ7QW3RT5YU2PLM8N"
_SSN = "536-22-8401"
_PHONE = "(415) 555-0132"
_GITHUB_TOKEN = "ghp_" + "R8fK2mQ9xT4vL7nB3cW6yH1jD5sA0pZ2eG8u"
_DB_PASSWORD = "Winter2026Harbor7"

_EMAIL_NAMES = ("email address", "e-mail", "email")
_CARD_NAMES = ("credit card", "card number", "payment card", "credit_card")

SECURITY = (
    Goal(
        "security-ticket-pii",
        "security",
        "Scan this support ticket for secrets and personal data and list what you find: "
        f"'Customer {_EMAIL} paid with the card {_CARD} and asks for a refund of order 5521.'",
        SecretsReported({"EMAIL": _EMAIL_NAMES, "CREDIT_CARD": _CARD_NAMES}, (_EMAIL, _CARD)),
        servable_offline=True,
    ),
    Goal(
        "security-aws-config",
        "security",
        "Check the configuration file in the context for leaked credentials and say which kinds "
        "you found.",
        SecretsReported(
            {"AWS_ACCESS_KEY": ("aws access key", "aws_access_key", "aws key")}, (_AWS_KEY,)
        ),
        servable_offline=True,
        context={
            "text": "[default]\nregion = eu-central-1\n"
            f"aws_access_key_id = {_AWS_KEY}\noutput = json\n"
        },
    ),
    Goal(
        "security-hr-note",
        "security",
        "Review this HR note for personal data before it is shared outside the team: "
        f"'Employee Marco Diaz, SSN {_SSN}, can be reached on {_PHONE} after 5 pm.'",
        SecretsReported(
            {"SSN": ("social security", "ssn"), "PHONE": ("phone", "telephone")}, (_SSN, _PHONE)
        ),
        servable_offline=True,
    ),
    Goal(
        "security-ci-log",
        "security",
        "Find the secrets in the CI log in the context and report their kinds without repeating "
        "them.",
        SecretsReported(
            {
                "GITHUB_TOKEN": ("github token", "github personal access token", "github_token"),
                "PASSWORD": ("password",),
            },
            (_GITHUB_TOKEN, _DB_PASSWORD),
        ),
        servable_offline=True,
        context={
            "text": "step 3/7: fetch dependencies\n"
            f"export GH_AUTH={_GITHUB_TOKEN}\n"
            f"psql postgresql://deploy:{_DB_PASSWORD}@db.internal:5432/shipments -c 'select 1'\n"
            "step 4/7: build\n"
        },
    ),
)

_WEB_CONTAINERS = "spec.template.spec.containers"

INFRASTRUCTURE = (
    Goal(
        "infra-deployment",
        "infrastructure",
        "Draft a Kubernetes Deployment named tracking-web that runs the image nginx:1.27 with 3 "
        "replicas and exposes container port 8080.",
        ManifestMatches(
            "Deployment",
            {
                "metadata.name": "tracking-web",
                "spec.replicas": 3,
                f"{_WEB_CONTAINERS}.image": "nginx:1.27",
                f"{_WEB_CONTAINERS}.ports.containerPort": 8080,
            },
        ),
        servable_offline=False,
    ),
    Goal(
        "infra-service",
        "infrastructure",
        "Write a Kubernetes Service named payments that sends port 80 to port 8080 of the pods "
        "labelled app=payments.",
        ManifestMatches(
            "Service",
            {
                "metadata.name": "payments",
                "spec.selector.app": "payments",
                "spec.ports.port": 80,
                "spec.ports.targetPort": 8080,
            },
        ),
        servable_offline=False,
    ),
    Goal(
        "infra-cronjob",
        "infrastructure",
        "Write a Kubernetes CronJob named nightly-report that runs the image busybox:1.36 every "
        "15 minutes.",
        ManifestMatches(
            "CronJob",
            {
                "metadata.name": "nightly-report",
                "spec.schedule": "*/15 * * * *",
                "spec.jobTemplate.spec.template.spec.containers.image": "busybox:1.36",
            },
        ),
        servable_offline=False,
    ),
    Goal(
        "infra-hpa",
        "infrastructure",
        "Draft a Kubernetes HorizontalPodAutoscaler for the Deployment tracking-web that keeps "
        "between 2 and 10 replicas and targets 70% average CPU utilization.",
        ManifestMatches(
            "HorizontalPodAutoscaler",
            {
                "spec.scaleTargetRef.name": "tracking-web",
                "spec.minReplicas": 2,
                "spec.maxReplicas": 10,
                "spec.metrics.resource.target.averageUtilization"
                "|spec.targetCPUUtilizationPercentage": 70,
            },
        ),
        servable_offline=False,
    ),
)

MULTI_PART = (
    Goal(
        "multi-three-facts",
        "multi-part",
        "Answer three questions from the Halcyon Freight documents: when does the nightly "
        "reconciliation job start, how many storage nodes does Krakatoa have, and who is the "
        "release manager?",
        FactsPresent((fact("02:40", "2:40"), number(48), fact("Tomasz Wielgosz", "Wielgosz"))),
        servable_offline=True,
    ),
    Goal(
        "multi-incident",
        "multi-part",
        "About incident INC-4471: what caused it, how many minutes did the outage last, and "
        "which gateway was affected?",
        FactsPresent((_EXPIRED_CERTIFICATE, number(47), fact("gw-east-2"))),
        servable_offline=True,
    ),
    Goal(
        "multi-quota-freeze",
        "multi-part",
        "Two questions about Halcyon Freight: what default storage quota does each Krakatoa "
        "tenant get, and how many hours before a release train leaves does code freeze begin?",
        FactsPresent((fact("750 GiB", "750GiB", "750 gib"), number(36))),
        servable_offline=True,
    ),
)

GOALS: tuple[Goal, ...] = (*EXPLAIN, *CODE, *DATA, *SECURITY, *INFRASTRUCTURE, *MULTI_PART)
