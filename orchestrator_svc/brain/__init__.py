"""The brain: intent parsing, planning, routing scores, integration and validation.

Pure logic plus the LLM port; it never imports grpc or generated protobuf modules. The engine
converts protobuf messages to these dataclasses at its boundary. Modules behind this package are
private: import from here.
"""

from .brain import Brain, IntegrateOutcome, ParseOutcome, ValidateOutcome
from .episode import Episode, EpisodeStep, StepProvenance
from .integrate import Integration, LLMIntegrator, answer_steps, integrate
from .intent import HeuristicIntentParser, LLMIntentParser, ParsedIntent
from .plan import (
    ArmCapability,
    ExecutionPlan,
    NoArmsAvailable,
    PlanBudget,
    PlannedStep,
    estimate,
    sink_ids,
)
from .plan_checks import PlanProblem, repair_plan, validate_plan
from .planner import LLMPlanner, Planner, PlanOutcome, plan_single_step
from .router import (
    WEIGHT_AVAILABILITY,
    WEIGHT_CAPABILITY,
    WEIGHT_COST,
    WEIGHT_SUCCESS,
    ArmScore,
    ArmView,
    choose,
    ranked,
    score,
)
from .templates import HeuristicPlanner
from .validate import CriterionCheck, LLMValidator, ValidationReport, validate

__all__ = [
    "WEIGHT_AVAILABILITY",
    "WEIGHT_CAPABILITY",
    "WEIGHT_COST",
    "WEIGHT_SUCCESS",
    "ArmCapability",
    "ArmScore",
    "ArmView",
    "Brain",
    "CriterionCheck",
    "Episode",
    "EpisodeStep",
    "ExecutionPlan",
    "HeuristicIntentParser",
    "HeuristicPlanner",
    "IntegrateOutcome",
    "Integration",
    "LLMIntegrator",
    "LLMIntentParser",
    "LLMPlanner",
    "LLMValidator",
    "NoArmsAvailable",
    "ParseOutcome",
    "ParsedIntent",
    "PlanBudget",
    "PlanOutcome",
    "PlanProblem",
    "PlannedStep",
    "Planner",
    "StepProvenance",
    "ValidateOutcome",
    "ValidationReport",
    "answer_steps",
    "choose",
    "estimate",
    "integrate",
    "plan_single_step",
    "ranked",
    "repair_plan",
    "score",
    "sink_ids",
    "validate",
    "validate_plan",
]
