"""Logs (structlog), and later metrics and trace context."""

from .logging import configure_logging

__all__ = ["configure_logging"]
