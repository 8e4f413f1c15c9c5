"""TLS for the orchestrator: its server credentials, and channel credentials to reach arms."""

from __future__ import annotations

from pathlib import Path

import grpc

from arm_sdk.tls import ServerTLS

from ..config import Settings


def server_tls(settings: Settings) -> ServerTLS | None:
    """From OCTOLLM_TLS_CERT/KEY/CLIENT_CA; None serves in the clear."""
    if not settings.tls_cert:
        return None
    return ServerTLS.from_files(settings.tls_cert, settings.tls_key, settings.tls_client_ca or None)


def arm_channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """From OCTOLLM_ARM_TLS_CA (plus CERT/KEY for mTLS); None dials arms in the clear."""
    if not settings.arm_tls_ca:
        return None
    cert = Path(settings.arm_tls_cert).read_bytes() if settings.arm_tls_cert else None
    key = Path(settings.arm_tls_key).read_bytes() if settings.arm_tls_key else None
    return grpc.ssl_channel_credentials(
        root_certificates=Path(settings.arm_tls_ca).read_bytes(),
        private_key=key,
        certificate_chain=cert,
    )


def arm_channel_options(settings: Settings) -> list[tuple[str, int | str]]:
    """Extra channel options for arms: the name their certificates are checked against."""
    if settings.arm_tls_ca and settings.arm_tls_server_name:
        return [("grpc.ssl_target_name_override", settings.arm_tls_server_name)]
    return []
