"""The brain: intent parsing, planning and integration. Pure logic; never imports grpc."""

from .planner import PlannedStep, plan_single_step

__all__ = ["PlannedStep", "plan_single_step"]
