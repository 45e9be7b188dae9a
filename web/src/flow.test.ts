import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { connectionKey, fromGraph, fromYaml, toGraph, toYaml } from "./flow";

const ENRICH = readFileSync(
  new URL("../../examples/enrichment/flow.yaml", import.meta.url),
  "utf8",
);

describe("flow document and graph", () => {
  it("round-trips an example flow through the graph unchanged", () => {
    const doc = fromYaml(ENRICH);
    const again = fromGraph(doc, toGraph(doc));
    expect(again).toEqual(doc);
    expect(fromYaml(toYaml(again))).toEqual(doc);
  });

  it("keeps keys it does not know, and the order of processors and connections", () => {
    const text = [
      "name: f",
      "x-note: kept",
      "processors:",
      "  - {name: b, code: m:b, future_key: 1}",
      "  - {name: a, code: m:a, source: {interval: 1s}}",
      "connections:",
      "  - {from: a, to: b, max_messages: 5}",
    ].join("\n");
    const doc = fromYaml(text);
    const graph = toGraph(doc);
    expect(graph.nodes.map((n) => n.id)).toEqual(["b", "a"]);
    expect(fromGraph(doc, graph)).toEqual(doc);
    expect(doc["x-note"]).toBe("kept");
  });

  it("fills in default ports as the metrics view names connections", () => {
    const doc = fromYaml(
      "name: f\nprocessors:\n  - {name: a, code: m:a}\n  - {name: b, code: m:b, inputs: [left, right]}\nconnections:\n  - {from: a, to: b}\n  - {from: a.failure, to: b.right}\n",
    );
    const byName = new Map((doc.processors ?? []).map((p) => [p.name, p]));
    const keys = (doc.connections ?? []).map((c) => connectionKey(c, byName));
    expect(keys).toEqual(["a.success->b.left", "a.failure->b.right"]);
    const graph = toGraph(doc);
    expect(graph.edges.map((e) => [e.sourceHandle, e.targetHandle])).toEqual([
      ["success", "left"],
      ["failure", "right"],
    ]);
    expect(graph.nodes.find((n) => n.id === "b")?.data.inputs).toEqual(["left", "right"]);
  });

  it("lays out a chain left to right", () => {
    const doc = fromYaml(
      "name: f\nprocessors:\n  - {name: c, code: m:c}\n  - {name: a, code: m:a}\n  - {name: b, code: m:b}\nconnections:\n  - {from: a, to: b}\n  - {from: b, to: c}\n",
    );
    const x = Object.fromEntries(toGraph(doc).nodes.map((n) => [n.id, n.position.x]));
    expect(x.a).toBeLessThan(x.b);
    expect(x.b).toBeLessThan(x.c);
  });

  it("says what is wrong with a file that is not a flow", () => {
    expect(() => fromYaml("- a\n- b\n")).toThrow(/mapping/);
    expect(() => fromYaml("processors: []\n")).toThrow(/no name/);
    expect(() => fromYaml("name: f\nconnections:\n  - {from: a}\n")).toThrow(/connection 1/);
  });

  it("lays out 200 processors", () => {
    const processors = Array.from({ length: 200 }, (_, i) => ({ name: `p${i}`, code: "m:f" }));
    const connections = processors.slice(1).map((p, i) => ({ from: `p${i}`, to: p.name }));
    const graph = toGraph({ name: "big", processors, connections });
    expect(new Set(graph.nodes.map((n) => `${n.position.x},${n.position.y}`)).size).toBe(200);
  });
});
