"""Results of deterministic arms, reused for the same work (`ArmDescriptor.deterministic`).

The key is the arm type and version plus everything a deterministic arm's output may depend on:
the dispatch's description, input (the dependencies' outputs included), context and acceptance
criteria; never ids, attempts, deadlines or trace context. A dispatch carrying repair feedback
(`input.repair`) is neither looked up nor stored: a repair exists to get a different answer. A
hit costs nothing: its usage and duration are zero, and it carries the ids of the dispatch it
answers (the provenance still names the arm that did the work).
"""

from __future__ import annotations

import hashlib

from google.protobuf.message import DecodeError
from octollm.v1 import arm_service_pb2 as arm_pb

from ..mesh import Mesh
from ..store.cache import Cache

NAMESPACE = "result"
_REPAIR_KEY = "repair"


class SubtaskResultCache:
    """See the module docstring. Without a `cache` it never finds or keeps anything."""

    def __init__(self, cache: Cache | None, mesh: Mesh | None = None) -> None:
        """`mesh` tells which arm versions could run a dispatch looked up by arm type."""
        self._cache = cache
        self._mesh = mesh

    async def lookup(
        self, arm: str | arm_pb.ArmDescriptor, dispatch: arm_pb.Dispatch
    ) -> arm_pb.Result | None:
        """A cached Result for `dispatch`, or None.

        `arm` is the descriptor of the arm that would run it, or an arm type: then any routable
        deterministic arm of that type may answer (the mesh could route to each of them).
        """
        if self._cache is None or _is_repair(dispatch):
            return None
        if isinstance(arm, str):
            arm_type, versions = arm, self._routable_versions(arm)
        else:
            arm_type, versions = arm.arm_type, [arm.version] if arm.deterministic else []
        if not versions:
            return None
        work = _work_digest(dispatch)
        for version in versions:
            raw = await self._cache.get(NAMESPACE, _key(arm_type, version, work))
            result = _decode(raw, dispatch) if raw is not None else None
            if result is not None:
                return result
        return None

    async def store(
        self,
        descriptor: arm_pb.ArmDescriptor | None,
        dispatch: arm_pb.Dispatch,
        result: arm_pb.Result,
    ) -> None:
        """Keep `result`, which the arm of `descriptor` returned for `dispatch`, if that arm is
        deterministic (and the dispatch no repair)."""
        if (
            self._cache is None
            or descriptor is None
            or not descriptor.deterministic
            or _is_repair(dispatch)
        ):
            return
        kept = arm_pb.Result()
        kept.CopyFrom(result)
        kept.ClearField("subtask_id")
        kept.ClearField("attempt")
        key = _key(descriptor.arm_type, descriptor.version, _work_digest(dispatch))
        await self._cache.set(NAMESPACE, key, kept.SerializeToString(deterministic=True))

    def _routable_versions(self, arm_type: str) -> list[str]:
        if self._mesh is None:
            return []
        versions = {
            conn.descriptor.version
            for conn in self._mesh.arms()
            if conn.routable
            and conn.descriptor is not None
            and conn.descriptor.arm_type == arm_type
            and conn.descriptor.deterministic
        }
        return sorted(versions)


def _is_repair(dispatch: arm_pb.Dispatch) -> bool:
    return _REPAIR_KEY in dispatch.input.fields


def _work_digest(dispatch: arm_pb.Dispatch) -> str:
    """sha256 of what the output may depend on, in protobuf's deterministic encoding."""
    work = arm_pb.Dispatch(
        description=dispatch.description, acceptance_criteria=dispatch.acceptance_criteria
    )
    work.input.CopyFrom(dispatch.input)
    work.context.CopyFrom(dispatch.context)
    return hashlib.sha256(work.SerializeToString(deterministic=True)).hexdigest()


def _key(arm_type: str, version: str, work: str) -> dict[str, str]:
    return {"arm_type": arm_type, "version": version, "work": work}


def _decode(raw: bytes, dispatch: arm_pb.Dispatch) -> arm_pb.Result | None:
    result = arm_pb.Result()
    try:
        result.ParseFromString(raw)
    except DecodeError:
        return None
    result.subtask_id = dispatch.subtask_id
    result.attempt = dispatch.attempt
    provenance = result.provenance
    provenance.attempt = dispatch.attempt
    provenance.ClearField("usage")
    provenance.ClearField("duration")
    return result
