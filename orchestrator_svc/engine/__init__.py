"""The execution engine: runs a task's DAG on the mesh and records every transition."""

from .runner import TaskRunner

__all__ = ["TaskRunner"]
