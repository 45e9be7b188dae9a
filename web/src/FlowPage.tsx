import {
  Background,
  BaseEdge,
  Controls,
  EdgeLabelRenderer,
  type EdgeProps,
  getBezierPath,
  Handle,
  type NodeProps,
  Position,
  ReactFlow,
} from "@xyflow/react";
import { createContext, useCallback, useContext, useEffect, useMemo, useState } from "react";
import { call, type Me, may, type ProcessorInfo } from "./api";
import {
  connectionKey,
  type FlowDoc,
  type FlowEdge,
  type FlowNode,
  type Processor,
  toGraph,
} from "./flow";
import { count, fill, type Live, rate, useLive } from "./live";
import { Audit, DeadLetters, ProcessorPanel, Revisions, Trace, Yaml } from "./panels";

type Ctx = {
  live: Live;
  controls: Record<string, ProcessorInfo>;
  keys: Record<string, string>;
  /** drawn in the designer: what each processor runs, not its counts */
  design?: boolean;
};
export const LiveContext = createContext<Ctx>({
  live: { view: null, state: "connecting", reason: "" },
  controls: {},
  keys: {},
});

export function ProcessorNode({ id, data, selected }: NodeProps<FlowNode>) {
  const { live, controls, design } = useContext(LiveContext);
  const v = live.view?.processors[id];
  const c = controls[id];
  const status = design ? "" : c?.paused ? "paused" : (v?.status ?? "unknown");
  const p99 = v?.process_ms?.p99;
  return (
    <div className={`node ${status} ${selected ? "selected" : ""}`} data-testid={`processor-${id}`}>
      {data.inputs.map((port, i) => (
        <Handle
          key={port}
          id={port}
          type="target"
          position={Position.Left}
          style={{ top: `${((i + 1) * 100) / (data.inputs.length + 1)}%` }}
          title={port}
        >
          {data.inputs.length > 1 && <span className="port in">{port}</span>}
        </Handle>
      ))}
      <div className="title">
        <span className={`dot ${status}`} />
        <b>{id}</b>
        <span className="status" data-testid={`status-${id}`}>
          {status}
        </span>
      </div>
      {design ? (
        <Runs processor={data.processor} />
      ) : (
        <div className="stats">
          <span>
            in <b data-testid={`in-${id}`}>{count(v?.totals.received)}</b> {rate(v?.rates.in)}
          </span>
          <span>
            out <b data-testid={`out-${id}`}>{count(v?.totals.emitted)}</b> {rate(v?.rates.out)}
          </span>
          <span className={v?.totals.errors ? "bad" : ""}>
            errors <b>{count(v?.totals.errors)}</b> · dead <b>{count(v?.totals.dead)}</b>
          </span>
          <span>
            p99 {p99 === undefined || p99 === null ? "–" : `${p99} ms`} · ×{v?.instances ?? 0}
            {v?.hosts.length ? ` on ${v.hosts.join(", ")}` : ""}
          </span>
        </div>
      )}
      {data.outputs.map((port, i) => (
        <Handle
          key={port}
          id={port}
          type="source"
          position={Position.Right}
          style={{ top: `${((i + 1) * 100) / (data.outputs.length + 1)}%` }}
          title={port}
        >
          <span className="port out">{port}</span>
        </Handle>
      ))}
    </div>
  );
}

/** What a processor runs and how many of it, as its entry of the flow file says. */
function Runs({ processor: p }: { processor: Processor }) {
  const git = p.git as { repo?: string; ref?: string } | undefined;
  const command = Array.isArray(p.command) ? p.command.join(" ") : p.command;
  const what = p.inline
    ? "inline Python"
    : command
      ? `command: ${String(command)}`
      : String(p.code ?? p.name);
  const scale = p.scale as { min?: number; max?: number } | undefined;
  return (
    <div className="stats">
      <span className="runs">{what}</span>
      {git && (
        <span className="runs">
          git {git.repo} @ {git.ref}
        </span>
      )}
      <span>
        {scale
          ? `scales ${scale.min ?? 1}–${scale.max}`
          : `instances ${String(p.instances ?? "auto")}`}
        {p.source ? " · source" : ""}
      </span>
    </div>
  );
}

export function QueueEdge(props: EdgeProps<FlowEdge>) {
  const { live, keys, design } = useContext(LiveContext);
  const [path, x, y] = getBezierPath(props);
  const key = keys[props.id];
  const c = key ? live.view?.connections[key] : undefined;
  const state = fill(c);
  return (
    <>
      <BaseEdge id={props.id} path={path} className={`queue ${state}`} />
      {!design && (
        <EdgeLabelRenderer>
          <div
            className={`badge ${state}`}
            style={{ transform: `translate(-50%, -50%) translate(${x}px, ${y}px)` }}
            data-testid={`queue-${key}`}
            title={c ? `${key}: ${count(c.depth)} of ${count(c.max_messages)} waiting` : key}
          >
            {count(c?.depth)} · {rate(c?.rate)}
            {c?.back_pressure ? " · full" : ""}
          </div>
        </EdgeLabelRenderer>
      )}
    </>
  );
}

