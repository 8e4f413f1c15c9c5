"""Routing: the brain's scoring over the mesh's live registry, handed to the mesh as its picker.

The mesh never imports the brain; the server wires this function in.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..brain import ArmView, choose
from ..mesh import ArmConnection


def view(conn: ArmConnection) -> ArmView:
    """What the router needs to know of one live arm connection."""
    d = conn.descriptor
    stats = conn.stats
    return ArmView(
        arm_id=conn.arm_id,
        arm_type=conn.arm_type,
        capabilities=tuple(d.capabilities) if d is not None else (),
        routable=conn.routable,
        draining=not conn.routable,
        in_flight=len(conn.in_flight),
        credits=conn.credits,
        success_rate=stats.success_rate,
        mean_latency_s=stats.mean_latency_s,
        cost_tier=d.cost_tier if d is not None else 0,
        samples=stats.samples,
    )


def pick(
    ready: list[ArmConnection], avoid_arm: str, required_capabilities: Sequence[str] = ()
) -> ArmConnection:
    """The best-scoring ready arm for a subtask needing `required_capabilities` (capability
    0.4, availability 0.2, success 0.3, cost 0.1; ties to the least loaded), preferring any arm
    but `avoid_arm`."""
    if avoid_arm:
        ready = [c for c in ready if c.arm_id != avoid_arm] or ready
    if len(ready) == 1:
        return ready[0]
    by_id = {c.arm_id: c for c in ready}
    best = choose([view(c) for c in ready], required_capabilities)
    return by_id[best.arm_id] if best is not None else ready[0]
