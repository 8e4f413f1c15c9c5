"""Router scoring: the guide's weights, exclusion of unusable arms, and the tie-break."""

from __future__ import annotations

import pytest

from orchestrator_svc.brain import (
    WEIGHT_AVAILABILITY,
    WEIGHT_CAPABILITY,
    WEIGHT_COST,
    WEIGHT_SUCCESS,
    ArmView,
    choose,
    ranked,
    score,
)
from orchestrator_svc.brain.router import (
    PRIOR_SUCCESS,
    availability,
    cost_efficiency,
    historical_success,
)


def arm(arm_id: str = "a", **fields: object) -> ArmView:
    base: dict[str, object] = {
        "arm_type": "coder",
        "capabilities": ("python", "code_generation"),
        "credits": 4,
        "in_flight": 0,
        "cost_tier": 1,
    }
    base.update(fields)
    return ArmView(arm_id=arm_id, **base)  # type: ignore[arg-type]


def test_weights_are_the_guides() -> None:
    """Capability 0.4, availability 0.2, historical success 0.3, cost efficiency 0.1."""
    assert (WEIGHT_CAPABILITY, WEIGHT_AVAILABILITY, WEIGHT_SUCCESS, WEIGHT_COST) == (
        0.4,
        0.2,
        0.3,
        0.1,
    )
    total = WEIGHT_CAPABILITY + WEIGHT_AVAILABILITY + WEIGHT_SUCCESS + WEIGHT_COST
    assert total == pytest.approx(1.0)


def test_total_is_the_weighted_sum_of_the_parts() -> None:
    """total = 0.4 cap + 0.2 avail + 0.3 success + 0.1 cost, each part in [0, 1]."""
    s = score(
        arm(in_flight=1, credits=3, mean_latency_s=1.0, success_rate=0.8, cost_tier=2),
        ["python", "sql"],
    )
    assert s.capability_match == 0.5
    assert s.availability == pytest.approx(0.75 * 0.75 + 0.25 * 0.5)
    assert s.historical_success == pytest.approx(0.8)
    assert s.cost_efficiency == pytest.approx(2 / 3)
    assert s.total == pytest.approx(0.4 * 0.5 + 0.2 * s.availability + 0.3 * 0.8 + 0.1 * (2 / 3))


def test_a_perfect_idle_cheap_arm_scores_one() -> None:
    """Full capability match, idle with credit, no latency, 100% success, low tier: 1.0."""
    assert score(arm(), ["python"]).total == pytest.approx(1.0)


def test_capability_match_is_the_required_share_offered() -> None:
    """|required & offered| / |required|, case-insensitive; 1.0 when nothing is required."""
    assert score(arm(), ["Python", "sql", "go", "rust"]).capability_match == 0.25
    assert score(arm(), []).capability_match == 1.0
    assert score(arm(capabilities=()), ["python"]).capability_match == 0.0


def test_availability_from_free_capacity_and_latency() -> None:
    """Free share of capacity weighs 0.75, speed 0.25; a busy or slow arm is less available."""
    idle = availability(arm(credits=4, in_flight=0))
    busy = availability(arm(credits=1, in_flight=3))
    full = availability(arm(credits=0, in_flight=4))
    slow = availability(arm(credits=4, in_flight=0, mean_latency_s=9.0))
    assert idle == pytest.approx(1.0)
    assert busy == pytest.approx(0.75 * 0.25 + 0.25)
    assert full == pytest.approx(0.25)
    assert slow == pytest.approx(0.75 + 0.25 * 0.1)
    assert availability(arm(credits=0, in_flight=0)) == pytest.approx(0.75 * 0.5 + 0.25)


def test_historical_success_is_smoothed_when_evidence_is_thin() -> None:
    """New arms score the prior (0.9); one failure does not sink an arm; evidence wins later."""
    assert historical_success(arm(success_rate=1.0, samples=0)) == pytest.approx(PRIOR_SUCCESS)
    one_failure = historical_success(arm(success_rate=0.0, samples=1))
    assert one_failure == pytest.approx(1.8 / 3)
    proven = historical_success(arm(success_rate=1.0, samples=100))
    assert proven == pytest.approx((19 + 1.8) / 21)
    assert proven > historical_success(arm(success_rate=1.0, samples=0))
    assert historical_success(arm(success_rate=0.5)) == 0.5  # samples unknown: taken as given


def test_cost_efficiency_by_tier_and_cap() -> None:
    """Low 1.0, medium 2/3, high 1/3, unspecified = medium; above max_cost_tier 0."""
    assert [cost_efficiency(t) for t in (1, 2, 3, 0)] == pytest.approx([1.0, 2 / 3, 1 / 3, 2 / 3])
    assert cost_efficiency(3, max_cost_tier=2) == 0.0
    assert score(arm(cost_tier=3), [], max_cost_tier=1).cost_efficiency == 0.0


def test_unroutable_and_draining_arms_never_win() -> None:
    """Unhealthy or draining arms score 0 and are never chosen, even if they look better."""
    sick = arm("sick", routable=False)
    draining = arm("draining", draining=True)
    weak = arm("weak", capabilities=(), success_rate=0.1, cost_tier=3, credits=0, in_flight=9)
    assert score(sick, ["python"]).total == 0.0
    assert score(draining, ["python"]).total == 0.0
    assert choose([sick, draining, weak], ["python"]) == weak
    assert choose([sick, draining], ["python"]) is None
    assert choose([], ["python"]) is None


def test_best_score_wins() -> None:
    """The arm with the higher total is chosen regardless of order."""
    good = arm("good")
    flaky = arm("flaky", success_rate=0.5)
    assert choose([flaky, good], ["python"]) == good
    assert choose([good, flaky], ["python"]) == good


def test_ties_go_to_least_in_flight_then_arm_id() -> None:
    """Equal totals (within 1e-9): least in flight wins, then the smallest arm id."""
    # Same free share (credits/(credits+in_flight) = 0.5) so totals tie exactly.
    busy = arm("a-busy", credits=4, in_flight=4)
    quiet = arm("b-quiet", credits=1, in_flight=1)
    assert score(busy, ["python"]).total == pytest.approx(score(quiet, ["python"]).total)
    assert choose([busy, quiet], ["python"]) == quiet
    twin_b = arm("twin-b")
    twin_a = arm("twin-a")
    assert choose([twin_b, twin_a], ["python"]) == twin_a
    nearly = arm("aaa", success_rate=1.0 - 1e-12)
    assert choose([arm("zzz"), nearly], ["python"]) == nearly


def test_ranked_orders_usable_arms_for_failover() -> None:
    """ranked() lists usable arms in the order choose() would pick them."""
    arms = [
        arm("c", success_rate=0.2),
        arm("b"),
        arm("x", draining=True),
        arm("a", in_flight=2, credits=2),
    ]
    assert [a.arm_id for a in ranked(arms, ["python"])] == ["b", "a", "c"]
