"""Facts about the project that the deployment files must agree with."""

from __future__ import annotations

import tomllib
from pathlib import Path

from orchestrator_svc.config import Settings

ROOT = Path(__file__).resolve().parents[2]
IMAGE_NAME = "octollm-mesh"


def setting_names() -> set[str]:
    """Every environment variable the orchestrator reads."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def default_shutdown_grace_s() -> float:
    """The orchestrator's default drain time (OCTOLLM_SHUTDOWN_GRACE_S)."""
    return float(Settings.model_fields["shutdown_grace_s"].default)


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def image() -> str:
    """The image every octollm container runs: octollm-mesh tagged with the project version."""
    return f"{IMAGE_NAME}:{project_version()}"
