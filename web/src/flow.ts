// A flow document (what `elasticcode apply` takes and `GET /flows/{name}/export` gives) as a
// graph of processors and connections, and back. The document is the truth: each node and edge
// carries its processor's or connection's own entry, unknown keys too, so that a flow read from
// YAML and drawn is written out as it came in.
import dagre from "@dagrejs/dagre";
import type { Edge, Node } from "@xyflow/react";
import { parse, stringify } from "yaml";

export type Processor = { name: string; [key: string]: unknown };
export type Connection = { from: string; to: string; [key: string]: unknown };
export type FlowDoc = {
  name: string;
  processors?: Processor[];
  connections?: Connection[];
  [key: string]: unknown;
};

export type NodeData = { processor: Processor; inputs: string[]; outputs: string[] };
export type FlowNode = Node<NodeData, "processor">;
export type FlowEdge = Edge<{ connection: Connection }, "queue"> & {
  data: { connection: Connection };
  sourceHandle: string;
  targetHandle: string;
};
export type Graph = { nodes: FlowNode[]; edges: FlowEdge[] };

export const DEFAULT_INPUT = "input";
export const DEFAULT_OUTPUTS = ["success", "failure"];
export const NODE_WIDTH = 230;
export const NODE_HEIGHT = 120;

/** The flow in a YAML (or JSON) text; a clear error where it is not a flow document. */
export function fromYaml(text: string): FlowDoc {
  const doc = parse(text) as unknown;
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    throw new Error("a flow file is a mapping with name, processors and connections");
  }
  const flow = doc as FlowDoc;
  if (typeof flow.name !== "string" || !flow.name) {
    throw new Error("the flow has no name: give it one (name: my-flow)");
  }
  for (const [i, p] of (flow.processors ?? []).entries()) {
    if (typeof p?.name !== "string") throw new Error(`processor ${i + 1} has no name`);
  }
  for (const [i, c] of (flow.connections ?? []).entries()) {
    if (typeof c?.from !== "string" || typeof c?.to !== "string") {
      throw new Error(`connection ${i + 1} needs from: and to:`);
    }
  }
  return flow;
}

export function toYaml(flow: FlowDoc): string {
  return stringify(flow, { lineWidth: 0 });
}

/** The input ports of a processor: a source has none. */
export function inputsOf(p: Processor): string[] {
  if (p.source !== undefined && p.source !== null) return [];
  return Array.isArray(p.inputs) ? (p.inputs as string[]) : [DEFAULT_INPUT];
}

export function outputsOf(p: Processor): string[] {
  return Array.isArray(p.outputs) ? (p.outputs as string[]) : DEFAULT_OUTPUTS;
}

/** A connection's ends with their ports filled in: ["a", "success", "b", "input"]. */
export function ends(
  c: Connection,
  processors: Map<string, Processor>,
): [string, string, string, string] {
  const [src, out = "success"] = c.from.split(".", 2);
  const [dst, inp] = c.to.split(".", 2);
  const target = processors.get(dst);
  return [src, out, dst, inp ?? (target ? (inputsOf(target)[0] ?? DEFAULT_INPUT) : DEFAULT_INPUT)];
}

/** The key of a connection in a metrics view: "a.success->b.input". */
export function connectionKey(c: Connection, processors: Map<string, Processor>): string {
  const [src, out, dst, inp] = ends(c, processors);
  return `${src}.${out}->${dst}.${inp}`;
}

/** The flow as a graph, laid out left to right in the order data moves. */
export function toGraph(flow: FlowDoc): Graph {
  const procs = flow.processors ?? [];
  const byName = new Map(procs.map((p) => [p.name, p]));
  const edges: FlowEdge[] = (flow.connections ?? []).map((c, i) => {
    const [src, out, dst, inp] = ends(c, byName);
    return {
      id: `${connectionKey(c, byName)}#${i}`,
      source: src,
      target: dst,
      sourceHandle: out,
      targetHandle: inp,
      type: "queue",
      data: { connection: c },
    };
  });
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 40, ranksep: 90 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const p of procs) g.setNode(p.name, { width: NODE_WIDTH, height: NODE_HEIGHT });
  for (const e of edges)
    if (byName.has(e.source) && byName.has(e.target)) g.setEdge(e.source, e.target);
  dagre.layout(g);
  const nodes: FlowNode[] = procs.map((p) => {
    const at = g.node(p.name);
    return {
      id: p.name,
      type: "processor",
      position: { x: at.x - NODE_WIDTH / 2, y: at.y - NODE_HEIGHT / 2 },
      data: { processor: p, inputs: inputsOf(p), outputs: outputsOf(p) },
    };
  });
  return { nodes, edges };
}

/** The flow document a graph shows: the processors in the order of its nodes, the
 * connections in the order of its edges, the rest of ``base`` as it was. */
export function fromGraph(base: FlowDoc, graph: Graph): FlowDoc {
  const out: FlowDoc = { ...base };
  out.processors = graph.nodes.map((n) => n.data.processor);
  out.connections = graph.edges.map((e) => e.data.connection);
  if (base.processors === undefined && out.processors.length === 0) delete out.processors;
  if (base.connections === undefined && out.connections.length === 0) delete out.connections;
  return out;
}

