"""The example flows under examples/, run for real and checked against independent results."""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
import runpy
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from elasticcode import Context, Flow, Message, run
from elasticcode.brokers import open_broker

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WORDCOUNT = EXAMPLES / "wordcount"
CSV_CLEAN = EXAMPLES / "csv_clean"
ENRICHMENT = EXAMPLES / "enrichment"


def example_module(folder: Path) -> ModuleType:
    """The processor module of an example, imported the way the engine imports it."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module(folder.name)


def context_for(message_id: str, payload: Any, attributes: dict[str, Any] | None = None) -> Context:
    """A processor context holding one message, as a worker builds it."""
    ctx = Context("example", "sink", {}, logging.getLogger("test"))
    return ctx.child(Message(payload, id=message_id, attributes=attributes or {}), "input")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_to_end(
    flow: Flow, tmp_path: Path, workers: int = 2, broker: str | None = None
) -> dict[str, int]:
    """Run a flow with several instances per processor; return the errors per processor."""
    result = run(flow, state_dir=tmp_path / "state", workers=workers, broker=broker)
    assert result.status == "finished"
    assert result.dead_letters == 0
    assert sum(result.queues.values()) == 0
    return {name: totals.errors for name, totals in result.processors.items() if totals.errors}


# -- wordcount ---------------------------------------------------------------------------------


def expected_word_counts(flow: Flow) -> Counter[str]:
    config = flow.get("count").config
    stopwords = {w.casefold() for w in config["stopwords"]}
    counts: Counter[str] = Counter()
    for path in (WORDCOUNT / "data").glob("*.txt"):
        for word in re.findall(r"[^\W_]+(?:'[^\W_]+)*", path.read_text(encoding="utf-8").lower()):
            if word not in stopwords:
                counts[word] += 1
    return counts


def test_wordcount_counts_every_word_of_the_data(tmp_path: Path) -> None:
    run_wordcount(tmp_path)


def run_wordcount(tmp_path: Path, broker: str | None = None, own: Any = None) -> None:
    """Run the word count (``own`` renames the flow) and check every count."""
    flow = Flow.load(WORDCOUNT / "flow.yaml")
    flow = own(flow) if own else flow
    out = tmp_path / "out"
    flow.get("total").config = {"output": str(out)}
    assert run_to_end(flow, tmp_path, broker=broker) == {}

    counts = json.loads((out / "counts.json").read_text())
    expected = expected_word_counts(flow)
    assert counts == dict(expected)
    assert "the" not in counts and "on" not in counts
    assert counts["people's"] == 1
    frequencies = list(counts.values())
    assert frequencies == sorted(frequencies, reverse=True)
    lines = sum(
        1
        for path in (WORDCOUNT / "data").glob("*.txt")
        for line in path.read_text().splitlines()
        if line.strip()
    )
    assert len(list((out / "parts").glob("*.json"))) == lines


def test_wordcount_sink_counts_a_redelivered_message_once(tmp_path: Path) -> None:
    wordcount = example_module(WORDCOUNT)
    out = tmp_path / "out"
    first, second = wordcount.CountSink(str(out)), wordcount.CountSink(str(out))
    line = {"file": "a.txt", "line": 1, "counts": {"whale": 2, "sea": 1}}
    other = {"file": "a.txt", "line": 2, "counts": {"sea": 3}}
    first.process(line, context_for("m1", line))
    second.process(line, context_for("m1", line))  # redelivered to another instance
    second.process(other, context_for("m2", other))
    first.process(other, context_for("m2", other))
    assert wordcount.summarize(out) == {"sea": 4, "whale": 2}


def test_wordcount_demo_runs_from_the_command_line(tmp_path: Path) -> None:
    flow = Flow.load(WORDCOUNT / "flow.yaml")
    out = tmp_path / "out"
    flow.get("total").config = {"output": str(out)}
    flow_file = tmp_path / "flow.yaml"
    flow.model_copy(update={"path": [str(WORDCOUNT)]}).dump(flow_file)
    cli = Path(sys.executable).with_name("elasticcode")
    done = subprocess.run(
        [cli, "run", flow_file, "--fresh", "--state-dir", tmp_path / "state", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "wordcount: run 1 finished" in done.stdout
    assert json.loads((out / "counts.json").read_text()) == dict(expected_word_counts(flow))


# -- csv_clean ---------------------------------------------------------------------------------

REJECTED = {
    13: "empty field(s): email",
    15: "age 'thirty-two' is not a whole number",
    22: "email 'bob.smith(at)example.com' is not an email address",
    28: "age -4 is not between 0 and 130",
    36: "signup_date '2021-13-45' is not a date",
    39: "empty field(s): name",
    47: "missing field(s): email, age, city, signup_date",
}


def test_csv_clean_splits_clean_and_rejected_rows(tmp_path: Path) -> None:
    run_csv_clean(tmp_path)


def run_csv_clean(tmp_path: Path, broker: str | None = None, own: Any = None) -> None:
    """Run the CSV clean-up (``own`` renames the flow) and check both outputs row by row."""
    flow = Flow.load(CSV_CLEAN / "flow.yaml")
    flow = own(flow) if own else flow
    flow.get("store").config = {"path": str(tmp_path / "clean.jsonl")}
    flow.get("rejected").config = {"path": str(tmp_path / "rejected.jsonl")}
    errors = run_to_end(flow, tmp_path, broker=broker)
    if broker and open_broker(broker).eventually_consistent:
        # SQS may hand a rejected row out twice (and count its error twice): the sinks below
        # still hold each row once
        assert errors.keys() == {"clean"} and errors["clean"] >= len(REJECTED)
    else:
        assert errors == {"clean": len(REJECTED)}

    clean = read_jsonl(tmp_path / "clean.jsonl")
    rejected = read_jsonl(tmp_path / "rejected.jsonl")
    assert len(clean) == 43
    assert len(rejected) == 7
    ids = [r["message_id"] for r in clean + rejected]
    assert len(set(ids)) == len(ids)

    assert {r["line"]: r["reason"] for r in rejected} == {
        line: f"rejected: {why}" for line, why in REJECTED.items()
    }
    by_line = {r["line"]: r["row"] for r in rejected}
    assert by_line[47] == {
        "id": "46",
        "name": "Ravi Patel",
        "email": None,
        "age": None,
        "city": None,
        "signup_date": None,
    }
    assert by_line[15]["age"] == "thirty-two"

    people = {p["id"]: {k: v for k, v in p.items() if k != "message_id"} for p in clean}
    assert sorted(people) == sorted(set(range(1, 51)) - {line - 1 for line in REJECTED})
    assert people[2] == {
        "id": 2,
        "name": "Oliver Bennett",
        "email": "oliver.bennett@example.com",
        "age": 41,
        "city": "Manchester",
        "signup_date": "2020-11-02",
    }
    assert people[3]["signup_date"] == "2022-06-07"
    assert people[4]["name"] == "Liam O'Connor"
    assert people[8]["city"] is None
    assert people[9]["name"] == "Mia Van den Berg"
    assert people[17]["email"] == "zoe.dubois@example.fr"
    assert all(isinstance(p["age"], int) for p in people.values())


def test_csv_sinks_write_each_message_once(tmp_path: Path) -> None:
    csv_clean = example_module(CSV_CLEAN)
    path = tmp_path / "clean.jsonl"
    first, second = csv_clean.CleanRows(str(path)), csv_clean.CleanRows(str(path))
    person = {"id": 1, "name": "Ada"}
    first.process(person, context_for("m1", person))
    second.process(person, context_for("m1", person))  # redelivered to another instance
    with path.open("ab") as handle:
        handle.write(b'{"message_id": "m2", "id"')  # a write cut short by a crash
    second.process({"id": 2}, context_for("m2", {"id": 2}))
    first.process({"id": 2}, context_for("m2", {"id": 2}))
    assert read_jsonl(path) == [
        {"message_id": "m1", "id": 1, "name": "Ada"},
        {"message_id": "m2", "id": 2},
    ]

    rejected = csv_clean.RejectedRows(str(tmp_path / "rejected.jsonl"))
    record = {"line": 3, "row": {"id": "x"}}
    for _ in range(2):
        rejected.process(record, context_for("m3", record, {"error": "rejected: bad id"}))
    assert read_jsonl(tmp_path / "rejected.jsonl") == [
        {"message_id": "m3", "line": 3, "row": {"id": "x"}, "reason": "rejected: bad id"}
    ]


# -- enrichment --------------------------------------------------------------------------------


def expected_order(order: dict[str, Any], tax_rates: dict[str, float]) -> dict[str, Any]:
    customers = json.loads((ENRICHMENT / "data" / "customers.json").read_text())
    lines = [{**item, "amount": item["qty"] * item["unit_price"]} for item in order["items"]]
    subtotal = sum(item["qty"] * item["unit_price"] for item in order["items"])
    rate = tax_rates[order["ship_to"]]
    tax = math.floor(Fraction(subtotal) * Fraction(str(rate)) + Fraction(1, 2))
    return {
        "order_id": order["order_id"],
        "currency": "EUR",
        "ship_to": order["ship_to"],
        "lines": lines,
        "subtotal": subtotal,
        "tax_rate": rate,
        "tax": tax,
        "total": subtotal + tax,
        "customer": next(c for c in customers if c["id"] == order["customer_id"]),
    }


def test_enrichment_joins_every_order_exactly_once(tmp_path: Path) -> None:
    flow = Flow.load(ENRICHMENT / "flow.yaml")
    flow.get("store").config = {"path": str(tmp_path / "orders.jsonl")}
    assert run_to_end(flow, tmp_path) == {}
    check_enriched_orders(flow, tmp_path / "orders.jsonl")


def check_enriched_orders(flow: Flow, path: Path) -> None:
    """Every generated order stored once, equal to an independently computed record."""
    stored = read_jsonl(path)
    order_ids = [o["order_id"] for o in stored]
    assert sorted(order_ids) == [f"ORD-{n:05d}" for n in range(1, 201)]

    enrichment = example_module(ENRICHMENT)
    source = flow.get("orders").config
    tax_rates = flow.get("pricing").config["tax_rates"]
    orders = [out.payload for out in enrichment.generate_orders(**source)]
    by_id = {o["order_id"]: o for o in stored}
    for order in orders:
        assert by_id[order["order_id"]] == expected_order(order, tax_rates)


def test_enrichment_python_flow_equals_the_yaml_flow() -> None:
    from_yaml = Flow.load(ENRICHMENT / "flow.yaml")
    from_python: Flow = runpy.run_path(str(ENRICHMENT / "flow.py"))["flow"]
    assert from_python.to_dict() == from_yaml.to_dict()
    assert from_python.base_dir == from_yaml.base_dir

    reloaded = Flow.loads(from_python.dump(), base_dir=from_python.base_dir)
    assert reloaded.to_dict() == from_python.to_dict()
    assert reloaded == from_python


def test_the_celery_canvas_as_a_flow_gives_every_result_once(tmp_path: Path) -> None:
    flow = Flow.load(EXAMPLES / "migrating" / "flow.yaml")  # docs/migrating.md
    flow.get("results").config = {"path": str(tmp_path / "results.jsonl")}
    assert run_to_end(flow, tmp_path) == {}
    results = read_jsonl(tmp_path / "results.jsonl")
    assert sorted(r["n"] for r in results) == list(range(12))  # 3 ticks of 4
    assert all(r["sum"] == r["n"] ** 2 + r["n"] ** 3 for r in results)


@pytest.mark.parametrize(
    "folder", [WORDCOUNT, CSV_CLEAN, ENRICHMENT, EXAMPLES / "polyglot", EXAMPLES / "migrating"]
)
def test_example_flow_dumps_and_loads_back_equal(folder: Path) -> None:
    flow = Flow.load(folder / "flow.yaml")
    assert Flow.loads(flow.dump(), base_dir=flow.base_dir) == flow
