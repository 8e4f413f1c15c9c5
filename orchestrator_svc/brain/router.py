"""Arm scoring and choice (pure): the guide's weighted score over live registry data.

total = 0.4 capability match + 0.2 availability + 0.3 historical success + 0.1 cost efficiency

- capability match: |required & offered| / |required|, 1.0 when nothing is required.
- availability: 0.75 x free capacity (credits / (credits + in flight); an arm with neither has
  not granted credit yet and counts as half free) + 0.25 x speed (1 / (1 + mean latency /
  `LATENCY_SCALE_S`)).
- historical success: the mesh's moving-window success rate, smoothed toward a prior when the
  evidence is thin: (rate x n + `PRIOR_SUCCESS` x `PRIOR_WEIGHT`) / (n + `PRIOR_WEIGHT`) with n
  the outcomes seen (capped at the window's effective size). A brand-new arm scores
  `PRIOR_SUCCESS` (0.9): a little below a proven arm, far above a failing one, and one failure
  does not sink it. With `samples=None` the rate is taken as given.
- cost efficiency: low tier 1.0, medium 2/3, high 1/3 (unspecified counts as medium); an arm
  above `max_cost_tier` scores 0 here.

Unroutable (unhealthy, disconnected) and draining arms score 0 and never win. Ties (within 1e-9)
go to the arm with the least in flight, then the smallest arm id, so choices are deterministic.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

WEIGHT_CAPABILITY = 0.4
WEIGHT_AVAILABILITY = 0.2
WEIGHT_SUCCESS = 0.3
WEIGHT_COST = 0.1

FREE_CAPACITY_SHARE = 0.75
LATENCY_SCALE_S = 1.0
PRIOR_SUCCESS = 0.9
PRIOR_WEIGHT = 2.0
# The mesh keeps success as an exponential moving average (alpha 0.1): ~19 outcomes of memory.
EFFECTIVE_WINDOW = 19
TIE_EPSILON = 1e-9

COST_TIER_LOW, COST_TIER_MEDIUM, COST_TIER_HIGH = 1, 2, 3


@dataclass(frozen=True, slots=True)
class ArmView:
    """One arm as the router sees it (built by the engine from the mesh's registry)."""

    arm_id: str
    arm_type: str
    capabilities: tuple[str, ...] = ()
    routable: bool = True
    draining: bool = False
    in_flight: int = 0
    credits: int = 0
    success_rate: float = 1.0
    mean_latency_s: float = 0.0
    cost_tier: int = 0
    samples: int | None = None


@dataclass(frozen=True, slots=True)
class ArmScore:
    """The parts of an arm's score and their weighted total."""

    capability_match: float
    availability: float
    historical_success: float
    cost_efficiency: float
    total: float


EXCLUDED = ArmScore(0.0, 0.0, 0.0, 0.0, 0.0)


def capability_match(offered: Collection[str], required: Collection[str]) -> float:
    wanted = {c.lower() for c in required}
    if not wanted:
        return 1.0
    return len(wanted & {c.lower() for c in offered}) / len(wanted)


def availability(arm: ArmView) -> float:
    capacity = arm.credits + arm.in_flight
    free = arm.credits / capacity if capacity > 0 else 0.5
    speed = 1.0 / (1.0 + max(0.0, arm.mean_latency_s) / LATENCY_SCALE_S)
    return FREE_CAPACITY_SHARE * max(0.0, free) + (1 - FREE_CAPACITY_SHARE) * speed


def historical_success(arm: ArmView) -> float:
    rate = min(1.0, max(0.0, arm.success_rate))
    if arm.samples is None:
        return rate
    n = min(max(arm.samples, 0), EFFECTIVE_WINDOW)
    return (rate * n + PRIOR_SUCCESS * PRIOR_WEIGHT) / (n + PRIOR_WEIGHT)


def cost_efficiency(cost_tier: int, max_cost_tier: int = COST_TIER_HIGH) -> float:
    tier = min(max(cost_tier or COST_TIER_MEDIUM, COST_TIER_LOW), COST_TIER_HIGH)
    if tier > max_cost_tier:
        return 0.0
    return 1.0 - (tier - 1) / 3


def score(
    arm: ArmView, step_capabilities: Collection[str], *, max_cost_tier: int = COST_TIER_HIGH
) -> ArmScore:
    """The arm's score for a step needing `step_capabilities`; 0 when it must not be used."""
    if not arm.routable or arm.draining:
        return EXCLUDED
    parts = (
        capability_match(arm.capabilities, step_capabilities),
        availability(arm),
        historical_success(arm),
        cost_efficiency(arm.cost_tier, max_cost_tier),
    )
    total = (
        WEIGHT_CAPABILITY * parts[0]
        + WEIGHT_AVAILABILITY * parts[1]
        + WEIGHT_SUCCESS * parts[2]
        + WEIGHT_COST * parts[3]
    )
    return ArmScore(*parts, total=total)


def choose(
    arms: Sequence[ArmView],
    step_capabilities: Collection[str],
    *,
    max_cost_tier: int = COST_TIER_HIGH,
) -> ArmView | None:
    """The best usable arm for the step, or None when no arm may take it."""
    usable = [arm for arm in arms if arm.routable and not arm.draining]
    if not usable:
        return None
    scored = [(arm, score(arm, step_capabilities, max_cost_tier=max_cost_tier)) for arm in usable]
    best = max(s.total for _, s in scored)
    tied = [arm for arm, s in scored if best - s.total <= TIE_EPSILON]
    return min(tied, key=lambda arm: (arm.in_flight, arm.arm_id))


def ranked(
    arms: Sequence[ArmView],
    step_capabilities: Collection[str],
    *,
    max_cost_tier: int = COST_TIER_HIGH,
) -> list[ArmView]:
    """Usable arms in the order `choose` would pick them (for failover to the next best)."""
    remaining = list(arms)
    order: list[ArmView] = []
    while (arm := choose(remaining, step_capabilities, max_cost_tier=max_cost_tier)) is not None:
        order.append(arm)
        remaining.remove(arm)
    return order
