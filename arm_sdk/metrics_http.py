"""A Prometheus /metrics endpoint for one registry, on a daemon thread (arms and orchestrator)."""

from __future__ import annotations

import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app


class MetricsEndpoint:
    """`start(registry, host, port)` serves /metrics; `close()` stops it (blocking briefly)."""

    def __init__(self) -> None:
        self._http: WSGIServer | None = None

    def start(self, registry: CollectorRegistry, host: str, port: int) -> int:
        """Serve on host:port (0 picks one); return the bound port."""
        self._http = make_server(host, port, make_wsgi_app(registry), handler_class=_Quiet)
        # NOTE: a short poll so close() returns promptly (the default is 0.5 s).
        threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return int(self._http.server_port)

    def close(self) -> None:
        """Stop serving; blocks until the serving thread polls (run it off the event loop)."""
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()
            http.server_close()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""
