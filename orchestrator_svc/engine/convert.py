"""Conversions between the wire messages and the brain's plain models (the engine's boundary)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from google.protobuf import struct_pb2
from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk.structs import struct_to_dict

from ..brain import ArmCapability, ExecutionPlan, PlannedStep, estimate
from ..mesh import ArmConnection


def plan_to_proto(plan: ExecutionPlan) -> pb.Plan:
    message = pb.Plan(plan_id=plan.plan_id, estimated_tokens=plan.estimated_tokens)
    message.estimated_duration.FromNanoseconds(round(plan.estimated_duration_s * 1e9))
    for s in plan.steps:
        step = message.steps.add(
            step_id=s.step_id,
            description=s.description,
            arm_type=s.arm_type,
            depends_on=s.depends_on,
            acceptance_criteria=s.acceptance_criteria,
            required_capabilities=s.required_capabilities,
        )
        step.input.update(s.input)
    return message


def estimate_plan(plan: pb.Plan) -> None:
    """Set a plan's estimates (a submitted plan's are replaced) from its arm types' profiles."""
    # NOTE: only the shape counts: converting every step's input would cost more than the rest.
    shape = [
        PlannedStep(s.step_id, "", s.arm_type, depends_on=tuple(s.depends_on)) for s in plan.steps
    ]
    duration_s, tokens = estimate(shape)
    plan.estimated_tokens = tokens
    plan.estimated_duration.FromNanoseconds(round(duration_s * 1e9))


def plan_from_proto(plan: pb.Plan) -> ExecutionPlan:
    return ExecutionPlan(
        plan_id=plan.plan_id,
        estimated_duration_s=plan.estimated_duration.ToNanoseconds() / 1e9,
        estimated_tokens=plan.estimated_tokens,
        steps=tuple(
            PlannedStep(
                step_id=s.step_id,
                description=s.description,
                arm_type=s.arm_type,
                input=struct_to_dict(s.input),
                depends_on=tuple(s.depends_on),
                acceptance_criteria=tuple(s.acceptance_criteria),
                required_capabilities=tuple(s.required_capabilities),
            )
            for s in plan.steps
        ),
    )


def arm_capabilities(arms: Iterable[ArmConnection]) -> list[ArmCapability]:
    """One entry per arm type the mesh knows, merging what its replicas declare."""
    by_type: dict[str, tuple[set[str], str, int]] = {}
    for conn in arms:
        if conn.descriptor is None:
            continue
        d = conn.descriptor
        caps, description, tier = by_type.get(d.arm_type, (set(), d.description, d.cost_tier))
        caps.update(d.capabilities)
        by_type[d.arm_type] = (caps, description or d.description, max(tier, d.cost_tier))
    return [
        ArmCapability(arm_type, tuple(sorted(caps)), description, tier)
        for arm_type, (caps, description, tier) in sorted(by_type.items())
    ]


class OutputsView(Mapping[str, dict[str, Any]]):
    """Step outputs as dicts, converted on first access: integration and validation usually read
    only the final steps, and converting every Struct of a large DAG would dominate them."""

    def __init__(self, outputs: Mapping[str, struct_pb2.Struct]) -> None:
        self._outputs = outputs
        self._converted: dict[str, dict[str, Any]] = {}

    def __getitem__(self, step_id: str) -> dict[str, Any]:
        converted = self._converted.get(step_id)
        if converted is None:
            converted = struct_to_dict(self._outputs[step_id])
            self._converted[step_id] = converted
        return converted

    def __iter__(self) -> Iterator[str]:
        return iter(self._outputs)

    def __len__(self) -> int:
        return len(self._outputs)


def dependants_closure(plan: pb.Plan, roots: Iterable[str]) -> set[str]:
    """`roots` and every step that depends on one of them, directly or not."""
    children: dict[str, list[str]] = {}
    for step in plan.steps:
        for dep in step.depends_on:
            children.setdefault(dep, []).append(step.step_id)
    seen: set[str] = set()
    stack = [r for r in roots if any(s.step_id == r for s in plan.steps)]
    while stack:
        step_id = stack.pop()
        if step_id not in seen:
            seen.add(step_id)
            stack.extend(children.get(step_id, ()))
    return seen
