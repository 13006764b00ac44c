// The live view: GET /api/v1/stream (server-sent events, read with fetch so the bearer token
// goes along), the last 500 messages newest first, pause/resume/clear, and reconnects with a
// backoff. The stream needs the operator role (stream.rs); the page shows viewers why instead.

import { useEffect, useRef, useState } from "preact/hooks";
import { api, ApiError, withQuery } from "../../api/client";
import { Badge, Empty, ErrorBanner, Facts, Field } from "../../components";
import { bytes, when } from "../../lib/format";
import { errorMessage } from "../../lib/problem";
import { href } from "../../lib/router";
import { readSse } from "../../lib/sse";
import { appendBounded, decodeStreamMessage, EMPTY_BUFFER, reconnectDelay, retryAfterSeconds, type LiveBuffer, type LiveMessage } from "./buffer";
import { PayloadViewer, UserProperties } from "./viewer";

/** Messages kept on the page. */
export const CAPACITY = 500;
/** How often arrived messages are drawn (one render per batch, not per message). */
const FLUSH_MS = 200;
/** The server sends a keep-alive comment every 15 s; this long without anything is a dead stream. */
const STALL_MS = 45_000;

type Conn =
  | { kind: "idle" }
  | { kind: "connecting"; attempt: number }
  | { kind: "live"; filter: string }
  | { kind: "paused" }
  | { kind: "retrying"; error: string; seconds: number; attempt: number }
  | { kind: "failed"; error: string };

interface Watch {
  filter: string;
  sys: boolean;
}

/** Statuses that will not change by retrying: a bad filter, no permission, logged out. */
const FATAL = new Set([400, 401, 403, 404]);

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done);
  });
}

function clock(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleTimeString(undefined, { hour12: false, hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3 });
}

