// Draw a flow: processors from the palette, connections from port to port, each element's
// settings as YAML; then review the whole flow file as a diff and deploy it as a revision.
import {
  applyEdgeChanges,
  applyNodeChanges,
  Background,
  Controls,
  type EdgeChange,
  type Connection as Link,
  type NodeChange,
  ReactFlow,
  ReactFlowProvider,
  useReactFlow,
} from "@xyflow/react";
import { type DragEvent, useCallback, useEffect, useMemo, useState } from "react";
import { parse, stringify } from "yaml";
import { call, type Me, may } from "./api";
import { LiveContext, ProcessorNode, QueueEdge } from "./FlowPage";
import {
  addProcessor,
  type Connection,
  connect,
  type FlowDoc,
  type FlowEdge,
  type FlowNode,
  fromGraph,
  fromYaml,
  type Graph,
  KINDS,
  type Kind,
  type Processor,
  toGraph,
  toYaml,
  updateConnection,
  updateProcessor,
} from "./flow";
import { DiffView } from "./panels";

const nodeTypes = { processor: ProcessorNode };
const edgeTypes = { queue: QueueEdge };
const DRAG = "application/x-elasticcode-kind";
const NAME = /^[A-Za-z_][\w-]{0,99}$/;

const DESIGN = {
  live: { view: null, state: "closed", reason: "" },
  controls: {},
  keys: {},
  design: true,
} as const;

export function Designer({ me, name }: { me: Me; name: string | null }) {
  return (
    <ReactFlowProvider>
      <LiveContext.Provider value={DESIGN}>
        <Canvas me={me} name={name} />
      </LiveContext.Provider>
    </ReactFlowProvider>
  );
}

