// An incremental parser of server-sent events (the `text/event-stream` format of the WHATWG
// HTML standard, "9.2.6 Event stream interpretation"), for `GET /api/v1/stream`. EventSource
// cannot send the bearer token, so the live view reads the stream with fetch and parses it here.
//
// Chunks may split anywhere: inside a line, between a CR and its LF, inside a UTF-8 sequence.
// Lines end with CRLF, LF or CR; `data` lines of one event join with LF; lines starting with
// `:` are comments (the server's keep-alives); `id` persists across events until changed; an
// event is dispatched on a blank line, and one with no data is not dispatched at all.

/** One dispatched event. */
export interface SseEvent {
  /** The `event` field, `message` when absent. */
  event: string;
  /** The `data` lines joined with LF. */
  data: string;
  /** The last event id at dispatch (`""`: none). */
  id: string;
}

export interface SseHandlers {
  /** A comment line (without its leading `:`), such as a keep-alive. */
  onComment?: (text: string) => void;
  /** A valid `retry` field: the reconnection time the server asks for, ms. */
  onRetry?: (ms: number) => void;
}

export class SseParser {
  private readonly decoder = new TextDecoder("utf-8");
  /** Text of the current, unfinished line. */
  private line = "";
  /** The previous chunk ended with CR: an LF starting the next one belongs to it. */
  private skipLf = false;
  private data: string[] = [];
  private hasData = false;
  private eventType = "";
  private lastId = "";
  /** Last reconnection time the server asked for, ms (null: none). */
  retry: number | null = null;

  constructor(private readonly handlers: SseHandlers = {}) {}

  /** The last event id seen (what a reconnect would send as `Last-Event-ID`). */
  get lastEventId(): string {
    return this.lastId;
  }

  /** Feeds bytes (or already decoded text); returns the events completed by them. */
  push(chunk: Uint8Array | string): SseEvent[] {
    const text = typeof chunk === "string" ? chunk : this.decoder.decode(chunk, { stream: true });
    const out: SseEvent[] = [];
    let start = 0;
    let i = 0;
    if (this.skipLf && text.length > 0) {
      this.skipLf = false;
      if (text.charCodeAt(0) === 10) start = i = 1;
    }
    for (; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      const line = this.line + text.slice(start, i);
      this.line = "";
      if (c === 13) {
        if (i + 1 < text.length) {
          if (text.charCodeAt(i + 1) === 10) i++;
        } else {
          this.skipLf = true;
        }
      }
      start = i + 1;
      const ev = this.processLine(line);
      if (ev) out.push(ev);
    }
    this.line += text.slice(start);
    return out;
  }

  /**
   * The stream ended: an unfinished event is discarded (the standard says so), and the parser is
   * ready for a new stream (the last event id stays, as it would for a reconnect).
   */
  end(): SseEvent[] {
    this.decoder.decode();
    this.line = "";
    this.skipLf = false;
    this.data = [];
    this.hasData = false;
    this.eventType = "";
    return [];
  }

  private processLine(line: string): SseEvent | null {
    if (line === "") return this.dispatch();
    if (line.charCodeAt(0) === 58 /* : */) {
      this.handlers.onComment?.(line.slice(1));
      return null;
    }
    const colon = line.indexOf(":");
    let field: string;
    let value: string;
    if (colon < 0) {
      field = line;
      value = "";
    } else {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 32 /* space */) value = value.slice(1);
    }
    switch (field) {
      case "event":
        this.eventType = value;
        break;
      case "data":
        this.data.push(value);
        this.hasData = true;
        break;
      case "id":
        if (!value.includes("\0")) this.lastId = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) {
          this.retry = Number(value);
          this.handlers.onRetry?.(this.retry);
        }
        break;
      default:
        // Unknown fields are ignored.
        break;
    }
    return null;
  }

  private dispatch(): SseEvent | null {
    const ev: SseEvent | null = this.hasData ? { event: this.eventType || "message", data: this.data.join("\n"), id: this.lastId } : null;
    this.data = [];
    this.hasData = false;
    this.eventType = "";
    return ev;
  }
}

/** Parses a whole text at once (for tests and small bodies). */
export function parseSse(text: string, handlers?: SseHandlers): SseEvent[] {
  const p = new SseParser(handlers);
  const events = p.push(text);
  p.end();
  return events;
}

/**
 * The events of a byte stream (a fetch response body), as they complete. Ends when the stream
 * does; throws what reading throws (an `AbortError` when the request's signal fires).
 */
export async function* readSse(body: ReadableStream<Uint8Array>, handlers?: SseHandlers): AsyncGenerator<SseEvent> {
  const parser = new SseParser(handlers);
  const reader = body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (value) yield* parser.push(value);
    }
    parser.end();
  } finally {
    // Cancelling releases the connection when the consumer stops early (break or throw).
    reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}
