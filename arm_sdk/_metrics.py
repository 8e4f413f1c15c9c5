"""Prometheus metrics of one arm server (its own registry), served on an HTTP port if asked."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from arm_sdk.metrics_http import MetricsEndpoint

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ArmMetrics:
    """octollm_arm_subtasks_total{outcome}, octollm_arm_subtask_seconds, and live gauges."""

    def __init__(self, arm_type: str, in_flight: Callable[[], int], streams: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.subtasks = Counter(
            "octollm_arm_subtasks_total",
            "Subtasks this arm finished, by outcome (the Result, or the Failure reason).",
            ["arm_type", "outcome"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "octollm_arm_subtask_seconds",
            "Time the handler took, by arm type.",
            ["arm_type"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._arm_type = arm_type
        self.registry.register(_Live(arm_type, in_flight, streams))
        self._endpoint = MetricsEndpoint()

    def finished(self, outcome: str, seconds: float) -> None:
        self.subtasks.labels(self._arm_type, outcome).inc()
        self.seconds.labels(self._arm_type).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on a daemon thread; return the bound port."""
        return self._endpoint.start(self.registry, host, port)

    def close(self) -> None:
        self._endpoint.close()


class _Live(Collector):
    def __init__(self, arm_type: str, in_flight: Callable[[], int], streams: Callable[[], int]):
        self._arm_type, self._in_flight, self._streams = arm_type, in_flight, streams

    def collect(self) -> Iterator[GaugeMetricFamily]:
        running = GaugeMetricFamily(
            "octollm_arm_in_flight", "Subtasks running on this arm now.", labels=["arm_type"]
        )
        running.add_metric([self._arm_type], self._in_flight())
        streams = GaugeMetricFamily(
            "octollm_arm_execute_streams",
            "Open Execute streams (orchestrators).",
            labels=["arm_type"],
        )
        streams.add_metric([self._arm_type], self._streams())
        yield from (running, streams)
