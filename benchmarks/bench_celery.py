"""The benchmark pipeline as a Celery app: tasks s1 -> s2 -> s3, each on a queue of its own.

``celery_relay.py`` starts one Celery worker per stage with this module as its app; the broker,
queue names, output folder and CPU work come from the environment. Durability as in the
engine: tasks are acknowledged late (after they ran, so after they published the next task),
requeued if their worker process dies, sent persistent, and on RabbitMQ with publisher
confirms. s3 appends (t0, s1, s2, arrival) per message as four float64 to
``<out>/latency-<pid>.bin``, as ``bench_steps.Sink`` does.
"""

from __future__ import annotations

import os
import time
from array import array
from typing import Any

from celery import Celery

BROKER = os.environ.get("EC_BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/0")
QUEUES = os.environ.get("EC_BENCH_CELERY_QUEUES", "ecb-s1,ecb-s2,ecb-s3").split(",")
OUT = os.environ.get("EC_BENCH_CELERY_OUT", "")
CPU_MS = float(os.environ.get("EC_BENCH_CPU_MS", "0"))

app = Celery("bench_celery", broker=BROKER)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_default_delivery_mode="persistent",
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    broker_transport_options={"confirm_publish": True} if BROKER.startswith("amqp") else {},
    broker_connection_retry_on_startup=True,
    task_routes={f"bench_celery.s{i + 1}": {"queue": q} for i, q in enumerate(QUEUES)},
    worker_hijack_root_logger=False,
)


def burn(ms: float) -> None:
    """About ``ms`` milliseconds of pure-Python work (the same loop as bench_steps.burn)."""
    from bench_steps import burn as work

    work(ms)


@app.task(name="bench_celery.s1")
def s1(doc: dict[str, Any]) -> None:
    doc["s1"] = time.time()
    s2.delay(doc)


@app.task(name="bench_celery.s2")
def s2(doc: dict[str, Any]) -> None:
    if CPU_MS:
        burn(CPU_MS)
    doc["s2"] = time.time()
    s3.delay(doc)


@app.task(name="bench_celery.s3")
def s3(doc: dict[str, Any]) -> None:
    record = array("d", (doc["t0"], doc["s1"], doc["s2"], time.time()))
    fd = os.open(
        os.path.join(OUT, f"latency-{os.getpid()}.bin"), os.O_WRONLY | os.O_APPEND | os.O_CREAT
    )
    try:
        os.write(fd, record.tobytes())
    finally:
        os.close(fd)
