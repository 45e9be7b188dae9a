// The newest metrics view of a flow, pushed by the server every interval (docs/metrics.md).
import { useEffect, useState } from "react";
import { metricsSocket } from "./api";

export type Percentiles = { count: number; p50: number; p90: number; p99: number } | null;
export type ProcessorView = {
  status: string;
  instances: number;
  hosts: string[];
  waiting: number | null;
  totals: Record<string, number>;
  rates: Record<string, number>;
  busy: number;
  process_ms?: Percentiles;
  latency_ms?: Percentiles;
};
export type ConnectionView = {
  depth: number | null;
  bytes: number | null;
  max_messages: number;
  max_bytes: number;
  back_pressure: boolean;
  rate: number;
};
export type View = {
  flow: string;
  at: number;
  interval: number;
  processors: Record<string, ProcessorView>;
  connections: Record<string, ConnectionView>;
};
export type Live = { view: View | null; state: "connecting" | "live" | "closed"; reason: string };

/** How full a queue is: ok below half, filling to full, full at back pressure. */
export function fill(c: ConnectionView | undefined): "ok" | "filling" | "full" | "unknown" {
  if (!c || c.depth === null) return "unknown";
  if (c.back_pressure) return "full";
  const share = Math.max(c.depth / c.max_messages, (c.bytes ?? 0) / c.max_bytes);
  return share >= 0.5 ? "filling" : "ok";
}

/** The live view of one flow; reconnects when the socket drops. */
export function useLive(flow: string): Live {
  const [live, setLive] = useState<Live>({ view: null, state: "connecting", reason: "" });
  useEffect(() => {
    let ws: WebSocket | null = null;
    let stopped = false;
    let retry: ReturnType<typeof setTimeout> | undefined;
    const open = () => {
      ws = metricsSocket(flow);
      ws.onmessage = (e) => {
        const msg = JSON.parse(e.data as string);
        if (msg.type === "metrics" && msg.flow === flow) {
          setLive({ view: msg as View, state: "live", reason: "" });
        }
      };
      ws.onclose = (e) => {
        if (stopped) return;
        setLive((l) => ({ ...l, state: "closed", reason: e.reason || "the server went away" }));
        if (e.code < 4000) retry = setTimeout(open, 2000); // 4xxx: refused, do not retry
      };
    };
    open();
    return () => {
      stopped = true;
      clearTimeout(retry);
      ws?.close();
    };
  }, [flow]);
  return live;
}

export function rate(x: number | undefined): string {
  if (x === undefined) return "–";
  if (x >= 10_000) return `${(x / 1000).toFixed(0)}k/s`;
  if (x >= 1000) return `${(x / 1000).toFixed(1)}k/s`;
  return `${x >= 100 ? x.toFixed(0) : x.toFixed(1).replace(/\.0$/, "")}/s`;
}

export function count(x: number | null | undefined): string {
  if (x === null || x === undefined) return "–";
  return x.toLocaleString("en");
}
