"""Task store: the TaskStore port, the event-log projection, and the in-memory adapter."""

from orchestrator_svc.store.memory import InMemoryTaskStore
from orchestrator_svc.store.ports import (
    IdempotencyConflict,
    StoreClosed,
    StoreError,
    TaskClosed,
    TaskNotFound,
    TaskStore,
)
from orchestrator_svc.store.projection import (
    TERMINAL_SUBTASK_STATES,
    TERMINAL_TASK_STATES,
    apply,
    subtask_id_for,
)

__all__ = [
    "TERMINAL_SUBTASK_STATES",
    "TERMINAL_TASK_STATES",
    "IdempotencyConflict",
    "InMemoryTaskStore",
    "StoreClosed",
    "StoreError",
    "TaskClosed",
    "TaskNotFound",
    "TaskStore",
    "apply",
    "subtask_id_for",
]
