"""The heuristic intent parser on realistic goals, and the LLM parser on a fake server."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator_svc.brain import HeuristicIntentParser, LLMIntentParser, ParsedIntent
from tests.llm.conftest import MakeClient, StartFake
from tests.llm.fake_openai import completion

parser = HeuristicIntentParser()

README_SAMPLE = "Explain how the mesh runs a fan-out/fan-in plan across specialist arms"
AUTH_BUG = "Find and fix the authentication bug in auth/login.py. Don't modify the database schema."
PIPELINE = (
    "Design a data pipeline that ingests CSV files from S3, then validates the schema, "
    "transforms the records with pandas, loads them into PostgreSQL, and finally write tests "
    "and deploy it with Kubernetes."
)


def test_readme_sample_is_a_simple_general_task() -> None:
    """The README's sample goal parses as general/simple with its salient words as keywords."""
    intent = parser.parse(README_SAMPLE)
    assert intent.goal == README_SAMPLE
    assert intent.domain == "general"
    assert intent.complexity == "simple"
    assert intent.keywords[:4] == ["mesh", "runs", "fan-out", "fan-in"]
    assert {"plan", "specialist", "arms"} <= set(intent.keywords)
    assert "explain" not in intent.keywords
    assert intent.entities == {"files": [], "functions": [], "technologies": [], "urls": []}
    assert intent.constraints == []


def test_auth_bug_is_medium_code_with_file_and_constraint() -> None:
    """The guide's auth-bug example: code, medium, the file, Python, and the stated constraint."""
    intent = parser.parse(AUTH_BUG)
    assert intent.domain == "code"
    assert intent.complexity == "medium"
    assert intent.entities["files"] == ["auth/login.py"]
    assert intent.entities["technologies"] == ["Python"]
    assert intent.constraints == ["Don't modify the database schema."]
    assert intent.keywords[:2] == ["authentication", "bug"]
    assert "find" not in intent.keywords
    assert "fix" not in intent.keywords


def test_given_constraints_come_first_and_are_not_duplicated() -> None:
    """Caller constraints are kept verbatim, before those found in the goal, without repeats."""
    intent = parser.parse(
        AUTH_BUG, ["Finish within 5 minutes", "Don't modify the database schema."]
    )
    assert intent.constraints == ["Finish within 5 minutes", "Don't modify the database schema."]


@pytest.mark.parametrize(
    ("goal", "domain"),
    [
        ("Write a Python function that reverses a string", "code"),
        ("Audit the login flow for SQL injection and XSS vulnerabilities", "security"),
        ("Analyze sales.csv and plot the monthly revenue trend", "data"),
        ("Deploy the api service to the Kubernetes cluster with a Helm chart", "infrastructure"),
        ("Summarize the history of the Roman empire", "general"),
        (PIPELINE, "data"),
    ],
)
def test_domain_by_weighted_keywords(goal: str, domain: str) -> None:
    """Each domain is recognised from its vocabulary, technologies and file types."""
    assert parser.parse(goal).domain == domain


def test_context_domain_hint_wins() -> None:
    """A valid `domain` in the context overrides the keyword vote."""
    assert parser.parse(README_SAMPLE, context={"domain": "infrastructure"}).domain == (
        "infrastructure"
    )
    assert parser.parse(README_SAMPLE, context={"domain": "poetry"}).domain == "general"


@pytest.mark.parametrize(
    ("goal", "constraints", "complexity"),
    [
        ("Summarize the history of the Roman empire", [], "simple"),
        ("Analyze sales.csv and plot the monthly revenue trend", [], "medium"),
        (
            "Summarize the history of the Roman empire",
            ["under 200 words", "cite sources"],
            "medium",
        ),
        (PIPELINE, [], "complex"),
        (
            "Migrate the service:\n1. export the data\n2. convert it\n3. import it\n"
            "4. verify the counts",
            [],
            "complex",
        ),
    ],
)
def test_complexity_from_length_steps_and_constraints(
    goal: str, constraints: list[str], complexity: str
) -> None:
    """Complexity grows with sequencing words, actions, list items and constraints."""
    assert parser.parse(goal, constraints).complexity == complexity


def test_entities_files_functions_technologies_urls() -> None:
    """Entities: paths with extensions, foo() names, known technologies, and URLs."""
    intent = parser.parse(
        "Refactor parse_config() and Loader.load() in src/config/loader.py and the Dockerfile; "
        "see https://docs.pydantic.dev/latest/. Keep it compatible with FastAPI and Redis."
    )
    entities = intent.entities
    assert entities["files"] == ["src/config/loader.py", "Dockerfile"]
    assert entities["functions"] == ["parse_config", "Loader.load"]
    assert entities["urls"] == ["https://docs.pydantic.dev/latest/"]
    assert {"FastAPI", "Redis", "Python", "Docker"} <= set(entities["technologies"])
    assert "docs.pydantic.dev" not in " ".join(entities["files"])
    assert intent.constraints == ["Keep it compatible with FastAPI and Redis."]


def test_context_lists_extend_entities() -> None:
    """Files (and other entity kinds) listed in the context join those found in the goal."""
    intent = parser.parse(AUTH_BUG, context={"files": ["auth/session.py"]})
    assert intent.entities["files"] == ["auth/login.py", "auth/session.py"]


def test_keywords_are_stable_and_bounded() -> None:
    """Keywords: top N by frequency, ties in order of appearance; same input, same output."""
    goal = "cache cache cache redis redis ttl eviction metrics metrics alpha beta gamma delta"
    first = HeuristicIntentParser(keyword_limit=4).parse(goal).keywords
    assert first == ["cache", "redis", "metrics", "ttl"]
    assert HeuristicIntentParser(keyword_limit=4).parse(goal).keywords == first


async def test_llm_parser_keeps_goal_and_merges_constraints(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """The LLM's fields are used; the goal stays verbatim and given constraints come first."""
    fake = await start_fake(
        [
            completion(
                {
                    "constraints": ["Don't modify the database schema"],
                    "domain": "security",
                    "complexity": "complex",
                    "keywords": ["Authentication", "login"],
                    "entities": {"files": ["auth/login.py"], "technologies": ["Python"]},
                },
                prompt_tokens=50,
                completion_tokens=20,
            )
        ]
    )
    intent, usage = await asyncio.wait_for(
        LLMIntentParser(make_client(fake.base_url)).parse(AUTH_BUG, ["Be quick"]), 20
    )
    assert isinstance(intent, ParsedIntent)
    assert intent.goal == AUTH_BUG
    assert (intent.domain, intent.complexity) == ("security", "complex")
    assert intent.constraints == ["Be quick", "Don't modify the database schema"]
    assert intent.keywords == ["authentication", "login"]
    assert intent.entities["files"] == ["auth/login.py"]
    assert intent.entities["urls"] == []
    assert usage.total_tokens == 70
    assert AUTH_BUG in fake.requests[0]["messages"][1]["content"]
