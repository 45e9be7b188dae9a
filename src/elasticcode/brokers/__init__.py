"""Queue backends, chosen by URL scheme or by ``module:Class`` for a user's own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..backends import backend_class
from ..errors import UnknownBackend
from ..secret import resolve
from .base import Broker, DeadLetter, Delivery, QueueStats, Settlement

if TYPE_CHECKING:
    from ..flow import Flow

__all__ = [
    "Broker",
    "DeadLetter",
    "Delivery",
    "QueueStats",
    "Settlement",
    "flow_broker",
    "open_broker",
]

#: scheme -> "module:Class" (imported lazily so that optional drivers stay optional)
BACKENDS: dict[str, str] = {
    "sqlite": "elasticcode.brokers.sqlite:SQLiteBroker",
    "amqp": "elasticcode.brokers.rabbitmq:RabbitMQBroker",
    "amqps": "elasticcode.brokers.rabbitmq:RabbitMQBroker",
    "redis": "elasticcode.brokers.redis:RedisBroker",
    "rediss": "elasticcode.brokers.redis:RedisBroker",
    "nats": "elasticcode.brokers.nats:NATSBroker",
    "tls": "elasticcode.brokers.nats:NATSBroker",
    "sqs": "elasticcode.brokers.sqs:SQSBroker",
}


def broker_class(url: str) -> type[Broker]:
    found: type[Broker] = backend_class(url, BACKENDS, Broker, "broker", UnknownBackend)
    return found


def open_broker(url: str, routes: dict[str, str] | None = None, **options: Any) -> Broker:
    """Build (not yet connect) the broker a URL names; with ``routes`` (queue -> URL) for queues
    that live elsewhere, one broker over all of them."""
    if not routes or set(routes.values()) == {url}:
        return broker_class(url)(url, **options)
    from .routed import RoutedBroker

    urls = dict.fromkeys([url, *routes.values()])
    brokers = {u: broker_class(u)(u, **options) for u in urls}
    return RoutedBroker(url, brokers, routes)


def flow_broker(url: str, flow: Flow) -> Broker:
    """The broker of a flow's queues: ``url``, and the brokers its connections name, with
    their secrets put in (from the environment; see ``elasticcode.secret``)."""
    return open_broker(
        resolve(url, where="the flow's broker"),
        resolve(flow.broker_routes(), where="a connection's broker"),
        max_message_bytes=flow.settings.max_message_bytes,
    )
