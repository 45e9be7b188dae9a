// The server's API, as the CLI calls it: every action here is one of its routes.
const API = "/api/v1";
const KEY = "elasticcode.token";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export type Grant = { role: string; flows: string };
export type Me = {
  user: string;
  token: string;
  grants: Grant[];
  roles: Record<string, string[]>;
  scopes: string[] | null;
};
export type FlowInfo = {
  name: string;
  revision: number;
  running: boolean;
  updated: number;
  processors: number;
};
export type ProcessorInfo = {
  name: string;
  instances: number | "auto";
  scaled: number | null;
  pinned: number | null;
  paused: boolean;
  placed: { agent: string | null; host: string | null; instance: number; state: string }[];
};
export type Revision = { revision: number; created: number; note: string };
export type DeadLetter = {
  id: string | number;
  queue: string;
  processor: string | null;
  deliveries: number;
  failed_at: number | null;
  error: string;
  size: number;
  message_id: string | null;
  payload: string;
};
export type Agent = {
  name: string;
  host: string;
  status: string;
  cores: number;
  capacity: number;
  heartbeat: number;
};

export function token(): string | null {
  return sessionStorage.getItem(KEY);
}

export async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(API + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) {
    const detail = data?.detail;
    const why = typeof detail === "string" ? detail : JSON.stringify(detail ?? res.statusText);
    if (res.status === 401 && path !== "/auth/login") sessionStorage.removeItem(KEY);
    throw new ApiError(res.status, why);
  }
  return data as T;
}

export async function login(user: string, password: string): Promise<Me> {
  const r = await call<{ token: string }>("POST", "/auth/login", {
    user,
    password,
    name: "web",
  });
  sessionStorage.setItem(KEY, r.token);
  return call<Me>("GET", "/auth/whoami");
}

export async function logout(): Promise<void> {
  try {
    await call("POST", "/auth/logout");
  } finally {
    sessionStorage.removeItem(KEY);
  }
}

function glob(pattern: string, name: string): boolean {
  const re = pattern
    .replace(/[.+^${}()|\\]/g, "\\$&")
    .replace(/\*/g, ".*")
    .replace(/\?/g, ".");
  return new RegExp(`^${re}$`).test(name);
}

const FLOW_PRIVILEGES = new Set([
  "flow.read",
  "flow.operate",
  "flow.deploy",
  "code.deploy",
  "flow.remove",
]);

/** Whether the user may do ``privilege`` (on ``flow``): what is offered; the server decides. */
export function may(me: Me, privilege: string, flow?: string): boolean {
  if (me.scopes !== null && !me.scopes.includes(privilege)) return false;
  return me.grants.some(
    (g) =>
      (me.roles[g.role] ?? []).includes(privilege) &&
      (g.flows === "*" ||
        (FLOW_PRIVILEGES.has(privilege) && flow !== undefined && glob(g.flows, flow))),
  );
}

/** The websocket of metrics views for a flow; the token goes as a subprotocol (a browser
 * cannot set a websocket's headers, and a URL is what proxies log). */
export function metricsSocket(flow: string): WebSocket {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const q = new URLSearchParams({ flow });
  return new WebSocket(`${scheme}://${location.host}${API}/metrics/stream?${q}`, [
    "elasticcode",
    `bearer.${token() ?? ""}`,
  ]);
}