const TABS = ["processor", "dead", "trace", "revisions", "yaml", "audit"] as const;
type Tab = (typeof TABS)[number];
const TAB_NAMES: Record<Tab, string> = {
  processor: "Processor",
  dead: "Dead letters",
  trace: "Trace",
  revisions: "Revisions",
  yaml: "YAML",
  audit: "Audit",
};

const nodeTypes = { processor: ProcessorNode };
const edgeTypes = { queue: QueueEdge };

export function FlowPage({ me, name }: { me: Me; name: string }) {
  const [doc, setDoc] = useState<FlowDoc | null>(null);
  const [error, setError] = useState("");
  const [controls, setControls] = useState<Record<string, ProcessorInfo>>({});
  const [selected, setSelected] = useState<string | null>(null);
  const [tab, setTab] = useState<Tab>("processor");
  const [traced, setTraced] = useState("");
  const live = useLive(name);
  const path = `/flows/${encodeURIComponent(name)}`;

  const loadControls = useCallback(() => {
    call<ProcessorInfo[]>("GET", `${path}/processors`)
      .then((ps) => setControls(Object.fromEntries(ps.map((p) => [p.name, p]))))
      .catch((e: Error) => setError(e.message));
  }, [path]);
  const loadDoc = useCallback(() => {
    call<FlowDoc>("GET", `${path}/export`)
      .then(setDoc)
      .catch((e: Error) => setError(e.message));
  }, [path]);
  useEffect(() => {
    loadDoc();
    loadControls();
    const t = setInterval(loadControls, 5000);
    return () => clearInterval(t);
  }, [loadDoc, loadControls]);

  const graph = useMemo(() => (doc ? toGraph(doc) : { nodes: [], edges: [] }), [doc]);
  const keys = useMemo(() => {
    const byName = new Map((doc?.processors ?? []).map((p) => [p.name, p]));
    return Object.fromEntries(
      graph.edges.map((e) => [e.id, connectionKey(e.data.connection, byName)]),
    );
  }, [doc, graph]);
  const nodes = useMemo(
    () => graph.nodes.map((n) => ({ ...n, selected: n.id === selected })),
    [graph, selected],
  );

  if (error) return <p className="error">{error}</p>;
  if (!doc) return <p>Loading…</p>;
  return (
    <LiveContext.Provider value={{ live, controls, keys }}>
      <div className="flowpage">
        <div className="canvas" data-testid="canvas">
          <ReactFlow
            nodes={nodes}
            edges={graph.edges}
            nodeTypes={nodeTypes}
            edgeTypes={edgeTypes}
            onNodeClick={(_, n) => {
              setSelected(n.id);
              setTab("processor");
            }}
            nodesConnectable={false}
            fitView
            minZoom={0.05}
            proOptions={{ hideAttribution: true }}
          >
            <Background />
            <Controls showInteractive={false} />
          </ReactFlow>
          <div className={`livestate ${live.state}`} data-testid="live">
            {live.state === "live"
              ? `live · ${new Date((live.view?.at ?? 0) * 1000).toLocaleTimeString()}`
              : live.state === "closed"
                ? `not live: ${live.reason}`
                : "connecting…"}
          </div>
        </div>
        <aside>
          <nav>
            {TABS.filter(
              (t) =>
                (t !== "dead" || may(me, "flow.operate", name)) &&
                (t !== "audit" || may(me, "audit.read")),
            ).map((t) => (
              <button
                type="button"
                key={t}
                className={tab === t ? "on" : ""}
                onClick={() => setTab(t)}
                data-testid={`tab-${t}`}
              >
                {TAB_NAMES[t]}
              </button>
            ))}
            {may(me, "flow.deploy", name) && (
              <a
                className="button"
                href={`#/design/${encodeURIComponent(name)}`}
                data-testid="design"
              >
                Design
              </a>
            )}
          </nav>
          {tab === "processor" && (
            <ProcessorPanel
              me={me}
              flow={name}
              info={selected ? controls[selected] : undefined}
              onChange={loadControls}
            />
          )}
          {tab === "dead" && (
            <DeadLetters
              path={path}
              onTrace={(id) => {
                setTraced(id);
                setTab("trace");
              }}
            />
          )}
          {tab === "trace" && <Trace path={path} start={traced} />}
          {tab === "audit" && <Audit flow={name} />}
          {tab === "revisions" && (
            <Revisions me={me} flow={name} path={path} onRollback={loadDoc} />
          )}
          {tab === "yaml" && <Yaml me={me} doc={doc} onDeploy={loadDoc} />}
        </aside>
      </div>
    </LiveContext.Provider>
  );
}
