// The side panels of a flow's page: a processor, dead letters, a trace, revisions, the YAML
// (with its editor), the audit log. Each calls the API as the CLI does.
import { diffLines } from "diff";
import { useCallback, useEffect, useMemo, useState } from "react";
import { call, type DeadLetter, type Me, may, type ProcessorInfo, type Revision } from "./api";
import { type FlowDoc, fromYaml, toYaml } from "./flow";

export function ProcessorPanel(props: {
  me: Me;
  flow: string;
  info: ProcessorInfo | undefined;
  onChange: () => void;
}) {
  const { me, flow, info, onChange } = props;
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  if (!info) return <p className="hint">Click a processor to see and operate it.</p>;
  const act = (action: string, body?: unknown) => {
    setBusy(true);
    setError("");
    const where = `/flows/${encodeURIComponent(flow)}/processors/${encodeURIComponent(info.name)}`;
    call("POST", `${where}/${action}`, body)
      .then(onChange)
      .catch((e: Error) => setError(e.message))
      .finally(() => setBusy(false));
  };
  const operate = may(me, "flow.operate", flow);
  return (
    <div className="panel" data-testid="processor-panel">
      <h2>{info.name}</h2>
      <p>
        {info.paused ? "paused" : "running"} · instances{" "}
        {String(info.pinned ?? info.scaled ?? info.instances)}
      </p>
      <ul className="placed">
        {info.placed.map((w) => (
          <li key={`${w.instance}-${w.agent}`}>
            #{w.instance} on {w.agent ?? "no agent yet"}: {w.state}
          </li>
        ))}
      </ul>
      {operate && (
        <div className="actions">
          {info.paused ? (
            <button
              type="button"
              disabled={busy}
              onClick={() => act("resume")}
              data-testid="resume"
            >
              Resume
            </button>
          ) : (
            <button type="button" disabled={busy} onClick={() => act("pause")} data-testid="pause">
              Pause
            </button>
          )}
          <button type="button" disabled={busy} onClick={() => act("restart")}>
            Restart
          </button>
          <ScaleForm disabled={busy} onScale={(n) => act("scale", { instances: n })} />
        </div>
      )}
      {error && <p className="error">{error}</p>}
    </div>
  );
}

function ScaleForm({ disabled, onScale }: { disabled: boolean; onScale: (n: number) => void }) {
  const [n, setN] = useState("1");
  return (
    <form
      className="scale"
      onSubmit={(e) => {
        e.preventDefault();
        onScale(Number(n));
      }}
    >
      <input
        type="number"
        min={0}
        value={n}
        onChange={(e) => setN(e.target.value)}
        aria-label="instances"
      />
      <button type="submit" disabled={disabled}>
        Scale
      </button>
    </form>
  );
}

export function DeadLetters({ path, onTrace }: { path: string; onTrace: (id: string) => void }) {
  const [letters, setLetters] = useState<DeadLetter[] | null>(null);
  const [chosen, setChosen] = useState<Set<string>>(new Set());
  const [message, setMessage] = useState("");
  const load = useCallback(() => {
    call<DeadLetter[]>("GET", `${path}/dead-letters?traceback=true`)
      .then(setLetters)
      .catch((e: Error) => setMessage(e.message));
  }, [path]);
  useEffect(load, [load]);
  const replay = (body: unknown) =>
    call<{ replayed: number }>("POST", `${path}/dead-letters/replay`, body)
      .then((r) => {
        setMessage(`replayed ${r.replayed}`);
        setChosen(new Set());
        load();
      })
      .catch((e: Error) => setMessage(e.message));
  if (!letters) return <p>{message || "Loading…"}</p>;
  return (
    <div className="panel" data-testid="dead-letters">
      <div className="actions">
        <button type="button" onClick={load}>
          Refresh
        </button>
        <button
          type="button"
          disabled={!chosen.size}
          onClick={() => replay({ ids: [...chosen] })}
          data-testid="replay-chosen"
        >
          Replay {chosen.size || ""}
        </button>
        <button type="button" disabled={!letters.length} onClick={() => replay({ all: true })}>
          Replay all
        </button>
      </div>
      {message && <p data-testid="dead-message">{message}</p>}
      {!letters.length && <p className="hint">No dead letters.</p>}
      {letters.map((d, i) => {
        const id = String(d.id);
        return (
          <details key={id} className="letter" open={i === 0}>
            <summary>
              <input
                type="checkbox"
                checked={chosen.has(id)}
                onChange={(e) => {
                  const next = new Set(chosen);
                  if (e.target.checked) next.add(id);
                  else next.delete(id);
                  setChosen(next);
                }}
                aria-label={`choose ${id}`}
              />{" "}
              {d.processor ?? d.queue}: {d.error.split("\n").filter(Boolean).at(-1)}
            </summary>
            <p>
              {d.deliveries} deliveries · {d.size} bytes · message {d.message_id ?? "?"}{" "}
              {d.message_id && (
                <button
                  type="button"
                  onClick={() => onTrace(d.message_id ?? "")}
                  data-testid="trace-letter"
                >
                  Trace
                </button>
              )}
            </p>
            <pre className="payload">{d.payload}</pre>
            <pre className="traceback">{d.error}</pre>
          </details>
        );
      })}
    </div>
  );
}

