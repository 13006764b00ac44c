// The live view's logic without the page: decoding stream events, the bounded buffer, and the
// reconnect delays. Pure, so the unit tests run it in node.

import { payloadBytes, preview } from "../../lib/payload.js";

/** A user property of a streamed message. */
export interface StreamUserProperty {
  name: string;
  value: string;
}

/**
 * The data of one `message` event of GET /api/v1/stream (crates/tern-admin/src/stream.rs,
 * `StreamMessage`; the OpenAPI document does not describe event payloads).
 */
export interface StreamMessage {
  topic: string;
  payload?: string | null;
  payload_base64?: string | null;
  payload_bytes: number;
  qos: number;
  retain: boolean;
  content_type?: string | null;
  user_properties?: StreamUserProperty[];
  time: string;
  /** Messages this viewer missed just before this one (the server dropped them). */
  dropped?: number;
}

/** A message as the live view keeps it. */
export interface LiveMessage {
  /** Arrival order in this page (keys, expansion). */
  seq: number;
  topic: string;
  payload: Uint8Array;
  size: number;
  qos: number;
  retain: boolean;
  contentType: string | null;
  userProperties: StreamUserProperty[];
  /** RFC 3339 publish time from the server. */
  time: string;
  /** Messages the server dropped just before this one. */
  dropped: number;
  /** One-line preview, computed once. */
  preview: string;
}

/** The message of a `message` event's data, or null when it is not one. */
export function decodeStreamMessage(data: string, seq: number): LiveMessage | null {
  let m: StreamMessage;
  try {
    m = JSON.parse(data) as StreamMessage;
  } catch {
    return null;
  }
  if (!m || typeof m !== "object" || typeof m.topic !== "string") return null;
  let payload: Uint8Array;
  try {
    payload = payloadBytes(m.payload, m.payload_base64);
  } catch {
    payload = new Uint8Array(0);
  }
  return {
    seq,
    topic: m.topic,
    payload,
    size: typeof m.payload_bytes === "number" ? m.payload_bytes : payload.length,
    qos: typeof m.qos === "number" ? m.qos : 0,
    retain: m.retain === true,
    contentType: m.content_type ?? null,
    userProperties: Array.isArray(m.user_properties) ? m.user_properties : [],
    time: typeof m.time === "string" ? m.time : new Date().toISOString(),
    dropped: typeof m.dropped === "number" && m.dropped > 0 ? m.dropped : 0,
    preview: preview(payload, 120),
  };
}

/** What the live view shows: the newest messages first, and what it lost. */
export interface LiveBuffer {
  /** Newest first, at most `capacity`. */
  items: LiveMessage[];
  /** Messages received since the last clear. */
  received: number;
  /** Older messages this page dropped to stay within its capacity. */
  bufferDropped: number;
  /** Messages the server dropped because this viewer fell behind (its `dropped` counts). */
  serverDropped: number;
}

export const EMPTY_BUFFER: LiveBuffer = { items: [], received: 0, bufferDropped: 0, serverDropped: 0 };

/**
 * `buf` with `incoming` (oldest first, as they arrived) added, cut to the newest `capacity`.
 * `skipped` messages arrived before `incoming` but were never kept (the page cut its queue of
 * undrawn messages): they count as received and dropped by the buffer.
 */
export function appendBounded(buf: LiveBuffer, incoming: LiveMessage[], capacity: number, skipped = 0): LiveBuffer {
  if (incoming.length === 0 && skipped === 0) return buf;
  const newestFirst = incoming.slice().reverse();
  const all = newestFirst.length >= capacity ? newestFirst : newestFirst.concat(buf.items);
  const items = all.slice(0, capacity);
  const cut = buf.items.length + incoming.length - items.length;
  let serverDropped = buf.serverDropped;
  for (const m of incoming) serverDropped += m.dropped;
  return {
    items,
    received: buf.received + skipped + incoming.length,
    bufferDropped: buf.bufferDropped + skipped + cut,
    serverDropped,
  };
}

/**
 * How long to wait before reconnect `attempt` (1, 2, ...): 1 s doubling to 30 s, at least
 * `minMs` (the server's `retry` field, or 10 s after a 429), with ±20% jitter so viewers
 * do not come back in step.
 */
export function reconnectDelay(attempt: number, minMs = 0, random: () => number = Math.random): number {
  const base = Math.min(30_000, 1000 * 2 ** Math.max(0, attempt - 1));
  const jittered = base * (0.8 + 0.4 * random());
  return Math.round(Math.max(minMs, jittered));
}

/** Seconds a 429's detail asks to wait (`retry after 10 s`), or null. */
export function retryAfterSeconds(detail: string): number | null {
  const m = /retry after (\d+) ?s/i.exec(detail);
  return m ? Number(m[1]) : null;
}
