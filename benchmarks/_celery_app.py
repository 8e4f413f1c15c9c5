"""The Celery app benchmarks/peers.py compares the mesh with: one no-op task, Redis as broker
and result backend, on a Redis database of its own (OCTOLLM_BENCH_REDIS_URL, default
redis://127.0.0.1:6379/11) that the benchmark flushes before and after, and nothing else.

    celery -A benchmarks._celery_app worker --pool prefork --concurrency 2
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery  # type: ignore[import-untyped, unused-ignore]

REDIS_URL = os.environ.get("OCTOLLM_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")

app = Celery("octollm_bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
)


@app.task(name="octollm_bench.noop")  # type: ignore[untyped-decorator, unused-ignore]
def noop(*args: Any) -> None:
    """The no-op: takes whatever the previous step returned (chains and chords), returns None."""
