"""The quality benchmark: its table, and its checkers, which are its own correctness.

Every goal's checker is shown a hand-made right answer (judged correct) and a wrong one (judged
wrong); code answers run in the executor arm's sandbox through a real offline mesh, as in the
benchmark. A short real run (`python -m benchmarks.quality --only ...`) prints the table.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from benchmarks._quality_checks import (
    CodePasses,
    Evidence,
    FactsPresent,
    NotCovered,
    has_number,
    says_not_found,
)
from benchmarks._quality_goals import CATEGORIES, GOALS, Goal
from benchmarks.quality import (
    CORPUS,
    MeshCodeRunner,
    MeshConfig,
    argument_parser,
    measure,
    quality_mesh,
    report,
    select,
)
from orchestrator_svc.dev import SAMPLE_DOCS
from tests.llm.fake_openai import FakeOpenAI, completion, refused_base_url

ROOT = Path(__file__).resolve().parent.parent.parent
BY_ID = {g.goal_id: g for g in GOALS}


def _fenced(language: str, body: str) -> str:
    return f"```{language}\n{body.strip()}\n```"


# -- hand-made answers: one right and one wrong for every goal ---------------------------------

RIGHT: dict[str, Evidence] = {
    "explain-reconciliation": Evidence("The reconciliation job starts at 02:40 UTC every night."),
    "explain-krakatoa-nodes": Evidence("Krakatoa has **48** storage nodes over three racks."),
    "explain-release-manager": Evidence("The release manager is Tomasz Wielgosz."),
    "explain-inc-4471": Evidence("An expired TLS certificate on the ingress gateway gw-east-2."),
    "explain-escalation": Evidence("Priya Raghunathan, the billing team lead."),
    "explain-quill": Evidence("A quill is the internal name for a feature flag."),
    "explain-tcp-udp": Evidence(
        "TCP is connection-oriented and reliable: bytes arrive in order and lost segments are "
        "retransmitted. UDP is connectionless: datagrams may be lost or reordered."
    ),
    "explain-raft": Evidence(
        "A follower whose election timeout expires becomes a candidate, increments its term and "
        "asks the others to vote for it; with votes from a majority it becomes leader."
    ),
    "explain-admin-port": Evidence(
        "Not found in the indexed documents: the billing runbook does not mention an admin API."
    ),
    "data-sum-of-squares": Evidence("The sum of the squares from 1 to 100 is 338,350."),
    "data-mean-delivery": Evidence("", {"compute": {"stdout": "39.5\n", "exit_code": 0}}),
    "data-order-revenue": Evidence("The orders bring in 424.22 EUR."),
    "data-compound-interest": Evidence("After 10 years the deposit is worth 14802.44 euros."),
    "data-total-weight": Evidence("The shipments weigh 1140 kg in total."),
    "security-ticket-pii": Evidence(
        "Found an e-mail address ([REDACTED:EMAIL]) and a credit card number "
        "([REDACTED:CREDIT_CARD])."
    ),
    "security-aws-config": Evidence(
        "One credential was found.",
        {"assess": {"findings": [{"kind": "AWS_ACCESS_KEY", "start": 50, "end": 70}]}},
    ),
    "security-hr-note": Evidence(
        "The note holds a US social security number and a phone number; redact both first."
    ),
    "security-ci-log": Evidence(
        "The log leaks a GitHub token (GH_AUTH) and a database password inside the psql URL."
    ),
    "infra-deployment": Evidence(
        _fenced(
            "yaml",
            """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: tracking-web
spec:
  replicas: 3
  selector:
    matchLabels: {app: tracking-web}
  template:
    metadata:
      labels: {app: tracking-web}
    spec:
      containers:
        - name: web
          image: nginx:1.27
          ports:
            - containerPort: 8080
""",
        )
    ),
    "infra-service": Evidence(
        "Here it is:\n"
        + _fenced(
            "yaml",
            """
apiVersion: v1
kind: Service
metadata:
  name: payments
spec:
  type: ClusterIP
  selector:
    app: payments
  ports:
    - port: 80
      targetPort: 8080
