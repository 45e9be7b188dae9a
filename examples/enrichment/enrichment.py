"""Processors of the enrichment example: orders fan out to a customer lookup and a pricing
step, a join brings the two halves of each order together again, and a sink stores the
enriched orders as JSON lines.

Relative paths in the configuration are resolved against this folder. Amounts are integers
in cents, so that totals are exact.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from typing import IO, Any

from elasticcode import Output, Reject

HERE = Path(__file__).resolve().parent
CATALOG = {
    "MUG-BLUE": 1290,
    "TEE-ORGANIC": 2450,
    "NOTEBOOK-A5": 890,
    "BOTTLE-STEEL": 1999,
    "TOTE-CANVAS": 1500,
    "CAP-WOOL": 2200,
}
SHIP_TO = ("AT", "DE", "ES", "FR", "GB", "IE", "IT", "NL", "NO", "PL", "SE")


def resolve(path: str | Path) -> Path:
    """``path`` relative to this folder (an absolute path is kept as it is)."""
    return HERE / path


def generate_orders(count: int = 200, seed: int = 7, customers: int = 12) -> Iterator[Output]:
    """Source: ``count`` orders, the same ones for the same ``seed``, keyed by order id."""
    rng = random.Random(seed)
    for n in range(1, count + 1):
        order_id = f"ORD-{n:05d}"
        skus = rng.sample(sorted(CATALOG), rng.randint(1, 3))
        order = {
            "order_id": order_id,
            "customer_id": f"C{rng.randint(1, customers):03d}",
            "ship_to": rng.choice(SHIP_TO),
            "currency": "EUR",
            "items": [
                {"sku": sku, "qty": rng.randint(1, 5), "unit_price": CATALOG[sku]} for sku in skus
            ],
        }
        yield Output(order, key=order_id)


@cache
def customer_table(path: Path) -> dict[str, dict[str, Any]]:
    """The customers in a JSON file, by id (read once per process)."""
    return {c["id"]: c for c in json.loads(path.read_text(encoding="utf-8"))}


def lookup_customer(
    order: dict[str, Any], customers: str = "data/customers.json"
) -> dict[str, Any]:
    """The customer who placed the order."""
    table = customer_table(resolve(customers))
    customer = table.get(order["customer_id"])
    if customer is None:
        raise Reject(f"unknown customer {order['customer_id']!r}")
    return {"order_id": order["order_id"], "customer": customer}


def price_order(order: dict[str, Any], tax_rates: dict[str, float]) -> dict[str, Any]:
    """Line amounts, subtotal, tax at the rate of the destination country, and total."""
    rate = tax_rates.get(order["ship_to"])
    if rate is None:
        raise Reject(f"no tax rate for destination {order['ship_to']!r}")
    lines = [{**item, "amount": item["qty"] * item["unit_price"]} for item in order["items"]]
    subtotal = sum(line["amount"] for line in lines)
    tax = int((Decimal(subtotal) * Decimal(str(rate))).quantize(Decimal(1), ROUND_HALF_UP))
    return {
        "order_id": order["order_id"],
        "currency": order["currency"],
        "ship_to": order["ship_to"],
        "lines": lines,
        "subtotal": subtotal,
        "tax_rate": rate,
        "tax": tax,
        "total": subtotal + tax,
    }


class EnrichedOrders:
    """Sink: merges the joined halves of an order and appends it to a JSON-lines file, once
    per order id."""

    def __init__(self, path: str = "out/orders.jsonl") -> None:
        self.file = JsonLines(resolve(path), key="order_id")

    def process(self, joined: dict[str, Any]) -> None:
        self.file.append({**joined["pricing"], "customer": joined["customer"]["customer"]})


class JsonLines:
    """A JSON-lines file that holds at most one record per key.

    Several processes may append at once: an append holds an exclusive lock on the file,
    first reads what others wrote since its last visit, and skips a record whose key is
    already there. A line left half-written by a crash is cut off before the next append.
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self.keys: set[str] = set()
        self.inode = 0
        self.read_up_to = 0

    def append(self, record: dict[str, Any]) -> bool:
        """Append ``record`` unless the file has one with the same key; True if written."""
        key = str(record[self.key])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._catch_up(handle)
            if key in self.keys:
                return False
            handle.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
            self.read_up_to = handle.tell()
            self.keys.add(key)
        return True

    def _catch_up(self, handle: IO[bytes]) -> None:
        stat = os.fstat(handle.fileno())
        if stat.st_ino != self.inode or stat.st_size < self.read_up_to:
            self.inode, self.read_up_to = stat.st_ino, 0
            self.keys.clear()
        handle.seek(self.read_up_to)
        data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.keys.update(
            str(json.loads(line)[self.key]) for line in complete.splitlines() if line.strip()
        )
        self.read_up_to += len(complete)
        if len(complete) < len(data):
            handle.truncate(self.read_up_to)
