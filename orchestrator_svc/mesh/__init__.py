"""Arm connections, discovery, routing and failover. Never imports the brain."""

from .connection import ArmConnection, MeshEvent, Outcome
from .discovery import Discovery
from .mesh import ARM_NOT_SERVING, Availability, Mesh, mesh_failure

__all__ = [
    "ARM_NOT_SERVING",
    "ArmConnection",
    "Availability",
    "Discovery",
    "Mesh",
    "MeshEvent",
    "Outcome",
    "mesh_failure",
]