export function Revisions(props: { me: Me; flow: string; path: string; onRollback: () => void }) {
  const { me, flow, path, onRollback } = props;
  const [revs, setRevs] = useState<Revision[] | null>(null);
  const [message, setMessage] = useState("");
  const load = useCallback(() => {
    call<Revision[]>("GET", `${path}/revisions`)
      .then(setRevs)
      .catch((e: Error) => setMessage(e.message));
  }, [path]);
  useEffect(load, [load]);
  if (!revs) return <p>{message || "Loading…"}</p>;
  const current = revs.at(-1)?.revision;
  return (
    <div className="panel">
      {message && <p>{message}</p>}
      <ol className="revisions">
        {[...revs].reverse().map((r) => (
          <li key={r.revision}>
            <b>{r.revision}</b> {new Date(r.created * 1000).toLocaleString()} {r.note}
            {r.revision !== current && may(me, "flow.deploy", flow) && (
              <button
                type="button"
                onClick={() =>
                  call<{ revision: number }>("POST", `${path}/rollback`, { revision: r.revision })
                    .then((x) => {
                      setMessage(`deployed as revision ${x.revision}`);
                      load();
                      onRollback();
                    })
                    .catch((e: Error) => setMessage(e.message))
                }
              >
                Roll back to this
              </button>
            )}
          </li>
        ))}
      </ol>
    </div>
  );
}

