"""Arm connections, discovery, routing and failover. Never imports the brain."""

from .connection import ArmConnection, MeshEvent, Outcome
from .discovery import Discovery
from .mesh import Mesh, mesh_failure

__all__ = ["ArmConnection", "Discovery", "Mesh", "MeshEvent", "Outcome", "mesh_failure"]
