"""Whether an LLM endpoint can serve: reachable, and the configured model among those it lists."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """What one `GET /v1/models` found.

    `usable` False with `permanent` False: unreachable or failing now (may come back);
    with `permanent` True: misconfigured (model not listed, key refused), needs an operator.
    `reason` says which in words fit for a log or a Failure message.
    """

    usable: bool
    reason: str = ""
    permanent: bool = False
    models: tuple[str, ...] = ()


ENDPOINT_OK = EndpointStatus(usable=True)
