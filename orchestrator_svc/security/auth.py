"""Bearer tokens for clients of the OrchestratorService, and who a caller is.

`OCTOLLM_AUTH_TOKENS` lists tokens comma-separated, each `token` or `name:token` (a bare token must
not contain ':'). A caller's identity (for limits and logs) is the token's name, else the common
name of its client certificate (mTLS), else its peer host. Tokens are never logged: an unnamed
token is known by a short digest of itself.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from ..errors import ApiError


@dataclass(frozen=True, repr=False)
class ClientToken:
    name: str
    token: bytes

    def __repr__(self) -> str:
        return f"ClientToken(name={self.name!r})"


class ClientTokens:
    """The accepted bearer tokens; empty means authentication is off."""

    def __init__(self, tokens: Iterable[ClientToken] = ()) -> None:
        self._tokens = tuple(tokens)

    @classmethod
    def parse(cls, spec: str) -> ClientTokens:
        """From `OCTOLLM_AUTH_TOKENS`' syntax; raises ValueError on an empty name or token."""
        tokens = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            name, sep, token = part.partition(":")
            if not sep:
                name, token = "token-" + hashlib.sha256(part.encode()).hexdigest()[:8], part
            name, token = name.strip(), token.strip()
            if not name or not token:
                raise ValueError("OCTOLLM_AUTH_TOKENS: each entry is `token` or `name:token`")
            tokens.append(ClientToken(name, token.encode()))
        return cls(tokens)

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> str:
        """The name of the token in the `authorization` header; raises ApiError when there is
        none (UNAUTHENTICATED, MISSING_CREDENTIALS) or it is unknown (UNAUTHENTICATED,
        INVALID_TOKEN)."""
        header = next((v for k, v in metadata if k == "authorization"), None)
        if isinstance(header, bytes):
            header = header.decode("utf-8", "replace")
        scheme, _, presented = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise ApiError(
                grpc.StatusCode.UNAUTHENTICATED,
                "this server needs `authorization: Bearer <token>` metadata",
                reason="MISSING_CREDENTIALS",
            )
        candidate = presented.strip().encode()
        found = ""
        # NOTE: compare with every token in constant time, so timing says nothing about them.
        for token in self._tokens:
            if hmac.compare_digest(candidate, token.token):
                found = token.name
        if not found:
            raise ApiError(
                grpc.StatusCode.UNAUTHENTICATED,
                "the bearer token is not valid for this server",
                reason="INVALID_TOKEN",
            )
        return found


def peer_identity(context: grpc.aio.ServicerContext) -> str:
    """The caller without a token: its client certificate's common name, else its peer host."""
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name") or ()
    if names:
        return "cn:" + bytes(names[0]).decode("utf-8", "replace")
    peer = str(context.peer() or "")
    # "ipv4:127.0.0.1:5432", "ipv6:[::1]:5432", "unix:/path": drop the scheme and the port.
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        rest = rest.rpartition(":")[0].strip("[]")
    return "peer:" + (rest or peer)
