import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  addProcessor,
  connect,
  connectionKey,
  fromGraph,
  fromYaml,
  remove,
  toGraph,
  toYaml,
  updateProcessor,
} from "./flow";

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

describe("designing a flow", () => {
  it("adds processors, connects their ports and writes the flow file", () => {
    let g = toGraph({ name: "f" });
    g = addProcessor(g, "source", { x: 0, y: 0 }, "read");
    g = addProcessor(g, "python", { x: 300, y: 0 }, "clean");
    g = addProcessor(g, "inline", { x: 600, y: 0 });
    g = connect(g, "read", "success", "clean", "input");
    g = connect(g, "clean", "failure", "inline", "input");
    expect(() => connect(g, "read", "success", "clean", "input")).toThrow(/already/);
    expect(() => connect(g, "clean", "success", "clean", "input")).toThrow(/itself/);
    const doc = fromGraph({ name: "f" }, g);
    expect(doc.processors?.map((p) => p.name)).toEqual(["read", "clean", "inline"]);
    expect(doc.connections).toEqual([
      { from: "read", to: "clean" },
      { from: "clean.failure", to: "inline" },
    ]);
    expect(g.nodes.find((n) => n.id === "read")?.data.inputs).toEqual([]); // a source
    expect(fromYaml(toYaml(doc))).toEqual(doc);
  });

  it("renames a processor with its connections, and removes one with them", () => {
    let g = toGraph(
      fromYaml(
        "name: f\nprocessors:\n  - {name: a, code: m:a}\n  - {name: b, code: m:b}\nconnections:\n  - {from: a.failure, to: b}\n",
      ),
    );
    g = updateProcessor(g, "a", { name: "first", code: "m:a", instances: 2 });
    expect(fromGraph({ name: "f" }, g).connections).toEqual([{ from: "first.failure", to: "b" }]);
    expect(() => updateProcessor(g, "first", { name: "b", code: "m:a" })).toThrow(/already/);
    g = remove(g, new Set(["b"]));
    expect(fromGraph({ name: "f" }, g)).toEqual({
      name: "f",
      processors: [{ name: "first", code: "m:a", instances: 2 }],
    });
  });

  it("gives new processors names of their own", () => {
    let g = toGraph({ name: "f" });
    g = addProcessor(g, "python", { x: 0, y: 0 });
    g = addProcessor(g, "python", { x: 0, y: 0 });
    expect(g.nodes.map((n) => n.id)).toEqual(["python", "python-2"]);
  });
});
