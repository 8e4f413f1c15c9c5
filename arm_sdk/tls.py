"""Server-side TLS for arms and the orchestrator: certificates, mTLS, and the insecure warning.

``ServerTLS`` holds PEM bytes. With ``client_ca`` set, clients must present a certificate signed
by it (mTLS); without, any client may connect over TLS. ``listen`` binds a grpc.aio server with or
without TLS and logs ``insecure_listen`` (a warning) when a non-loopback address is served in the
clear.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True, repr=False)
class ServerTLS:
    """A server certificate chain and key (PEM), and optionally the CA that signs client certs."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    def __repr__(self) -> str:
        # NOTE: never print the key, even by accident in a log or a traceback.
        return f"ServerTLS(mtls={self.client_ca is not None})"

    @classmethod
    def from_files(
        cls, cert: str | Path, key: str | Path, client_ca: str | Path | None = None
    ) -> ServerTLS:
        """Read PEM files; raises OSError naming a missing or unreadable file."""
        return cls(
            cert=Path(cert).read_bytes(),
            key=Path(key).read_bytes(),
            client_ca=Path(client_ca).read_bytes() if client_ca else None,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerTLS | None:
        """From ``OCTOLLM_TLS_CERT``, ``OCTOLLM_TLS_KEY`` and ``OCTOLLM_TLS_CLIENT_CA`` (file
        paths); None when no certificate is configured. Raises ValueError when only half is."""
        env = os.environ if environ is None else environ
        cert = env.get("OCTOLLM_TLS_CERT", "")
        key = env.get("OCTOLLM_TLS_KEY", "")
        client_ca = env.get("OCTOLLM_TLS_CLIENT_CA", "")
        check_paths(cert, key, client_ca)
        if not cert:
            return None
        return cls.from_files(cert, key, client_ca or None)

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate (mTLS)."""
        return self.client_ca is not None

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def check_paths(cert: str, key: str, client_ca: str = "", prefix: str = "OCTOLLM_TLS") -> None:
    """Reject half a configuration (a cert without its key, a client CA without a cert)."""
    if bool(cert) != bool(key):
        raise ValueError(f"{prefix}_CERT and {prefix}_KEY must be set together")
    if client_ca and not cert:
        raise ValueError(f"{prefix}_CLIENT_CA needs {prefix}_CERT and {prefix}_KEY")


def is_loopback(address: str) -> bool:
    """True when ``host:port`` names a loopback host (127.0.0.0/8, ::1, localhost)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class InsecureListenRefused(ValueError):
    """Plaintext on a non-loopback address without the explicit opt-in."""


def listen(
    server: grpc.aio.Server,
    address: str,
    tls: ServerTLS | None,
    *,
    what: str,
    allow_insecure: bool = False,
) -> int:
    """Bind ``address`` with TLS when given; return the port. Raises OSError when the address
    cannot be bound (in use, or not an address of this host).

    Plaintext is served on loopback addresses, and elsewhere only with ``allow_insecure`` (for
    example behind a service mesh that provides mTLS), then with a loud warning."""
    if tls is not None:
        credentials = tls.server_credentials()
        port = _bound(address, what, lambda: server.add_secure_port(address, credentials))
        log.info("tls_listen", what=what, address=address, mtls=tls.mutual)
        return port
    if not is_loopback(address):
        if not allow_insecure:
            raise InsecureListenRefused(
                f"refusing to serve the {what} in plaintext on {address}: set OCTOLLM_TLS_CERT "
                "and OCTOLLM_TLS_KEY, or OCTOLLM_ALLOW_INSECURE=true (e.g. behind a service mesh "
                "that provides mTLS)"
            )
        log.warning(
            "insecure_listen",
            what=what,
            address=address,
            hint="traffic is unencrypted and unauthenticated; set OCTOLLM_TLS_CERT/KEY",
        )
    return _bound(address, what, lambda: server.add_insecure_port(address))


def _bound(address: str, what: str, add_port: Callable[[], int]) -> int:
    """The port `add_port` bound; OSError instead of grpcio's RuntimeError (or port 0)."""
    try:
        port = add_port()
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(
            f"cannot listen on {address} for the {what}: the address is in use or not "
            "an address of this host"
        )
    return port
