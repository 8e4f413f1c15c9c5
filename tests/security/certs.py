"""Test PKI made with the openssl CLI: a CA, and leaf certificates it signs."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from arm_sdk.tls import ServerTLS


@dataclass(frozen=True)
class Leaf:
    """A certificate and its key, as files and PEM bytes."""

    cert_path: Path
    key_path: Path

    @property
    def cert(self) -> bytes:
        return self.cert_path.read_bytes()

    @property
    def key(self) -> bytes:
        return self.key_path.read_bytes()


@dataclass(frozen=True)
class Pki:
    """A CA plus a server (SAN localhost, 127.0.0.1) and a client leaf, all signed by the CA."""

    ca_path: Path
    server: Leaf
    client: Leaf

    @property
    def ca(self) -> bytes:
        return self.ca_path.read_bytes()

    def server_tls(self, *, mutual: bool) -> ServerTLS:
        return ServerTLS(self.server.cert, self.server.key, self.ca if mutual else None)


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str = "octollm-test-ca") -> Path:
    """A self-signed CA certificate (folder/ca.pem, key folder/ca.key)."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is needed to make test certificates (apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", folder / "ca.key", "-out", folder / "ca.pem", "-days", "2",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return folder / "ca.pem"


def make_leaf(ca: Path, name: str) -> Leaf:
    """A certificate for `name` (CN), valid for localhost and 127.0.0.1, server and client use."""
    folder = ca.parent
    key, csr, cert, ext = (folder / f"{name}.{s}" for s in ("key", "csr", "pem", "ext"))
    ext.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "basicConstraints=CA:FALSE\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", folder / "ca.key",
        "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext,
    )  # fmt: skip
    return Leaf(cert, key)


def make_pki(folder: Path) -> Pki:
    ca = make_ca(folder)
    return Pki(ca, make_leaf(ca, "server"), make_leaf(ca, "client"))
