"""The offline planner: template DAGs per domain and complexity over the canonical arm types.

Simple goals get 3 steps, medium 5, complex up to 7, with fan-out where work is independent
(two retrievals, tests next to a safety review). Steps are then fitted to the served arms (see
`remap`); optional steps are dropped, last first, while the estimate exceeds the token budget.
Given past tasks (from the task memory), the plan of a near-identical past goal is reused instead
when every arm type it needs is served and it fits the budget.

Some steps are what the goal asks for (marked "!" in the shapes): the code of a code goal, the
findings of a security goal, the numbers of a data goal, the drafted change of an
infrastructure goal that asks for an artifact (a manifest, a config, a Dockerfile: see
`_ARTIFACT_WORDS`), the documented procedure (the retrieval) of one that asks how to act on
running systems (upgrade, migrate, roll out), the facts of a general one, and the review when
the goal asks for a review. When no served arm
has the role of such a step, the goal cannot be served: planning raises `MissingCapability`
naming the capabilities, instead of a plan that leaves the goal's deliverable out. Code handed
over in the task's context (see `GivenInputs`), or fenced in a goal asking to run it, is run by
the executor, with no coder, unless the goal asks for code to be written or changed. Text
handed over (in the context, or quoted in a goal asking for a scan for secrets or personal data)
is what the safety arm scans; when the goal asks for that scan, the plan is the scan (its report
is the answer) and the review.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from .coverage import goal_parts
from .episode import Episode, reusable_episode
from .intent import Complexity, ParsedIntent
from .lexicon import Domain
from .plan import (
    ArmCapability,
    ExecutionPlan,
    GivenInputs,
    MissingCapability,
    MissingRole,
    NoArmsAvailable,
    PlanBudget,
    PlannedStep,
    estimate,
    profile_of,
    role_of,
    sink_ids,
)
from .plan_checks import drop_idle_runs, validate_plan
from .remap import drop_steps, fit_arm_type, remap_steps
from .words import words


@dataclass(frozen=True, slots=True)
class StepTemplate:
    """A step of a template plan."""

    step_id: str
    arm_type: str
    task: str
    depends_on: tuple[str, ...] = ()
    criteria: tuple[str, ...] = ()
    optional: bool = False
    essential: bool = False  # the goal cannot be served without it


# Step library: id -> (arm type, task, acceptance criteria separated by ";").
_SHARED = {
    "review": (
        "judge",
        "Review the result against the goal and every constraint; give a verdict with reasons",
        "gives a pass or fail verdict; explains the reasons",
    ),
    "plan_changes": (
        "planner",
        "Plan the code changes, file by file",
        "lists the changes in order",
    ),
    "safety_check": ("safety", "Check the result for secrets, PII and unsafe operations", ""),
}
_STEPS: dict[Domain, dict[str, tuple[str, str, str]]] = {
    "code": {
        "context": (
            "retriever",
            "Find the code, files and documentation relevant to the goal",
            "names the relevant files",
        ),
        "context_docs": ("retriever", "Find documentation, issues and prior art for the goal", ""),
        "implement": (
            "coder",
            "Write or change the code to achieve the goal",
            "addresses the goal; respects every constraint",
        ),
        "test": ("executor", "Run the tests that cover the change", "reports the test results"),
    },
    "security": {
        "context": ("retriever", "Gather the code, configuration and facts in scope", ""),
        "advisories": ("retriever", "Find known advisories and CVEs for what is in scope", ""),
        "plan_assessment": ("planner", "Plan the assessment: assets, threats, checks", ""),
        "assess": (
            "safety",
            "Assess the security risks and list the findings",
            "lists findings with severity",
        ),
        "inspect_code": ("coder", "Inspect the relevant code for vulnerabilities", ""),
        "verify": ("executor", "Reproduce or verify the findings safely in a sandbox", ""),
    },
    "data": {
        "fetch_data": ("retriever", "Locate and load the data the goal is about", ""),
        "fetch_schema": ("retriever", "Find the schemas and data dictionaries involved", ""),
        "plan_analysis": ("planner", "Plan the analysis: questions, methods, outputs", ""),
        "analyze": (
            "coder",
            "Analyze the data to answer the goal",
            "answers the goal with numbers",
        ),
        "write_analysis": ("coder", "Write the analysis or pipeline code", ""),
        "run_analysis": (
            "executor",
            "Run the analysis and collect the results",
            "answers the goal with numbers",
        ),
    },
    "infrastructure": {
        "context": ("retriever", "Find the configuration, manifests and docs in scope", ""),
        "runbooks": ("retriever", "Find runbooks and past incidents for these systems", ""),
        "plan_rollout": ("planner", "Plan the change, its rollout and its rollback", ""),
        "draft_change": (
            "coder",
            "Draft the configuration or infrastructure change",
            "respects every constraint",
        ),
        # NOTE: no executor step: the change is configuration (YAML, HCL), which the sandbox
        # cannot dry-run (no kubectl or terraform on its allowlist); it is checked instead.
        "check_change": (
            "safety",
            "Check the change for credentials, secrets and unsafe settings",
            "",
        ),
        "check_rollout": (
            "judge",
            "Check the change against the rollout plan: order, health checks and rollback",
            "names the rollback",
        ),
    },
    "general": {
        "outline": ("planner", "Break the goal into the questions the answer must cover", ""),
        "research": ("retriever", "Gather the facts needed to answer the goal", ""),
        "background": ("retriever", "Gather background and context for the goal", ""),
        "examples": ("retriever", "Find concrete examples for the goal", ""),
        "caveats": ("retriever", "Find the limits, caveats and counterpoints for the goal", ""),
    },
}

# DAG shapes: "id<dep,dep" per step, "?" marks a step dropped first when over budget, "!" a step
# the goal cannot be served without.
_SHAPES: dict[Domain, dict[Complexity, str]] = {
    "code": {
        "simple": "context; implement!<context; review?<implement",
        "medium": "context; plan_changes?<context; implement!<plan_changes; test<implement; "
        "review?<test",
        "complex": "context; context_docs?; plan_changes<context,context_docs; "
        "implement!<plan_changes; test<implement; safety_check?<implement; "
        "review?<test,safety_check",
    },
    "security": {
        "simple": "context; assess!<context; review?<assess",
        "medium": "context; plan_assessment?<context; assess!<plan_assessment; "
        "inspect_code?<plan_assessment; review<assess,inspect_code",
        "complex": "context; advisories?; plan_assessment<context,advisories; "
        "assess!<plan_assessment; inspect_code<plan_assessment; verify?<assess,inspect_code; "
        "review<verify",
    },
    "data": {
        "simple": "fetch_data; analyze!<fetch_data; review?<analyze",
        "medium": "fetch_data; plan_analysis?<fetch_data; write_analysis!<plan_analysis; "
        "run_analysis<write_analysis; review?<run_analysis",
        "complex": "fetch_data; fetch_schema?; plan_analysis<fetch_data,fetch_schema; "
        "write_analysis!<plan_analysis; run_analysis<write_analysis; "
        "safety_check?<write_analysis; review<run_analysis,safety_check",
    },
    "infrastructure": {
        "simple": "context; draft_change!<context; review?<draft_change",
        "medium": "context; plan_rollout?<context; draft_change!<plan_rollout; "
        "check_change<draft_change; review?<draft_change,check_change",
        "complex": "context; runbooks?; plan_rollout<context,runbooks; "
        "draft_change!<plan_rollout; check_rollout<plan_rollout,draft_change; "
        "check_change?<draft_change; review<draft_change,check_rollout,check_change",
    },
    # NOTE: the answer is the research (the integrator writes it from every step's output when
    # an LLM is configured): a planner step here would make the answer a plan of the answer.
    "general": {
        "simple": "outline; research!<outline; review?<research",
        "medium": "outline; research!<outline; background?<outline; "
        "safety_check?<research,background; review<research,background,safety_check",
        "complex": "outline; research!<outline; background?<outline; examples?<outline; "
        "caveats?<outline; safety_check?<research,background,examples,caveats; "
        "review<research,background,examples,caveats,safety_check",
    },
}
# An infrastructure goal asking for a procedure or an action on running systems (upgrade,
# migrate, roll out, roll back) rather than an artifact: the documented procedure is what it
# needs (the retrieval, "!"); a drafted change, when a coder is served, is extra.
# NOTE: the judge reviews the retrievals directly: the answer is what they found, not the plan.
_PROCEDURE_SHAPES: dict[Complexity, str] = {
    "simple": "context!; runbooks?; review?<context,runbooks",
    "medium": "context!; runbooks?; plan_rollout?<context,runbooks; draft_change?<plan_rollout; "
    "review?<context,runbooks,plan_rollout,draft_change",
    "complex": "context!; runbooks?; plan_rollout<context,runbooks; draft_change?<plan_rollout; "
    "check_rollout?<plan_rollout,draft_change; check_change?<draft_change; "
    "review<context,runbooks,check_rollout,check_change",
}
# Code given in the context, to run rather than write: the run's output is the answer.
_GIVEN_CODE_SHAPE = "run!; review?<run"
_RUN_GIVEN = (
    "executor",
    "Run the code given with the task and report what it prints",
    "reports what the code printed",
)
# Text given with the task (in the context, or quoted in a goal asking for a scan), to scan for
# secrets and personal data: the scan's report is the answer.
_GIVEN_TEXT_SHAPE = "scan!; review?<scan"
_SCAN_GIVEN = (
    "safety",
    "Look through the text handed over with the task for credentials and PII",
    "",
)
# Words of a goal that asks for a scan for secrets or personal data.
_SCAN_WORDS = frozenset(
    {
        "secret", "secrets", "pii", "personal", "credential", "credentials", "leak", "leaks",
        "leaked", "leaking", "password", "passwords", "token", "tokens", "redact", "redaction",
        "sensitive", "confidential",
    }
)  # fmt: skip
# Text quoted in a goal ('...', "...", curly quotes): an apostrophe inside a word closes nothing.
_QUOTED = re.compile(
    r"(?<!\w)'(?P<single>.+?)'(?!\w)|\"(?P<double>[^\"]+)\"|\u201c(?P<curly>[^\u201d]+)\u201d",
    re.DOTALL,
)
MIN_QUOTED_CHARS = 16
# Python fenced in a goal asking for a run ("Run this Python: ```python ...```"): code to run.
_FENCED_PYTHON = re.compile(
    r"```(?:python3?|py)[ \t]*\n(?P<code>.*?)```", re.DOTALL | re.IGNORECASE
)
_RUN_WORDS = frozenset({"run", "execute", "compute", "calculate"})
_FENCED = re.compile(r"```.*?(?:```|$)", re.DOTALL)
# Safety steps that check what other steps produced, not the text given with the task.
_RESULT_CHECKS = frozenset({"safety_check", "check_change"})
# Words of a goal that asks for code to be written or changed (a coder's work, given code or not).
_WRITE_WORDS = frozenset(
    {
        "write", "implement", "refactor", "fix", "change", "modify", "edit", "create",
        "generate", "add", "build", "draft", "rewrite", "port", "optimize", "optimise",
    }
)  # fmt: skip
# Words of an infrastructure goal that asks for an artifact (beyond `_WRITE_WORDS`): new
# resources to declare, or the kind of file to write. Its drafted change is then the deliverable.
_ARTIFACT_WORDS = frozenset(
    {
        "deploy", "provision", "configure", "containerize", "containerise", "define", "author",
        "manifest", "manifests", "dockerfile", "yaml", "yml", "hcl", "terraform", "helm",
        "chart", "playbook", "spec", "config", "configuration", "script",
    }
)  # fmt: skip
# Words a question starts with (a code goal asking one is answered like a general question).
_QUESTION_WORDS = frozenset(
    {"how", "what", "why", "when", "where", "which", "who", "whom", "whose", "is", "are", "does",
     "do", "can", "explain", "describe"}
)  # fmt: skip
# Passages a retrieval asks for per part of the goal: one search ranks the chunks answering
# the other parts of a several-question goal below the first few.
RETRIEVAL_PER_PART = 5
MAX_RETRIEVAL = 50  # the retriever's own top_k bound
# Words of a goal that asks for a review: its review step is then part of what is asked.
_REVIEW_WORDS = frozenset(
    {
        "review", "judge", "grade", "critique", "verdict", "validate", "verify", "evaluate",
        "assess", "audit",
    }
)  # fmt: skip


def _build(library: dict[str, tuple[str, str, str]], shape: str) -> tuple[StepTemplate, ...]:
    steps = []
    for item in shape.split(";"):
        head, _, deps = item.strip().partition("<")
        step_id = head.rstrip("?!")
        arm_type, task, criteria = library[step_id]
        steps.append(
            StepTemplate(
                step_id=step_id,
                arm_type=arm_type,
                task=task,
                depends_on=tuple(d for d in deps.split(",") if d),
                criteria=tuple(c.strip() for c in criteria.split(";") if c.strip()),
                optional=head.endswith("?"),
                essential=head.endswith("!"),
            )
        )
    return tuple(steps)


TEMPLATES: dict[Domain, dict[Complexity, tuple[StepTemplate, ...]]] = {
    domain: {
        complexity: _build({**_SHARED, **_STEPS[domain]}, shape)
        for complexity, shape in shapes.items()
    }
    for domain, shapes in _SHAPES.items()
}
GIVEN_CODE_TEMPLATE = _build({**_SHARED, "run": _RUN_GIVEN}, _GIVEN_CODE_SHAPE)
GIVEN_TEXT_TEMPLATE = _build({**_SHARED, "scan": _SCAN_GIVEN}, _GIVEN_TEXT_SHAPE)
PROCEDURE_TEMPLATES: dict[Complexity, tuple[StepTemplate, ...]] = {
    complexity: _build({**_SHARED, **_STEPS["infrastructure"]}, shape)
    for complexity, shape in _PROCEDURE_SHAPES.items()
}

_TECH_AWARE = frozenset({"coder", "executor"})


def _asks(intent: ParsedIntent, wanted: frozenset[str]) -> bool:
    """The goal asks with a word of `wanted` (outside what it quotes: that is data)."""
    return bool(wanted & set(words(_QUOTED.sub(" ", _FENCED.sub(" ", intent.goal)))))


def runs_given_code(intent: ParsedIntent, given: GivenInputs | None) -> bool:
    """The context hands over Python code and the goal does not ask for code to be written."""
    return given is not None and bool(given.python) and not _asks(intent, _WRITE_WORDS)


def asks_a_question(intent: ParsedIntent) -> bool:
    """A code goal that asks a question ("how many hours before code freeze?", "how does the
    client retry?") and no code to be written: answered like any question, from what the
    retrieval finds, with no coder."""
    if intent.domain != "code" or _asks(intent, _WRITE_WORDS):
        return False
    asked = _QUOTED.sub(" ", _FENCED.sub(" ", intent.goal)).strip()
    first = asked.split(maxsplit=1)[0].lower() if asked else ""
    return "?" in asked or first in _QUESTION_WORDS


def asks_for_procedure(intent: ParsedIntent) -> bool:
    """An infrastructure goal asking how to act on running systems (upgrade, migrate, roll
    out...), not for an artifact (a manifest, a config, a Dockerfile: anything to write)."""
    return intent.domain == "infrastructure" and not _asks(intent, _WRITE_WORDS | _ARTIFACT_WORDS)


def quoted_text(goal: str) -> str:
    """The text a goal quotes (at least `MIN_QUOTED_CHARS` per quote), quotes joined by lines."""
    quotes = (next(g for g in m.groups() if g is not None) for m in _QUOTED.finditer(goal))
    return "\n".join(q.strip() for q in quotes if len(q.strip()) >= MIN_QUOTED_CHARS)


def given_for(intent: ParsedIntent, given: GivenInputs | None) -> GivenInputs | None:
    """`given`, completed from the goal where the context gives nothing: the Python the goal
    fences (```python ... ```) as the code to run when it asks for a run, and the text it
    quotes as the text to scan when it asks for a scan for secrets or personal data."""
    python = given.python if given is not None else ""
    text = given.text if given is not None else ""
    if not python and _asks(intent, _RUN_WORDS):
        python = "\n\n".join(m.group("code") for m in _FENCED_PYTHON.finditer(intent.goal))
    if not text and _asks(intent, _SCAN_WORDS):
        text = quoted_text(_FENCED.sub(" ", intent.goal))
    completed = GivenInputs(python=python, text=text)
    return completed if completed else given


def scans_given_text(intent: ParsedIntent, given: GivenInputs | None) -> bool:
    """Text is given and the goal asks for it to be scanned for secrets or personal data (and
    not for code to be written)."""
    return (
        given is not None
        and bool(given.text)
        and _asks(intent, _SCAN_WORDS)
        and not _asks(intent, _WRITE_WORDS)
    )


def template_for(
    intent: ParsedIntent, given: GivenInputs | None = None
) -> tuple[StepTemplate, ...]:
    """The template of the goal's domain and complexity (for an infrastructure goal asking for
    a procedure, the one whose deliverable is the retrieval); the run of the given code when
    the context hands over code and the goal does not ask for code to be written; the scan of
    the given text when the goal asks for one; in each, the review is essential when the goal
    asks for a review. `given` as `given_for` makes it."""
    if runs_given_code(intent, given):
        template = GIVEN_CODE_TEMPLATE
    elif scans_given_text(intent, given):
        template = GIVEN_TEXT_TEMPLATE
    elif asks_for_procedure(intent):
        template = PROCEDURE_TEMPLATES[intent.complexity]
    elif asks_a_question(intent):
        template = TEMPLATES["general"][intent.complexity]
    else:
        template = TEMPLATES[intent.domain][intent.complexity]
    if not _asks(intent, _REVIEW_WORDS):
        return template
    return tuple(
        dataclasses.replace(t, essential=True, optional=False) if t.arm_type == "judge" else t
        for t in template
    )


def step_input(
    intent: ParsedIntent,
    task: str,
    arm_type: str,
    given: GivenInputs | None = None,
    step_id: str = "",
) -> dict[str, object]:
    """What a step receives: the goal, the constraints and its own task (plus useful entities,
    and the text given with the task for a safety step to scan, unless the step checks what
    other steps produced)."""
    data: dict[str, object] = {
        "goal": intent.goal,
        "constraints": list(intent.constraints),
        "task": task,
    }
    if arm_type == "retriever" and intent.keywords:
        data["query"] = " ".join(intent.keywords)
    parts = len(goal_parts(intent.goal))
    if arm_type == "retriever" and parts > 1:
        data["top_k"] = min(RETRIEVAL_PER_PART * parts, MAX_RETRIEVAL)
    files = intent.entities.get("files") or []
    if files and arm_type in ("retriever", "coder", "executor", "safety"):
        data["files"] = list(files)
    if given is not None and given.text and arm_type == "safety" and step_id not in _RESULT_CHECKS:
        data["text"] = given.text
    return data


def with_given(plan: ExecutionPlan, given: GivenInputs | None) -> ExecutionPlan:
    """`plan` (an LLM's) with the context's given inputs where its steps lack them: the text
    for safety steps to scan, the code for executor steps with no program and no coder step
    before them to write one."""
    if not given:
        return plan
    arm_of = {s.step_id: s.arm_type for s in plan.steps}

    def filled(step: PlannedStep) -> PlannedStep:
        extra: dict[str, object] = {}
        if step.arm_type == "safety" and given.text and "text" not in step.input:
            extra["text"] = given.text
        if (
            step.arm_type == "executor"
            and given.python
            and not {"command", "python"} & step.input.keys()
            and not any(arm_of.get(d) == "coder" for d in step.depends_on)
        ):
            extra["python"] = given.python
        return dataclasses.replace(step, input={**step.input, **extra}) if extra else step

    return dataclasses.replace(plan, steps=tuple(filled(s) for s in plan.steps))


def missing_roles(
    template: Sequence[StepTemplate], planned: Sequence[PlannedStep], arms: Sequence[ArmCapability]
) -> list[MissingRole]:
    """The essential steps of `template` (as `planned`) that no arm in `arms` can run."""
    essential = {t.step_id for t in template if t.essential}
    return [
        MissingRole(step.step_id, step.arm_type, role_of(step))
        for step in planned
        if step.step_id in essential and fit_arm_type(step, arms) is None
    ]


def check_roles(
    intent: ParsedIntent, arms: Sequence[ArmCapability], given: GivenInputs | None = None
) -> None:
    """Raise `MissingCapability` when the goal needs a step whose role no arm in `arms` has."""
    given = given_for(intent, given)
    template = template_for(intent, given)
    planned = [_planned(intent, t.step_id, t.task, t.arm_type, t.depends_on) for t in template]
    missing = missing_roles(template, planned, arms)
    if missing:
        raise MissingCapability(missing)


def with_task_criteria(
    steps: Sequence[PlannedStep], criteria: Sequence[str]
) -> tuple[PlannedStep, ...]:
    """The task's own acceptance criteria added to every sink step (they carry the answer)."""
    if not criteria:
        return tuple(steps)
    sinks = set(sink_ids(steps))
    return tuple(
        PlannedStep(
            step_id=s.step_id,
            description=s.description,
            arm_type=s.arm_type,
            input=s.input,
            depends_on=s.depends_on,
            acceptance_criteria=tuple(dict.fromkeys([*s.acceptance_criteria, *criteria])),
            required_capabilities=s.required_capabilities,
        )
        if s.step_id in sinks
        else s
        for s in steps
    )


class HeuristicPlanner:
    """Deterministic template planning; see the module docstring. Only plan_id is random."""

    def plan(
        self,
        intent: ParsedIntent,
        arms: Sequence[ArmCapability],
        budget: PlanBudget | None = None,
        *,
        acceptance_criteria: Sequence[str] = (),
        past: Sequence[Episode] = (),
        given: GivenInputs | None = None,
    ) -> ExecutionPlan:
        return self.draft(
            intent, arms, budget, acceptance_criteria=acceptance_criteria, past=past, given=given
        )[0]

    def draft(
        self,
        intent: ParsedIntent,
        arms: Sequence[ArmCapability],
        budget: PlanBudget | None = None,
        *,
        acceptance_criteria: Sequence[str] = (),
        past: Sequence[Episode] = (),
        given: GivenInputs | None = None,
    ) -> tuple[ExecutionPlan, list[str]]:
        """The plan and notes on what was re-mapped, dropped or trimmed for the budget.

        Raises `MissingCapability` when a step the goal needs has a role no arm in `arms` has,
        `NoArmsAvailable` when no step at all can run."""
        given = given_for(intent, given)
        reused = None if given else self._reuse(intent, arms, budget, acceptance_criteria, past)
        if reused is not None:
            return reused, []
        template = template_for(intent, given)
        runs_given = runs_given_code(intent, given)
        steps = [
            _planned(
                intent,
                t.step_id,
                t.task,
                t.arm_type,
                t.depends_on,
                t.criteria,
                given=given,
                program=given.python if given and runs_given and t.step_id == "run" else "",
            )
            for t in template
        ]
        missing = missing_roles(template, steps, arms)
        if missing:
            raise MissingCapability(missing)
        remapped = remap_steps(steps, arms)
        if not remapped.steps:
            raise NoArmsAvailable(remapped.missing_types)
        notes = list(remapped.notes)
        kept, idle = drop_idle_runs(remapped.steps)
        if idle:
            notes.append(f"no coder writes code for {', '.join(idle)} to run: dropped")
        limit = budget.max_tokens if budget is not None else 0
        optional = [t.step_id for t in template if t.optional]
        while limit > 0 and estimate(kept)[1] > limit and optional:
            victim = optional.pop()
            if any(s.step_id == victim for s in kept) and len(kept) > 1:
                kept = drop_steps(kept, {victim})
                notes.append(f"step {victim} dropped to fit the budget of {limit} tokens")
        duration, tokens = estimate(kept)
        final = with_task_criteria(kept, acceptance_criteria)
        if runs_given:
            shape = "given-code"
        elif scans_given_text(intent, given):
            shape = "given-text"
        else:
            shape = f"{intent.complexity} {intent.domain}"
            shape += " procedure" if asks_for_procedure(intent) else ""
        rationale = (
            f"heuristic {shape} template: "
            f"{len(final)} step(s) over {', '.join(dict.fromkeys(s.arm_type for s in final))}"
        )
        plan = ExecutionPlan(
            plan_id=str(uuid.uuid4()),
            steps=final,
            estimated_duration_s=duration,
            estimated_tokens=tokens,
            rationale=rationale,
        )
        return plan, notes

    @staticmethod
    def _reuse(
        intent: ParsedIntent,
        arms: Sequence[ArmCapability],
        budget: PlanBudget | None,
        acceptance_criteria: Sequence[str],
        past: Sequence[Episode],
    ) -> ExecutionPlan | None:
        """The plan of a near-identical past task, when every arm type it needs is served now
        and it still passes the plan checks (budget included); else None."""
        served = {a.arm_type for a in arms}
        episode = reusable_episode(past, served)
        if episode is None:
            return None
        steps = [
            _planned(intent, s.step_id, s.description, s.arm_type, s.depends_on)
            for s in episode.steps
        ]
        duration, tokens = estimate(steps)
        plan = ExecutionPlan(
            plan_id=str(uuid.uuid4()),
            steps=with_task_criteria(steps, acceptance_criteria),
            estimated_duration_s=duration,
            estimated_tokens=tokens,
            rationale=(
                f"reused the plan of a similar past task {episode.task_id} "
                f"(score {episode.score:.2f})"
            ),
        )
        return None if validate_plan(plan, served, budget) else plan


def _planned(
    intent: ParsedIntent,
    step_id: str,
    task: str,
    arm_type: str,
    depends_on: tuple[str, ...],
    criteria: tuple[str, ...] = (),
    *,
    given: GivenInputs | None = None,
    program: str = "",
) -> PlannedStep:
    """A step of an offline plan. It asks its arm for the arm type's main capability, plus the
    goal's technologies on the arms that write or run code; `program` is Python for it to run."""
    data = step_input(intent, task, arm_type, given, step_id)
    if program:
        data["python"] = program
    technologies = (
        tuple(t.lower() for t in intent.entities.get("technologies", []))
        if arm_type in _TECH_AWARE
        else ()
    )
    return PlannedStep(
        step_id=step_id,
        description=task,
        arm_type=arm_type,
        input=data,
        depends_on=depends_on,
        acceptance_criteria=criteria,
        required_capabilities=profile_of(arm_type).capabilities[:1] + technologies,
    )
