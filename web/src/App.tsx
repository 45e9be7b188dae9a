import { type FormEvent, useCallback, useEffect, useState } from "react";
import {
  type Agent,
  type ApiError,
  call,
  type FlowInfo,
  login,
  logout,
  type Me,
  may,
  token,
} from "./api";
import { Designer } from "./Designer";
import { FlowPage } from "./FlowPage";

function useHash(): string {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const on = () => setHash(location.hash);
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return hash;
}

export function App() {
  const [me, setMe] = useState<Me | null>(null);
  const [checked, setChecked] = useState(false);
  const hash = useHash();
  useEffect(() => {
    if (!token()) {
      setChecked(true);
      return;
    }
    call<Me>("GET", "/auth/whoami")
      .then(setMe)
      .catch(() => setMe(null))
      .finally(() => setChecked(true));
  }, []);
  if (!checked) return null;
  if (!me) return <Login onIn={setMe} />;
  const flow = hash.startsWith("#/flows/") ? decodeURIComponent(hash.slice(8)) : null;
  const design = hash.startsWith("#/design/") ? decodeURIComponent(hash.slice(9)) : null;
  let page = <FlowList me={me} />;
  if (flow) page = <FlowPage me={me} name={flow} key={flow} />;
  if (design !== null) page = <Designer me={me} name={design || null} key={`d-${design}`} />;
  return (
    <div className="shell">
      <header>
        <a className="brand" href="#/">
          ElasticCode
        </a>
        {(flow || design) && <span className="crumb">/ {flow || design || "new flow"}</span>}
        <span className="grow" />
        {may(me, "agent.read") && <Agents />}
        <span data-testid="user">{me.user}</span>
        <button
          type="button"
          onClick={() => logout().finally(() => setMe(null))}
          className="logout"
          data-testid="logout"
        >
          Log out
        </button>
      </header>
      <main>{page}</main>
    </div>
  );
}

function Login({ onIn }: { onIn: (me: Me) => void }) {
  const [user, setUser] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState("");
  const submit = (e: FormEvent) => {
    e.preventDefault();
    setError("");
    login(user, password)
      .then(onIn)
      .catch((err: unknown) => setError(err instanceof Error ? err.message : String(err)));
  };
  return (
    <form className="login" onSubmit={submit}>
      <h1>ElasticCode</h1>
      <label>
        User
        <input
          name="user"
          autoComplete="username"
          value={user}
          onChange={(e) => setUser(e.target.value)}
        />
      </label>
      <label>
        Password
        <input
          name="password"
          type="password"
          autoComplete="current-password"
          value={password}
          onChange={(e) => setPassword(e.target.value)}
        />
      </label>
      <button type="submit">Log in</button>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
    </form>
  );
}

/** Agents and their health, refreshed every few seconds. */
function Agents() {
  const [agents, setAgents] = useState<Agent[]>([]);
  const load = useCallback(() => {
    call<Agent[]>("GET", "/agents")
      .then(setAgents)
      .catch(() => setAgents([]));
  }, []);
  useEffect(() => {
    load();
    const t = setInterval(load, 5000);
    return () => clearInterval(t);
  }, [load]);
  return (
    <span className="agents" data-testid="agents">
      {agents.map((a) => (
        <span key={a.name} className={`agent ${a.status}`} title={`${a.host}: ${a.status}`}>
          {a.name}
        </span>
      ))}
    </span>
  );
}

/** Whether any of the user's grants lets them deploy some flow. */
function deploysSome(me: Me): boolean {
  return me.grants.some((g) => (me.roles[g.role] ?? []).includes("flow.deploy"));
}

function FlowList({ me }: { me: Me }) {
  const [flows, setFlows] = useState<FlowInfo[] | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    call<FlowInfo[]>("GET", "/flows")
      .then(setFlows)
      .catch((e: ApiError) => setError(e.message));
  }, []);
  if (error) return <p className="error">{error}</p>;
  if (!flows) return <p>Loading…</p>;
  const add = deploysSome(me) && (
    <p className="actions">
      <a className="button" href="#/design/" data-testid="new-flow">
        New flow
      </a>
    </p>
  );
  if (!flows.length) {
    return (
      <div className="panel">
        {add}
        <p className="empty">
          No flows yet: draw one, or deploy a file with{" "}
          <code>elasticcode apply FLOW.yaml --server URL</code>.
        </p>
      </div>
    );
  }
  return (
    <div className="panel">
      {add}
      <table className="flows">
        <thead>
          <tr>
            <th>Flow</th>
            <th>Revision</th>
            <th>Processors</th>
            <th>State</th>
            <th>Updated</th>
          </tr>
        </thead>
        <tbody>
          {flows.map((f) => (
            <tr key={f.name}>
              <td>
                <a href={`#/flows/${encodeURIComponent(f.name)}`}>{f.name}</a>
              </td>
              <td>{f.revision}</td>
              <td>{f.processors}</td>
              <td>{f.running ? "running" : "stopped"}</td>
              <td>{new Date(f.updated * 1000).toLocaleString()}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