function Canvas({ me, name }: { me: Me; name: string | null }) {
  const [base, setBase] = useState<FlowDoc | null>(name === null ? { name: "" } : null);
  const [flowName, setFlowName] = useState(name ?? "");
  const [graph, setGraph] = useState<Graph>({ nodes: [], edges: [] });
  const [selected, setSelected] = useState<{ kind: "node" | "edge"; id: string } | null>(null);
  const [problem, setProblem] = useState("");
  const [review, setReview] = useState(false);
  const flow = useReactFlow();

  useEffect(() => {
    if (name === null) return;
    call<FlowDoc>("GET", `/flows/${encodeURIComponent(name)}/export`)
      .then((doc) => {
        setBase(doc);
        setGraph(toGraph(doc));
      })
      .catch((e: Error) => setProblem(e.message));
  }, [name]);

  const attempt = (change: () => Graph) => {
    try {
      setGraph(change());
      setProblem("");
      return true;
    } catch (e) {
      setProblem(e instanceof Error ? e.message : String(e));
      return false;
    }
  };
  const onNodesChange = useCallback(
    (changes: NodeChange<FlowNode>[]) =>
      setGraph((g) => ({ ...g, nodes: applyNodeChanges(changes, g.nodes) })),
    [],
  );
  const onEdgesChange = useCallback(
    (changes: EdgeChange<FlowEdge>[]) =>
      setGraph((g) => ({ ...g, edges: applyEdgeChanges(changes, g.edges) as FlowEdge[] })),
    [],
  );
  const onConnect = (l: Link) =>
    attempt(() =>
      connect(graph, l.source, l.sourceHandle ?? "success", l.target, l.targetHandle ?? "input"),
    );
  const add = (kind: Kind, at?: { x: number; y: number }) => {
    const where = at ?? flow.screenToFlowPosition({ x: 300, y: 200 + 40 * graph.nodes.length });
    attempt(() => addProcessor(graph, kind, where));
  };
  const onDrop = (e: DragEvent) => {
    e.preventDefault();
    const kind = e.dataTransfer.getData(DRAG) as Kind;
    if (kind in KINDS) add(kind, flow.screenToFlowPosition({ x: e.clientX, y: e.clientY }));
  };

  const doc = useMemo(
    () => (base ? fromGraph({ ...base, name: flowName }, graph) : null),
    [base, flowName, graph],
  );
  if (!may(me, "flow.deploy", flowName || undefined) && name !== null) {
    return (
      <p className="error">
        {me.user} may not deploy flow {name}.
      </p>
    );
  }
  if (!base || !doc) return <p>{problem || "Loading…"}</p>;
  const node =
    selected?.kind === "node" ? graph.nodes.find((n) => n.id === selected.id) : undefined;
  const edge =
    selected?.kind === "edge" ? graph.edges.find((e) => e.id === selected.id) : undefined;
  return (
    <div className="flowpage">
      {/* biome-ignore lint/a11y/noStaticElementInteractions: a drop target for the palette */}
      <div
        className="canvas design"
        data-testid="design-canvas"
        onDragOver={(e) => {
          e.preventDefault();
          e.dataTransfer.dropEffect = "move";
        }}
        onDrop={onDrop}
      >
        <ReactFlow
          nodes={graph.nodes.map((n) => ({ ...n, selected: selected?.id === n.id }))}
          edges={graph.edges}
          nodeTypes={nodeTypes}
          edgeTypes={edgeTypes}
          onNodesChange={onNodesChange}
          onEdgesChange={onEdgesChange}
          onConnect={onConnect}
          onNodeClick={(_, n) => setSelected({ kind: "node", id: n.id })}
          onEdgeClick={(_, e) => setSelected({ kind: "edge", id: e.id })}
          onPaneClick={() => setSelected(null)}
          deleteKeyCode={["Delete", "Backspace"]}
          fitView={name !== null /* a drawn flow's first processor stays where it is dropped */}
          fitViewOptions={{ maxZoom: 1 }}
          minZoom={0.05}
          proOptions={{ hideAttribution: true }}
        >
          <Background />
          <Controls showInteractive={false} />
        </ReactFlow>
      </div>
      <aside>
        <div className="panel">
          <label className="field">
            Flow
            <input
              value={flowName}
              disabled={name !== null}
              onChange={(e) => setFlowName(e.target.value)}
              placeholder="my-flow"
              data-testid="flow-name"
            />
          </label>
          <label className="field">
            Import a flow file (YAML or JSON)
            <input
              type="file"
              accept=".yaml,.yml,.json"
              data-testid="import"
              onChange={(e) => {
                const file = e.target.files?.[0];
                if (!file) return;
                file.text().then((text) => {
                  try {
                    const imported = fromYaml(text);
                    if (name !== null && imported.name !== name) {
                      throw new Error(`the file is flow ${imported.name}, not ${name}`);
                    }
                    setBase({ ...imported, processors: undefined, connections: undefined });
                    setFlowName(imported.name);
                    setGraph(toGraph(imported));
                    setSelected(null);
                    setProblem("");
                    setTimeout(() => flow.fitView({ maxZoom: 1 }), 50);
                  } catch (err) {
                    setProblem(`${file.name}: ${err instanceof Error ? err.message : String(err)}`);
                  }
                });
              }}
            />
          </label>
          <h3>Palette</h3>
          <p className="hint">
            Drag onto the canvas (or click); connect an output port to an input port.
          </p>
          <div className="palette">
            {(Object.keys(KINDS) as Kind[]).map((k) => (
              <button
                type="button"
                key={k}
                draggable
                onDragStart={(e) => {
                  e.dataTransfer.setData(DRAG, k);
                  e.dataTransfer.effectAllowed = "move";
                }}
                onClick={() => add(k)}
                data-testid={`palette-${k}`}
              >
                {KINDS[k].label}
              </button>
            ))}
          </div>
          {problem && (
            <p className="error" role="alert" data-testid="design-problem">
              {problem}
            </p>
          )}
          {node && (
            <ElementEditor
              key={`n-${node.id}`}
              title={`Processor ${node.id}`}
              value={node.data.processor}
              onApply={(v) => {
                const ok = attempt(() => updateProcessor(graph, node.id, v as Processor));
                if (ok) setSelected({ kind: "node", id: String((v as Processor).name) });
              }}
            />
          )}
          {edge && (
            <ElementEditor
              key={`e-${edge.id}`}
              title="Connection"
              value={edge.data.connection}
              onApply={(v) => {
                if (attempt(() => updateConnection(graph, edge.id, v as Connection)))
                  setSelected(null);
              }}
            />
          )}
          <div className="actions">
            <button type="button" onClick={() => setReview(!review)} data-testid="review">
              {review ? "Hide the flow file" : "Review and deploy"}
            </button>
          </div>
          {review && (
            <Deploy
              base={name === null ? null : base}
              doc={doc}
              isNew={name === null}
              onRefused={(why) => {
                // the element the server's reason names: selected, its editor open
                const named = graph.nodes.find((n) => why.includes(`'${n.id}'`));
                if (named) setSelected({ kind: "node", id: named.id });
              }}
            />
          )}
        </div>
      </aside>
    </div>
  );
}