export function Yaml(props: { me: Me; doc: FlowDoc; onDeploy: () => void }) {
  const { me, doc, onDeploy } = props;
  const text = useMemo(() => toYaml(doc), [doc]);
  const [draft, setDraft] = useState<string | null>(null);
  const [message, setMessage] = useState("");
  const deploy = () => {
    setMessage("");
    let next: FlowDoc;
    try {
      next = fromYaml(draft ?? "");
    } catch (e) {
      setMessage(`not deployed: ${e instanceof Error ? e.message : String(e)}`);
      return;
    }
    if (next.name !== doc.name) {
      setMessage(
        `not deployed: the flow is ${doc.name}; a new name is a new flow (elasticcode apply)`,
      );
      return;
    }
    call<{ revision: number; changed: boolean }>("POST", "/flows", {
      document: next,
      note: "deployed from the web UI",
    })
      .then((r) => {
        setMessage(
          r.changed
            ? `deployed as revision ${r.revision}`
            : `nothing changed: still revision ${r.revision}`,
        );
        setDraft(null);
        onDeploy();
      })
      .catch((e: Error) => setMessage(`not deployed: ${e.message}`));
  };
  if (draft !== null) {
    return (
      <div className="panel">
        <textarea
          className="editor"
          value={draft}
          onChange={(e) => setDraft(e.target.value)}
          spellCheck={false}
          data-testid="yaml-editor"
        />
        <DiffView from={text} to={draft} />
        <div className="actions">
          <button type="button" onClick={deploy} data-testid="deploy">
            Deploy as a new revision
          </button>
          <button type="button" onClick={() => setDraft(null)}>
            Cancel
          </button>
        </div>
        {message && <p data-testid="deploy-message">{message}</p>}
      </div>
    );
  }
  const download = () => {
    const url = URL.createObjectURL(new Blob([text], { type: "application/yaml" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = `${doc.name}.yaml`;
    a.click();
    URL.revokeObjectURL(url);
  };
  return (
    <div className="panel">
      <div className="actions">
        <button type="button" onClick={download} data-testid="export">
          Export YAML
        </button>
        {may(me, "flow.deploy", doc.name) && (
          <button type="button" onClick={() => setDraft(text)} data-testid="edit">
            Edit
          </button>
        )}
      </div>
      {message && <p data-testid="deploy-message">{message}</p>}
      <pre className="yaml" data-testid="yaml">
        {text}
      </pre>
    </div>
  );
}

type TraceNode = { id: string; events: Record<string, unknown>[]; children: TraceNode[] };

function TraceTree({ node }: { node: TraceNode }) {
  return (
    <li>
      <code>{node.id}</code>
      <ul className="events">
        {node.events.map((e, i) => (
          // biome-ignore lint/suspicious/noArrayIndexKey: a message's events, in order
          <li key={i} className={`event ${String(e.event)}`}>
            {String(e.event)} {e.processor ? `at ${String(e.processor)}` : ""}
            {e.host ? ` on ${String(e.host)}` : ""}
            {typeof e.at === "number" ? ` ${new Date(e.at * 1000).toLocaleTimeString()}` : ""}
            {e.error ? `: ${String(e.error).split("\n").filter(Boolean).at(-1)}` : ""}
          </li>
        ))}
      </ul>
      {node.children.length > 0 && (
        <ul className="tree">
          {node.children.map((c) => (
            <TraceTree key={c.id} node={c} />
          ))}
        </ul>
      )}
    </li>
  );
}

/** A message's lineage: from the message that entered the flow to every descendant. */
export function Trace({ path, start }: { path: string; start: string }) {
  const [id, setId] = useState(start);
  const [tree, setTree] = useState<TraceNode | null>(null);
  const [message, setMessage] = useState("");
  const look = useCallback(
    (which: string) => {
      setMessage("");
      setTree(null);
      if (!which) return;
      call<TraceNode>("GET", `${path}/trace/${encodeURIComponent(which)}`)
        .then(setTree)
        .catch((e: Error) => setMessage(e.message));
    },
    [path],
  );
  useEffect(() => look(start), [look, start]);
  return (
    <div className="panel" data-testid="trace">
      <form
        className="actions"
        onSubmit={(e) => {
          e.preventDefault();
          look(id.trim());
        }}
      >
        <input value={id} onChange={(e) => setId(e.target.value)} placeholder="message id" />
        <button type="submit">Trace</button>
      </form>
      {message && <p className="error">{message}</p>}
      {tree && (
        <ul className="tree">
          <TraceTree node={tree} />
        </ul>
      )}
    </div>
  );
}

type AuditEntry = { id: number; time: number; kind: string; text: string; actor: string };

export function Audit({ flow }: { flow: string }) {
  const [entries, setEntries] = useState<AuditEntry[] | null>(null);
  const [message, setMessage] = useState("");
  useEffect(() => {
    call<AuditEntry[]>("GET", `/audit?flow=${encodeURIComponent(flow)}&limit=500`)
      .then(setEntries)
      .catch((e: Error) => setMessage(e.message));
  }, [flow]);
  if (!entries) return <p>{message || "Loading…"}</p>;
  return (
    <div className="panel" data-testid="audit">
      <ol className="audit">
        {[...entries].reverse().map((a) => (
          <li key={a.id}>
            {new Date(a.time * 1000).toLocaleString()} <b>{a.actor}</b> {a.text}
          </li>
        ))}
      </ol>
    </div>
  );
}

/** The lines ``to`` changes of ``from``, as a unified listing of what was added and removed. */
export function DiffView({ from, to }: { from: string; to: string }) {
  const changes = useMemo(() => diffLines(from, to), [from, to]);
  return (
    <pre className="diff" data-testid="diff">
      {changes.map((c, i) =>
        c.added || c.removed ? (
          // biome-ignore lint/suspicious/noArrayIndexKey: the parts of one diff, in order
          <span key={i} className={c.added ? "added" : "removed"}>
            {c.value
              .replace(/\n$/, "")
              .split("\n")
              .map((l) => `${c.added ? "+" : "-"} ${l}\n`)}
          </span>
        ) : null,
      )}
      {changes.every((c) => !c.added && !c.removed) && "no changes"}
    </pre>
  );
}
