"""Fixtures for the security tests: one test PKI per session."""

from __future__ import annotations

import pytest

from tests.security.certs import Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA with a server and a client certificate, made once with openssl."""
    return make_pki(tmp_path_factory.mktemp("pki"))