/** One processor's or connection's entry of the flow file, edited as YAML. */
function ElementEditor(props: { title: string; value: object; onApply: (v: unknown) => void }) {
  const [text, setText] = useState(() => stringify(props.value, { lineWidth: 0 }));
  const [error, setError] = useState("");
  return (
    <div className="element">
      <h3>{props.title}</h3>
      <textarea
        className="editor small"
        value={text}
        onChange={(e) => setText(e.target.value)}
        spellCheck={false}
        data-testid="element-editor"
      />
      <div className="actions">
        <button
          type="button"
          onClick={() => {
            try {
              const v = parse(text) as unknown;
              if (v === null || typeof v !== "object" || Array.isArray(v)) {
                throw new Error("give its settings as a mapping (key: value)");
              }
              setError("");
              props.onApply(v);
            } catch (e) {
              setError(e instanceof Error ? e.message : String(e));
            }
          }}
          data-testid="element-apply"
        >
          Apply
        </button>
      </div>
      {error && <p className="error">{error}</p>}
    </div>
  );
}

/** The flow file drawn, as a diff against the running revision; deployed as the next. */
function Deploy(props: {
  base: FlowDoc | null;
  doc: FlowDoc;
  isNew: boolean;
  onRefused: (why: string) => void;
}) {
  const { base, doc, isNew, onRefused } = props;
  const [message, setMessage] = useState("");
  const text = toYaml(doc);
  const deploy = () => {
    setMessage("");
    if (!NAME.test(doc.name)) {
      setMessage("not deployed: give the flow a name (letters, digits, _ and -)");
      return;
    }
    try {
      fromYaml(text);
    } catch (e) {
      setMessage(`not deployed: ${e instanceof Error ? e.message : String(e)}`);
      return;
    }
    const go = () =>
      call<{ revision: number; changed: boolean }>("POST", "/flows", {
        document: doc,
        note: "drawn in the web UI",
      }).then(() => {
        location.hash = `#/flows/${encodeURIComponent(doc.name)}`;
      });
    const check = isNew
      ? call("GET", `/flows/${encodeURIComponent(doc.name)}`).then(
          () => {
            throw new Error(`there is a flow ${doc.name} already: choose another name`);
          },
          (e: { status?: number }) => {
            if (e.status !== 404) throw e;
          },
        )
      : Promise.resolve();
    check.then(go).catch((e: Error) => {
      setMessage(`not deployed: ${e.message}`);
      onRefused(e.message);
    });
  };
  return (
    <div className="deploy">
      <DiffView from={base ? toYaml(base) : ""} to={text} />
      <div className="actions">
        <button type="button" onClick={deploy} data-testid="deploy-drawn">
          {isNew ? "Deploy the new flow" : "Deploy as a new revision"}
        </button>
      </div>
      {message && (
        <p className="error" data-testid="deploy-message">
          {message}
        </p>
      )}
    </div>
  );
}