""",
        )
    ),
    "infra-cronjob": Evidence(
        "",
        {
            "draft_change": {
                "code": """apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly-report
spec:
  schedule: "*/15 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
            - name: report
              image: busybox:1.36
              args: [date]
"""
            }
        },
    ),
    "infra-hpa": Evidence(
        _fenced(
            "yaml",
            """
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: tracking-web
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: tracking-web}
  minReplicas: 2
  maxReplicas: 10
  metrics:
    - type: Resource
      resource:
        name: cpu
        target: {type: Utilization, averageUtilization: 70}
""",
        )
    ),
    "multi-three-facts": Evidence(
        "1. It starts at 02:40 UTC. 2. Krakatoa has 48 storage nodes. 3. Tomasz Wielgosz."
    ),
    "multi-incident": Evidence(
        "The TLS certificate had expired on gw-east-2; the outage lasted 47 minutes."
    ),
    "multi-quota-freeze": Evidence("Each tenant gets 750 GiB; code freeze begins 36 hours before."),
}

_PALINDROME = """
import re
import pytest


def is_palindrome(text):
    letters = re.sub(r"[^0-9a-z]", "", text.lower())
    return letters == letters[::-1]


def test_panama():
    assert is_palindrome("A man, a plan, a canal: Panama")


@pytest.mark.parametrize("word", ["ab", "OctoLLM"])
def test_not(word):
    assert not is_palindrome(word)


if __name__ == "__main__":
    pytest.main([__file__])
"""
_ROMAN = """
def roman_to_int(numeral):
    values = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
    total = 0
    for i, letter in enumerate(numeral):
        value = values[letter]
        if i + 1 < len(numeral) and values[numeral[i + 1]] > value:
            total -= value
        else:
            total += value
    return total
"""
_MERGE = """
def merge_intervals(intervals):
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged
"""
_WORDS = """
import re
from collections import Counter

def word_frequencies(text):
    return dict(Counter(re.findall(r"[a-z0-9']+", text.lower())))
"""
_CHUNK = """
def chunk(items, size):
    if size <= 0:
        raise ValueError("size must be positive")
    return [items[i:i + size] for i in range(0, len(items), size)]
