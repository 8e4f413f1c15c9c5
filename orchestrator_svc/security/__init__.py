"""Security at the edges: client auth and limits, TLS/mTLS for clients and for arm streams."""

from __future__ import annotations

from collections.abc import Callable

from ..config import Settings
from .auth import ClientTokens, peer_identity
from .guard import EdgeGuard
from .limits import RateLimit, TaskQuota, TokenBucket
from .tls import arm_channel_credentials, arm_channel_options, server_tls

__all__ = [
    "ClientTokens",
    "EdgeGuard",
    "RateLimit",
    "TaskQuota",
    "TokenBucket",
    "arm_channel_credentials",
    "arm_channel_options",
    "edge_guard",
    "peer_identity",
    "server_tls",
]


def edge_guard(settings: Settings, service: str, is_unfinished: Callable[[str], bool]) -> EdgeGuard:
    """The client-edge interceptor the settings ask for (it passes everything when all are off)."""
    return EdgeGuard(
        service,
        ClientTokens.parse(settings.auth_tokens.get_secret_value()),
        RateLimit(settings.rate_limit_rps),
        TaskQuota(settings.max_tasks_per_client, is_unfinished),
    )
