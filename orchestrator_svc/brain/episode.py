"""Past tasks as the planner sees them: what was asked, how it was planned, how it went.

The task memory (`store/episodes.py`) recalls these for a new goal, most similar first; the
planner shows them to the LLM, and the offline planner reuses the plan of a near-identical one.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

# NOTE: the offline planner copies a past plan only for a goal this close (cosine of the
# embeddings): the same request, give or take a word, not merely the same topic.
REUSE_MIN_SCORE = 0.95


@dataclass(frozen=True, slots=True)
class EpisodeStep:
    """One step of a past task's plan."""

    step_id: str
    arm_type: str
    description: str
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StepProvenance:
    """Which arm (and model) did a step of a past task, and what it spent."""

    step_id: str
    arm_id: str
    model: str = ""
    tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Episode:
    """A task that succeeded. `score` is its similarity to the goal it was recalled for."""

    task_id: str
    goal: str
    steps: tuple[EpisodeStep, ...]
    domain: str = ""
    answer: str = ""
    confidence: float = 0.0
    provenance: tuple[StepProvenance, ...] = ()
    score: float = 0.0

    def arm_types(self) -> frozenset[str]:
        return frozenset(s.arm_type for s in self.steps)


def reusable_episode(
    past: Sequence[Episode], served_arm_types: Collection[str], min_score: float = REUSE_MIN_SCORE
) -> Episode | None:
    """The most similar past task at `min_score` or more whose every arm type is served now."""
    served = set(served_arm_types)
    for episode in sorted(past, key=lambda e: e.score, reverse=True):
        if episode.score < min_score:
            return None
        if episode.steps and episode.arm_types() <= served:
            return episode
    return None