"""
RIGHT |= {
    "code-palindrome": Evidence("Here you go:\n" + _fenced("python", _PALINDROME)),
    "code-roman": Evidence("", {"implement": {"code": _ROMAN, "language": "python"}}),
    "code-merge-intervals": Evidence(_fenced("py", _MERGE)),
    "code-word-frequencies": Evidence(_fenced("python", _WORDS)),
    "code-chunk": Evidence(
        "A first attempt:\n```python\ndef chunk(\n```\nFixed:\n" + _fenced("python", _CHUNK)
    ),
}

_RETRIEVED_WRONG = (
    "From the indexed documents:\n- The billing service issues invoices for every shipment "
    "Halcyon Freight delivers. (quality/billing-runbook.md #0)"
)
WRONG: dict[str, Evidence] = {
    "explain-reconciliation": Evidence(
        "From the indexed documents:\n- The nightly reconciliation job compares the ledger with "
        "the payment processor's settlement files."
    ),
    "explain-krakatoa-nodes": Evidence(
        "Krakatoa keeps every object with a replication factor of 3."
    ),
    "explain-release-manager": Evidence("Priya Raghunathan signs off every train."),
    "explain-inc-4471": Evidence("The outage lasted 47 minutes on 14 March."),
    "explain-escalation": Evidence(_RETRIEVED_WRONG),
    "explain-quill": Evidence("A dock window is the two-hour slot in which a truck may unload."),
    "explain-tcp-udp": Evidence(_RETRIEVED_WRONG),
    "explain-raft": Evidence(
        "From the indexed documents:\n- Every arm grants the orchestrator credits on its Execute "
        "stream."
    ),
    "explain-admin-port": Evidence("The admin API listens on port 9090."),
    "data-sum-of-squares": Evidence("The sum is 5050."),
    "data-mean-delivery": Evidence("The mean is 39 hours.", {"compute": {"stdout": "39\n"}}),
    "data-order-revenue": Evidence("Plan for: compute the revenue of the orders in the context."),
    "data-compound-interest": Evidence("The deposit grows to 14,802 euros."),
    "data-total-weight": Evidence("The heaviest shipment, HF-1004, weighs 510 kg."),
    "security-ticket-pii": Evidence(
        "Found an e-mail address (jane.doe@example.org) and a credit card number."
    ),
    "security-aws-config": Evidence(_RETRIEVED_WRONG),
    "security-hr-note": Evidence("Contains a phone number; the SSN 536228401 is fine to share."),
    "security-ci-log": Evidence(
        "Found a GitHub token.", {"assess": {"findings": [{"kind": "GITHUB_TOKEN"}]}}
    ),
    "infra-deployment": Evidence(
        RIGHT["infra-deployment"].answer.replace("replicas: 3", "replicas: 1")
    ),
    "infra-service": Evidence(
        RIGHT["infra-service"].answer.replace("targetPort: 8080", "targetPort: 80")
    ),
    "infra-cronjob": Evidence(
        "Plan for: Write a Kubernetes CronJob named nightly-report that runs the image "
        "busybox:1.36 every 15 minutes.\n1. [retriever] context\n2. [coder] draft_change"
    ),
    "infra-hpa": Evidence(
        RIGHT["infra-hpa"].answer.replace("kind: HorizontalPodAutoscaler", "kind: Deployment")
    ),
    "multi-three-facts": Evidence("It starts at 02:40 UTC and Krakatoa has 48 storage nodes."),
    "multi-incident": Evidence("An expired certificate on gw-east-2 caused it."),
    "multi-quota-freeze": Evidence("Code freeze begins 36 hours before the train leaves."),
    "code-palindrome": Evidence(
        _fenced("python", "def is_palindrome(text):\n    return text == text[::-1]\n")
    ),
    "code-roman": Evidence(
        _fenced(
            "python",
            "def roman_to_int(numeral):\n"
            "    values = {'I': 1, 'V': 5, 'X': 10, 'L': 50, 'C': 100, 'D': 500, 'M': 1000}\n"
            "    return sum(values[c] for c in numeral)\n",
        )
    ),
    "code-merge-intervals": Evidence(
        "Plan for: Write a Python function merge_intervals(intervals) ...\n1. [coder] implement"
    ),
    "code-word-frequencies": Evidence(
        _fenced("python", "def word_frequencies(text):\n    return {w: 1 for w in text.split()}\n")
    ),
    # NOTE: exits before the benchmark's tests run: an exit code of 0 alone is no pass.
    "code-chunk": Evidence(
        _fenced(
            "python",
            "import sys\n\ndef chunk(items, size):\n    return [items]\n\nsys.exit(0)\n",
        )
    ),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runner() -> AsyncIterator[MeshCodeRunner]:
    """The benchmark's offline mesh; code answers run in its executor arm's sandbox."""
    async with (
        quality_mesh(MeshConfig()) as mesh,
        grpc.aio.insecure_channel(mesh.address) as channel,
    ):
        yield MeshCodeRunner(pb_grpc.OrchestratorServiceStub(channel))


def test_every_goal_has_a_right_and_a_wrong_answer_here() -> None:
    """The checker tests below cover every goal of the benchmark."""
    assert set(RIGHT) == set(BY_ID) == set(WRONG)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("goal_id", sorted(BY_ID))
async def test_checker_accepts_the_right_answer(goal_id: str, runner: MeshCodeRunner) -> None:
    """A hand-made right answer to each goal is judged correct."""
    verdict = await BY_ID[goal_id].checker.check(RIGHT[goal_id], runner)
    assert verdict.correct, verdict.why


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("goal_id", sorted(BY_ID))
async def test_checker_rejects_the_wrong_answer(goal_id: str, runner: MeshCodeRunner) -> None:
    """A hand-made wrong answer to each goal (a missing fact, a wrong number, a leaked secret,
    failing code, a wrong manifest field) is judged wrong."""
    verdict = await BY_ID[goal_id].checker.check(WRONG[goal_id], runner)
    assert not verdict.correct, verdict.why


@pytest.mark.asyncio(loop_scope="module")
async def test_code_that_copies_the_goal_is_not_code(runner: MeshCodeRunner) -> None:
    """A plan restating the goal names the function but defines nothing: no code to test."""
    goal = BY_ID["code-roman"]
    verdict = await goal.checker.check(Evidence(f"Plan for: {goal.goal}"), runner)
    assert not verdict.correct
    assert "no code defines roman_to_int" in verdict.why


@pytest.mark.parametrize("goal", GOALS, ids=lambda g: g.goal_id)
def test_no_goal_gives_its_answer_away(goal: Goal) -> None:
    """No expected fact, number or kind name is in the goal or its context, so an answer that
    copies the input never passes."""
    assert goal.checker.inputs_leak(goal.goal) == []
    assert goal.checker.inputs_leak(json.dumps(dict(goal.context))) == []


@pytest.mark.parametrize(
    "goal",
    [g for g in GOALS if isinstance(g.checker, FactsPresent)],
    ids=lambda g: g.goal_id,
)
def test_retrieval_facts_are_in_the_corpus_and_not_in_the_sample_docs(goal: Goal) -> None:
    """Each fact a retrieval goal expects is in benchmarks/quality_corpus and in none of the
    bundled sample documents."""
    assert isinstance(goal.checker, FactsPresent)
    corpus = "\n".join(p.read_text() for p in sorted(CORPUS.glob("*.md")))
    samples = "\n".join(p.read_text() for p in sorted(SAMPLE_DOCS.glob("*.md")))
    for fact in goal.checker.facts:
        assert fact.found_in(corpus), fact.label()
        assert not fact.found_in(samples), fact.label()


def test_uncovered_questions_are_not_in_the_corpus() -> None:
    """The questions the documents must not answer are about words the corpus never uses."""
    corpus = "\n".join(p.read_text() for p in sorted(CORPUS.glob("*.md"))).lower()
    for word in ("udp", "raft", "admin api", "port", "leader"):
        assert not re.search(rf"\b{word}\b", corpus), word


def test_the_goal_set_covers_every_category() -> None:
    """At least 24 goals: 5 explain, 4 code, 4 data, 4 security, 3 infrastructure, 3 multi-part,
    with unique ids."""
    assert len(GOALS) >= 24
    assert len(BY_ID) == len(GOALS)
    minimum = {"explain": 5, "code": 4, "data": 4, "security": 4, "infrastructure": 3}
    for category in CATEGORIES:
        assert sum(g.category == category for g in GOALS) >= minimum.get(category, 3), category
    assert sum(isinstance(g.checker, NotCovered) for g in GOALS) >= 2
    assert all(isinstance(g.checker, CodePasses) for g in GOALS if g.category == "code")


def test_select_takes_the_categories_in_turn() -> None:
    """--goals N picks from each category in turn; --category and --only filter."""
    picked = select(GOALS, [], [], len(CATEGORIES))
    assert sorted(g.category for g in picked) == sorted(CATEGORIES)
    assert {g.category for g in select(GOALS, ["code", "data"], [], 0)} == {"code", "data"}
    assert [g.goal_id for g in select(GOALS, [], ["infra-hpa", "explain-raft"], 0)] == [
        "explain-raft",
        "infra-hpa",
    ]


def test_number_and_not_found_readers() -> None:
    """Numbers are read whole (thousands separators, decimals, percentages) and "not found"
    answers are recognised."""
    assert has_number("total: 338,350 units", 338350)
    assert has_number("grows to 14802.44 EUR", 14802.44)
    assert has_number("at 70% CPU", 70)
    assert not has_number("version 1.27.3", 1.27)
    assert not has_number("HF-1140", 1140)
    assert says_not_found("This is not found in the indexed documents.")
    assert says_not_found("The documents don't mention it.")
    assert says_not_found("I couldn\u2019t find that in the indexed documents.")
    assert not says_not_found("The reconciliation job starts at 02:40 UTC.")


def test_a_short_offline_run_prints_one_table(tmp_path: Path) -> None:
    """`python -m benchmarks.quality --only ...` offline prints the command, the mesh, one table
    (a row per category run and the total, the outcomes summing to the goals), and writes the
    same figures as JSON; exit code 1 with --fail-on-false-success exactly when an answer was a
    false success."""
    out = tmp_path / "quality.json"
    argv = [
        sys.executable,
        "-m",
        "benchmarks.quality",
        "--only",
        "explain-inc-4471,security-ticket-pii,code-roman",
        "--json",
        str(out),
        "--fail-on-false-success",
    ]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("$ python -m benchmarks.quality --only"), proc.stdout
    assert lines[1].startswith("mesh: offline (no LLM); arms ")
    for arm in ("planner", "retriever", "coder", "executor", "judge", "safety"):
        assert arm in lines[1]
    assert "echo" not in lines[1]
    assert lines[2].startswith("corpus: ")
    header = next(line for line in lines if line.startswith("category"))
    for column in ("goals", "correct", "false success", "honest failure", "wrong failure"):
        assert column in header
    assert "p50 s/goal" in header
    assert "tokens" in header
    rows = {
        line.split()[0]: line
        for line in lines
        if re.match(r"^(explain|code|security|total) ", line)
    }
    assert set(rows) == {"explain", "code", "security", "total"}
    total = [int(x) for x in rows["total"].split()[1:6]]
    assert total[0] == 3
    assert sum(total[1:]) == 3
    assert re.search(r"^false success: \d+ \(target 0: (met|MISSED)\)$", proc.stdout, re.M)

    document = json.loads(out.read_text())
    assert [g["goal_id"] for g in document["goals"]] == [
        "explain-inc-4471",
        "code-roman",
        "security-ticket-pii",
    ]
    assert {g["verdict"] for g in document["goals"]} <= {
        "correct",
        "false success",
        "honest failure",
        "wrong failure",
    }
    false_successes = sum(g["verdict"] == "false success" for g in document["goals"])
    assert document["table"][-1]["counts"]["false success"] == false_successes == total[2]
    assert proc.returncode == (1 if false_successes else 0), proc.stderr[-2000:]


@pytest.mark.asyncio(loop_scope="module")
async def test_llm_url_wires_the_brain_and_arms_to_the_endpoint_and_its_model() -> None:
    """With --llm-url and no --model, the mesh uses the endpoint's first listed model, its calls
    go to that endpoint, and the report names the model and says the endpoint still answers."""
    fake = await FakeOpenAI([completion({})]).start()
    try:
        args = argument_parser().parse_args(["--llm-url", fake.base_url, "--only", "explain-quill"])
        mesh, results, notes = await measure(args)
    finally:
        await fake.close()
    assert fake.requests
    assert {r.get("model") for r in fake.requests} == {"fake-model"}
    assert [r.goal.goal_id for r in results] == ["explain-quill"]
    lines = report("python -m benchmarks.quality", mesh, results, notes)
    assert lines[1].startswith(f"mesh: LLM {fake.base_url} model fake-model; arms ")
    assert "LLM endpoint after the run: lists fake-model" in lines


@pytest.mark.asyncio(loop_scope="module")
async def test_a_dead_llm_endpoint_is_reported_after_the_run() -> None:
    """Against an endpoint that refuses connections the goals still end, the table is printed,
    and the report says the endpoint was unreachable at the end."""
    url = refused_base_url()
    args = argument_parser().parse_args(
        ["--llm-url", url, "--model", "m1", "--only", "explain-quill"]
    )
    mesh, results, notes = await measure(args)
    lines = report("python -m benchmarks.quality", mesh, results, notes)
    assert lines[1].startswith(f"mesh: LLM {url} model m1; arms ")
    assert any(line.startswith("total ") for line in lines)
    assert "LLM endpoint after the run: unreachable" in lines
