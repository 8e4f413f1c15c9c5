"""The execution engine: runs a task's DAG on the mesh and records every transition."""

from .arm_history import ArmHistoryKeeper
from .leases import LeaseKeeper
from .runner import TaskRunner

__all__ = ["ArmHistoryKeeper", "LeaseKeeper", "TaskRunner"]
