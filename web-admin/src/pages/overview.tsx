// Overview: the broker's health at a glance, polled every 2 s, with the last 5 minutes of
// rates as sparklines (kept in the page; nothing is stored server-side for this).

import { useEffect, useRef, useState } from "preact/hooks";
import { api, type Metrics, type Readiness } from "../api/client";
import { ErrorBanner, Loading, Page, Stat } from "../components";
import { bytes, compact, duration, rate } from "../lib/format";
import { errorMessage } from "../lib/problem";

const POLL_MS = 2000;
/** 5 minutes of 2-second points. */
const POINTS = 150;

interface Point {
  at: number;
  m: Metrics;
}

/** Per-second rates between consecutive readings. */
export interface Rates {
  msgIn: number;
  msgOut: number;
  deliveries: number;
  drops: number;
  authFailures: number;
  refused: number;
  /** Mean commit latency over the interval, ms (null: no commit in it, or no store). */
  commitMs: number | null;
}

const dropsOf = (m: Metrics) =>
  m.dropped_queue_full + m.dropped_expired + m.dropped_too_large + m.publishes_refused_queue_full + m.publishes_denied + m.deliveries_denied;

function ratesBetween(a: Point, b: Point): Rates {
  const s = (b.at - a.at) / 1000;
  const commits = (b.m.store_commits ?? 0) - (a.m.store_commits ?? 0);
  const micros = (b.m.store_commit_micros ?? 0) - (a.m.store_commit_micros ?? 0);
  return {
    msgIn: rate(a.m.messages_received, b.m.messages_received, s),
    msgOut: rate(a.m.messages_sent, b.m.messages_sent, s),
    deliveries: rate(a.m.deliveries, b.m.deliveries, s),
    drops: rate(dropsOf(a.m), dropsOf(b.m), s),
    authFailures: rate(a.m.auth_failures ?? 0, b.m.auth_failures ?? 0, s),
    refused: rate(a.m.connections_refused, b.m.connections_refused, s),
    commitMs: commits > 0 && micros >= 0 ? micros / commits / 1000 : null,
  };
}

export function Overview() {
  const [points, setPoints] = useState<Point[]>([]);
  const [ready, setReady] = useState<Readiness | null>(null);
  const [error, setError] = useState<string | null>(null);
  const timer = useRef<ReturnType<typeof setTimeout>>();
  useEffect(() => {
    let alive = true;
    const poll = async () => {
      try {
        const [m, r] = await Promise.all([api.get<Metrics>("/api/v1/metrics"), readiness()]);
        if (!alive) return;
        setPoints((p) => [...p.slice(-(POINTS - 1)), { at: Date.now(), m }]);
        setReady(r);
        setError(null);
      } catch (e) {
        if (alive) setError(errorMessage(e));
      }
      if (alive) timer.current = setTimeout(poll, POLL_MS);
    };
    void poll();
    return () => {
      alive = false;
      clearTimeout(timer.current);
    };
  }, []);

  const last = points[points.length - 1];
  const series: Rates[] = points.slice(1).map((p, i) => ratesBetween(points[i]!, p));
  const now = series[series.length - 1];
  const pick = (f: (r: Rates) => number) => series.map(f);
  const m = last?.m;
  const db = m?.store_available;
  const commitSeries = series.map((r) => r.commitMs ?? 0);
  const lastCommit = [...series].reverse().find((r) => r.commitMs !== null)?.commitMs ?? null;

  return (
    <Page title="Overview">
      <ErrorBanner error={error} />
      {!m ? (
        !error && <Loading />
      ) : (
        <>
          <div class="grid" aria-live="off">
            <Stat label="Connected clients" value={compact(m.clients_connected)} series={points.map((p) => p.m.clients_connected)} />
            <Stat label="Messages in /s" value={now ? compact(now.msgIn) : "…"} series={pick((r) => r.msgIn)} />
            <Stat label="Messages out /s" value={now ? compact(now.msgOut) : "…"} series={pick((r) => r.msgOut)} />
            <Stat label="Deliveries /s" value={now ? compact(now.deliveries) : "…"} series={pick((r) => r.deliveries)} />
            <Stat
              label="Drops /s"
              value={now ? compact(now.drops) : "…"}
              series={pick((r) => r.drops)}
              tone={now && now.drops > 0 ? "warn" : undefined}
              hint={`${compact(dropsOf(m))} since start`}
            />
            <Stat
              label="Auth failures /s"
              value={m.auth_failures === null || m.auth_failures === undefined ? "n/a" : now ? compact(now.authFailures) : "…"}
              series={pick((r) => r.authFailures)}
              tone={now && now.authFailures > 0 ? "bad" : undefined}
              hint={`${compact(m.connections_refused)} connections refused since start`}
            />
            <Stat
              label="Database"
              value={db === null || db === undefined ? "none" : db ? "up" : "DOWN"}
              tone={db === false ? "bad" : db ? "ok" : undefined}
              hint={`${compact(m.persist_pending_ops)} pending, ${compact(m.persist_deferred_ops)} deferred ops`}
            />
            <Stat
              label="Commit latency (mean)"
              value={lastCommit === null ? "–" : `${lastCommit.toFixed(lastCommit < 10 ? 2 : 0)} ms`}
              series={m.store_commits === null || m.store_commits === undefined ? undefined : commitSeries}
            />
          </div>
          <h2>Broker</h2>
          <div class="grid">
            <Stat label="Sessions" value={compact(m.sessions)} hint={`${compact(Math.max(0, m.sessions - m.clients_connected))} offline`} />
            <Stat label="Subscriptions" value={compact(m.subscriptions)} />
            <Stat label="Retained messages" value={compact(m.retained_messages)} hint={bytes(m.retained_bytes)} />
            <Stat label="Traffic in / out" value={`${bytes(m.bytes_received)} / ${bytes(m.bytes_sent)}`} />
            <Stat label="Uptime" value={duration(m.uptime_secs)} />
            <Stat
              label="Readiness"
              value={ready ? (ready.status === "ready" ? "ready" : "not ready") : "…"}
              tone={ready ? (ready.status === "ready" ? "ok" : "bad") : undefined}
              hint={ready ? `listeners ${ready.listeners ? "up" : "down"}, directory ${ready.directory ? "ok" : "unavailable"}` : undefined}
            />
          </div>
          <p class="muted small">
            Rates are computed in this page from the admin API's counters every {POLL_MS / 1000} s; the sparklines show up to the last{" "}
            {(POINTS * POLL_MS) / 60000} minutes. Long-term history: Prometheus at <code>/metrics</code> and the Grafana dashboard.
          </p>
        </>
      )}
    </Page>
  );
}

/** `/readyz` answers 503 with the same body when not ready: both are readings, not errors. */
async function readiness(): Promise<Readiness | null> {
  try {
    const res = await fetch("/readyz", { headers: { Accept: "application/json" } });
    return (await res.json()) as Readiness;
  } catch {
    return null;
  }
}
