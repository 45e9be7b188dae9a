"""The enrichment flow of flow.yaml, built in Python.

Run it with ``elasticcode run examples/enrichment/flow.py``; ``elasticcode export`` writes it
back out as YAML.
"""

from pathlib import Path

from elasticcode import Flow

TAX_RATES = {
    "AT": 0.20,
    "DE": 0.19,
    "ES": 0.21,
    "FR": 0.20,
    "GB": 0.20,
    "IE": 0.23,
    "IT": 0.22,
    "NL": 0.21,
    "NO": 0.25,
    "PL": 0.23,
    "SE": 0.25,
}

flow = Flow(
    name="enrichment",
    description=(
        "Orders fan out to a customer lookup and a pricing step; a join waits for both halves "
        "of each order and a sink stores the enriched orders in out/orders.jsonl.\n"
    ),
    base_dir=Path(__file__).resolve().parent,
)

orders = flow.processor(
    "orders",
    "enrichment:generate_orders",
    source=True,
    description="Generated orders, keyed by order id.",
    config={"count": 200, "seed": 7},
)
customer = flow.processor(
    "customer", "enrichment:lookup_customer", config={"customers": "data/customers.json"}
)
pricing = flow.processor("pricing", "enrichment:price_order", config={"tax_rates": TAX_RATES})
join = flow.processor(
    "join",
    "elasticcode.builtins:Join",
    inputs=["customer", "pricing"],
    description="Emits {customer, pricing} once both halves of an order have arrived.",
    config={"key": "order_id"},
)
store = flow.processor("store", "enrichment:EnrichedOrders", config={"path": "out/orders.jsonl"})

flow.connect(orders, customer)
flow.connect(orders, pricing)
flow.connect(customer, join.port("customer"))
flow.connect(pricing, join.port("pricing"))
flow.connect(join, store)