export function LiveTab(props: { urlFilter: string | null; urlSys: boolean }) {
  const [filter, setFilter] = useState(props.urlFilter ?? "#");
  const [sys, setSys] = useState(props.urlSys);
  const [conn, setConn] = useState<Conn>({ kind: "idle" });
  const [buf, setBuf] = useState<LiveBuffer>(EMPTY_BUFFER);
  const [open, setOpen] = useState<Set<number>>(new Set());
  const [reconnects, setReconnects] = useState(0);
  /** What is (or was last) being watched. */
  const active = useRef<Watch | null>(null);
  const run = useRef<AbortController | null>(null);
  const pending = useRef<LiveMessage[]>([]);
  const flushTimer = useRef<ReturnType<typeof setTimeout> | null>(null);
  const seq = useRef(0);

  /** Messages cut from `pending` before they were drawn (a burst bigger than the buffer). */
  const skipped = useRef(0);

  const flush = () => {
    flushTimer.current = null;
    const batch = pending.current;
    const cut = skipped.current;
    if (batch.length === 0 && cut === 0) return;
    pending.current = [];
    skipped.current = 0;
    setBuf((b) => appendBounded(b, batch, CAPACITY, cut));
  };

  const stop = () => {
    run.current?.abort();
    run.current = null;
  };

  const start = (w: Watch, resuming = false) => {
    stop();
    if (!resuming) setReconnects(0);
    active.current = w;
    const ctrl = new AbortController();
    run.current = ctrl;
    void loop(w, ctrl.signal);
  };

  /** Connects, reads, and reconnects after failures until `signal` fires. */
  const loop = async (w: Watch, signal: AbortSignal) => {
    let attempt = 0;
    let minDelay = 0;
    while (!signal.aborted) {
      setConn({ kind: "connecting", attempt });
      const connCtrl = new AbortController();
      const onAbort = () => connCtrl.abort();
      signal.addEventListener("abort", onAbort);
      let lastSeen = Date.now();
      let stalled = false;
      const watchdog = setInterval(() => {
        if (Date.now() - lastSeen > STALL_MS) {
          stalled = true;
          connCtrl.abort();
        }
      }, 5000);
      let error: string;
      let min = minDelay;
      try {
        const res = await api.stream(withQuery("/api/v1/stream", { filter: w.filter, sys: w.sys || undefined }), connCtrl.signal);
        if (!res.body) throw new Error("The browser gave no response body to read.");
        const events = readSse(res.body, {
          onComment: () => (lastSeen = Date.now()),
          onRetry: (ms) => (minDelay = ms),
        });
        for await (const ev of events) {
          lastSeen = Date.now();
          if (ev.event === "ready") {
            if (attempt > 0) setReconnects((n) => n + 1);
            attempt = 0;
            setConn({ kind: "live", filter: ev.data || w.filter });
          } else if (ev.event === "message") {
            const m = decodeStreamMessage(ev.data, ++seq.current);
            if (m) {
              pending.current.push(m);
              // Only the newest CAPACITY can be shown: a burst does not pile up between draws.
              if (pending.current.length >= 2 * CAPACITY) {
                pending.current.splice(0, CAPACITY);
                skipped.current += CAPACITY;
              }
              if (flushTimer.current === null) flushTimer.current = setTimeout(flush, FLUSH_MS);
            }
          }
        }
        error = "The server ended the stream.";
      } catch (e) {
        if (signal.aborted) return;
        if (stalled) {
          error = `Nothing received for ${STALL_MS / 1000} s (not even a keep-alive).`;
        } else if (e instanceof ApiError && FATAL.has(e.status)) {
          setConn({ kind: "failed", error: e.message });
          return;
        } else if (e instanceof ApiError && e.status === 429) {
          error = `The broker has as many live viewers open as it allows (limits.max_taps); it says “${e.message}”.`;
          min = Math.max(min, (retryAfterSeconds(e.detail) ?? 10) * 1000);
        } else {
          error = errorMessage(e);
        }
      } finally {
        clearInterval(watchdog);
        signal.removeEventListener("abort", onAbort);
      }
      if (signal.aborted) return;
      attempt++;
      const delay = reconnectDelay(attempt, min);
      setConn({ kind: "retrying", error, seconds: Math.round(delay / 1000), attempt });
      await sleep(delay, signal);
    }
  };

  // Stop on unmount (leaving the page).
  useEffect(
    () => () => {
      stop();
      if (flushTimer.current) clearTimeout(flushTimer.current);
    },
    [],
  );

  // A link with a filter (the tree's "Watch live", a reload) starts watching it.
  useEffect(() => {
    if (props.urlFilter === null) return;
    const a = active.current;
    if (a && a.filter === props.urlFilter && a.sys === props.urlSys && run.current) return;
    setFilter(props.urlFilter);
    setSys(props.urlSys);
    start({ filter: props.urlFilter, sys: props.urlSys });
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [props.urlFilter, props.urlSys]);

  const submit = (e: Event) => {
    e.preventDefault();
    const w = { filter: filter.trim() || "#", sys };
    setFilter(w.filter);
    start(w);
    // The URL says what is watched (a link to share, a reload to resume); replacing the entry
    // adds no Back step.
    location.replace(href(["topics"], w.sys ? { tab: "live", filter: w.filter, sys: "1" } : { tab: "live", filter: w.filter }));
  };
  const pause = () => {
    stop();
    setConn({ kind: "paused" });
  };
  const resume = () => active.current && start(active.current, true);
  const clear = () => {
    pending.current = [];
    skipped.current = 0;
    setBuf(EMPTY_BUFFER);
    setOpen(new Set());
    setReconnects(0);
  };
  const toggle = (s: number, isOpen: boolean) =>
    setOpen((o) => {
      if (o.has(s) === isOpen) return o;
      const n = new Set(o);
      if (isOpen) n.add(s);
      else n.delete(s);
      return n;
    });

  const running = conn.kind === "connecting" || conn.kind === "live" || conn.kind === "retrying";
  const a = active.current;
  const same = a !== null && a.filter === (filter.trim() || "#") && a.sys === sys;

  return (
    <div>
      <form class="toolbar live-controls" onSubmit={submit} aria-label="Live view controls">
        <Field id="live-filter" label="Topic filter" hint="+ matches one level, # the rest; $SYS/… for broker topics.">
          <input
            id="live-filter"
            class="mono"
            value={filter}
            onInput={(e) => setFilter(e.currentTarget.value)}
            spellcheck={false}
            autocomplete="off"
            aria-describedby="live-filter-hint"
          />
        </Field>
        <label class="check">
          <input type="checkbox" checked={sys} onChange={(e) => setSys(e.currentTarget.checked)} /> Include $SYS topics (with #)
        </label>
        <button type="submit" class="primary" disabled={running && same}>
          Start
        </button>
        {running ? (
          <button type="button" onClick={pause}>
            Pause
          </button>
        ) : conn.kind === "paused" ? (
          <button type="button" onClick={resume}>
            Resume
          </button>
        ) : null}
        <button type="button" onClick={clear} disabled={buf.received === 0 && buf.items.length === 0}>
          Clear
        </button>
      </form>

      <div class="live-status">
        <ConnBadge conn={conn} />
        <span role="status" aria-live="polite" class="small">
          {statusText(conn, a)}
        </span>
      </div>
      {conn.kind === "failed" && <ErrorBanner error={conn.error} />}

      <p class="muted small live-counts">
        {buf.received.toLocaleString()} message{buf.received === 1 ? "" : "s"} received, {buf.items.length} shown (the last {CAPACITY} are
        kept).
        {buf.bufferDropped > 0 && <> {buf.bufferDropped.toLocaleString()} dropped by the buffer (older than the last {CAPACITY}).</>}
        {buf.serverDropped > 0 && (
          <strong class="warn-text">
            {" "}
            {buf.serverDropped.toLocaleString()} dropped by the server: this view fell behind (admin.stream_buffer).
          </strong>
        )}
        {reconnects > 0 && <> Reconnected {reconnects} time{reconnects === 1 ? "" : "s"}: messages published while disconnected are missing.</>}
      </p>

      {buf.items.length === 0 ? (
        <Empty>
          {conn.kind === "idle"
            ? "Not started: enter a topic filter and press Start."
            : conn.kind === "live"
              ? `Waiting for messages on ${conn.filter}…`
              : "No messages."}
        </Empty>
      ) : (
        <ol class="live-list" aria-label="Messages, newest first">
          {buf.items.map((m) => (
            <MessageRow key={m.seq} m={m} open={open.has(m.seq)} onToggle={(o) => toggle(m.seq, o)} />
          ))}
        </ol>
      )}
    </div>
  );
}

function statusText(conn: Conn, w: Watch | null): string {
  const what = w ? `${w.filter}${w.sys ? " (with $SYS)" : ""}` : "";
  switch (conn.kind) {
    case "idle":
      return "Not started.";
    case "connecting":
      return conn.attempt > 0 ? `Reconnecting to ${what}…` : `Connecting to ${what}…`;
    case "live":
      return `Live: watching ${what}.`;
    case "paused":
      return `Paused (${what}). Messages published while paused are not shown.`;
    case "retrying":
      return `Not connected: ${conn.error} Retrying in ${conn.seconds} s.`;
    case "failed":
      return "Stopped: the stream was refused.";
  }
}

function ConnBadge(props: { conn: Conn }) {
  const k = props.conn.kind;
  if (k === "live") return <Badge kind="ok">live</Badge>;
  if (k === "connecting") return <Badge kind="warn">connecting</Badge>;
  if (k === "retrying") return <Badge kind="warn">reconnecting</Badge>;
  if (k === "paused") return <Badge kind="off">paused</Badge>;
  if (k === "failed") return <Badge kind="bad">error</Badge>;
  return <Badge kind="off">stopped</Badge>;
}

function MessageRow(props: { m: LiveMessage; open: boolean; onToggle: (open: boolean) => void }) {
  const m = props.m;
  return (
    <li>
      <details open={props.open} onToggle={(e) => props.onToggle((e.currentTarget as HTMLDetailsElement).open)}>
        <summary>
          <span class="live-chevron" aria-hidden="true">
            {props.open ? "▾" : "▸"}
          </span>
          <span class="live-time mono">{clock(m.time)}</span>
          <span class="live-topic mono">{m.topic}</span>
          <span class="live-meta">
            <span>QoS {m.qos}</span>
            {m.retain && <Badge kind="warn">retained</Badge>}
            <span>{bytes(m.size)}</span>
          </span>
          <span class="live-preview mono">{m.preview || <span class="muted">(empty)</span>}</span>
        </summary>
        {props.open && (
          <div class="live-detail">
            <Facts
              items={[
                ["Published", when(m.time)],
                ["Topic", <span class="mono">{m.topic}</span>],
                ["QoS", String(m.qos)],
                ["Retain", m.retain ? "yes" : "no"],
                ["Size", `${m.size.toLocaleString()} bytes`],
                ["Content type", m.contentType ?? <span class="muted">–</span>],
                ["User properties", <UserProperties items={m.userProperties} />],
              ]}
            />
            {m.dropped > 0 && <p class="small warn-text">The server dropped {m.dropped} message(s) just before this one.</p>}
            <PayloadViewer payload={m.payload} label={`Payload of the message on ${m.topic}`} />
          </div>
        )}
      </details>
    </li>
  );
}