/** The kinds of processor the palette offers, each with the entry a new one starts from. */
export const KINDS = {
  python: { label: "Python function", start: { code: "module:function" } },
  inline: {
    label: "Inline Python",
    start: { inline: "def process(payload):\n    return payload\n" },
  },
  command: { label: "Command", start: { command: ["cat"] } },
  git: {
    label: "Code from git",
    start: { git: { repo: "https://example.com/repo.git", ref: "main" }, code: "module:function" },
  },
  source: {
    label: "Source (every second)",
    start: { code: "module:function", source: { interval: "1s" } },
  },
} as const;
export type Kind = keyof typeof KINDS;

function nodeOf(p: Processor, position: { x: number; y: number }): FlowNode {
  return {
    id: p.name,
    type: "processor",
    position,
    data: { processor: p, inputs: inputsOf(p), outputs: outputsOf(p) },
  };
}

/** A name no processor of the graph has: ``base``, else ``base-2``, ``base-3``… */
export function freeName(graph: Graph, base: string): string {
  const taken = new Set(graph.nodes.map((n) => n.id));
  if (!taken.has(base)) return base;
  let i = 2;
  while (taken.has(`${base}-${i}`)) i += 1;
  return `${base}-${i}`;
}

export function addProcessor(
  graph: Graph,
  kind: Kind,
  position: { x: number; y: number },
  name?: string,
): Graph {
  const p: Processor = {
    name: freeName(graph, name ?? kind),
    ...structuredClone(KINDS[kind].start),
  };
  return { ...graph, nodes: [...graph.nodes, nodeOf(p, position)] };
}

/** A connection from an output port to an input port (in the short form where a port is
 * the default one); an error where it would repeat one or loop on itself. */
export function connect(
  graph: Graph,
  source: string,
  sourceHandle: string,
  target: string,
  targetHandle: string,
): Graph {
  if (source === target) throw new Error(`${source} cannot feed itself`);
  const to = graph.nodes.find((n) => n.id === target);
  if (!to) throw new Error(`no processor ${target}`);
  const connection: Connection = {
    from: sourceHandle === "success" ? source : `${source}.${sourceHandle}`,
    to: targetHandle === to.data.inputs[0] ? target : `${target}.${targetHandle}`,
  };
  const id = `${source}.${sourceHandle}->${target}.${targetHandle}`;
  if (graph.edges.some((e) => e.id.split("#")[0] === id)) {
    throw new Error(`${source}.${sourceHandle} already goes to ${target}.${targetHandle}`);
  }
  const edge: FlowEdge = {
    id: `${id}#${graph.edges.length}`,
    source,
    target,
    sourceHandle,
    targetHandle,
    type: "queue",
    data: { connection },
  };
  return { ...graph, edges: [...graph.edges, edge] };
}

/** The processor ``name`` replaced by ``p`` (renamed too: its connections follow). */
export function updateProcessor(graph: Graph, name: string, p: Processor): Graph {
  if (typeof p.name !== "string" || !p.name) throw new Error("a processor needs a name");
  if (p.name !== name && graph.nodes.some((n) => n.id === p.name)) {
    throw new Error(`there is a processor ${p.name} already`);
  }
  const rename = (end: string) => {
    const [proc, port] = end.split(".", 2);
    return proc === name ? (port ? `${p.name}.${port}` : p.name) : end;
  };
  const nodes = graph.nodes.map((n) => (n.id === name ? nodeOf(p, n.position) : n));
  const doc = fromGraph({ name: "" }, { nodes, edges: graph.edges });
  doc.connections = (doc.connections ?? []).map((c) => ({
    ...c,
    from: rename(c.from),
    to: rename(c.to),
  }));
  const positions = new Map(nodes.map((n) => [n.id, n.position]));
  return withPositions(toGraph(doc), positions);
}

export function updateConnection(graph: Graph, edgeId: string, c: Connection): Graph {
  if (typeof c.from !== "string" || typeof c.to !== "string") {
    throw new Error("a connection needs from: and to:");
  }
  const edges = graph.edges.map((e) => (e.id === edgeId ? { ...e, data: { connection: c } } : e));
  const doc = fromGraph({ name: "" }, { nodes: graph.nodes, edges });
  return withPositions(toGraph(doc), new Map(graph.nodes.map((n) => [n.id, n.position])));
}

/** The graph without the processors and connections of ``ids`` (a processor's connections
 * go with it). */
export function remove(graph: Graph, ids: Set<string>): Graph {
  const nodes = graph.nodes.filter((n) => !ids.has(n.id));
  const kept = new Set(nodes.map((n) => n.id));
  const edges = graph.edges.filter(
    (e) => !ids.has(e.id) && kept.has(e.source) && kept.has(e.target),
  );
  return { nodes, edges };
}

function withPositions(graph: Graph, positions: Map<string, { x: number; y: number }>): Graph {
  return {
    ...graph,
    nodes: graph.nodes.map((n) => ({ ...n, position: positions.get(n.id) ?? n.position })),
  };
}
