import { test } from "node:test";
import assert from "node:assert/strict";
import { parseSse, readSse, SseParser, type SseEvent } from "../src/lib/sse.js";

const enc = new TextEncoder();

/** Feeds `text` to a fresh parser in chunks cut at `cuts` (byte offsets). */
function chunked(text: string, cuts: number[]): SseEvent[] {
  const bytes = enc.encode(text);
  const p = new SseParser();
  const out: SseEvent[] = [];
  let prev = 0;
  for (const c of [...cuts, bytes.length]) {
    out.push(...p.push(bytes.subarray(prev, c)));
    prev = c;
  }
  return out;
}

test("the tern stream: a ready event then message events", () => {
  const text = 'event: ready\ndata: a/#\n\nevent: message\ndata: {"topic":"a/b"}\n\n';
  assert.deepEqual(parseSse(text), [
    { event: "ready", data: "a/#", id: "" },
    { event: "message", data: '{"topic":"a/b"}', id: "" },
  ]);
});

test("an event without a type is a message", () => {
  assert.deepEqual(parseSse("data: x\n\n"), [{ event: "message", data: "x", id: "" }]);
});

test("chunks split anywhere give the same events", () => {
  const text = "event: ready\r\ndata: héllo wörld ✓\r\n\r\n: keep-alive\r\n\r\nid: 7\ndata: one\ndata: two\n\n";
  const whole = parseSse(text);
  assert.equal(whole.length, 2);
  const n = enc.encode(text).length;
  for (let a = 0; a <= n; a++) {
    assert.deepEqual(chunked(text, [a]), whole, `cut at ${a}`);
  }
  // Every byte on its own (UTF-8 sequences and CRLF pairs split).
  assert.deepEqual(
    chunked(
      text,
      Array.from({ length: n - 1 }, (_, i) => i + 1),
    ),
    whole,
  );
});

test("CRLF, LF and CR all end lines", () => {
  const want = [{ event: "message", data: "a\nb", id: "" }];
  assert.deepEqual(parseSse("data: a\r\ndata: b\r\n\r\n"), want);
  assert.deepEqual(parseSse("data: a\ndata: b\n\n"), want);
  assert.deepEqual(parseSse("data: a\rdata: b\r\r"), want);
  assert.deepEqual(parseSse("data: a\rdata: b\n\r\n"), want);
});

test("a CR at the end of a chunk and its LF in the next make one line end", () => {
  const p = new SseParser();
  assert.deepEqual(p.push("data: a\r"), []);
  assert.deepEqual(p.push("\n"), []);
  assert.deepEqual(p.push("\r"), [{ event: "message", data: "a", id: "" }]);
  assert.deepEqual(p.push("\ndata: b\n\n"), [{ event: "message", data: "b", id: "" }]);
});

test("multi-line data joins with LF; one leading space is removed", () => {
  assert.deepEqual(parseSse("data:  two spaces\ndata:none\ndata\n\n"), [{ event: "message", data: " two spaces\nnone\n", id: "" }]);
});

test("comments are reported, not dispatched", () => {
  const comments: string[] = [];
  const events = parseSse(":\n: keep-alive\n\n:x\ndata: y\n\n", { onComment: (c) => comments.push(c) });
  assert.deepEqual(comments, ["", " keep-alive", "x"]);
  assert.deepEqual(events, [{ event: "message", data: "y", id: "" }]);
});

test("an event with no data is not dispatched and resets the type", () => {
  assert.deepEqual(parseSse("event: ready\n\ndata: x\n\n"), [{ event: "message", data: "x", id: "" }]);
  // An empty data line is data.
  assert.deepEqual(parseSse("data:\n\n"), [{ event: "message", data: "", id: "" }]);
});

test("ids persist until changed; ids with NUL are ignored", () => {
  const events = parseSse("id: 1\ndata: a\n\ndata: b\n\nid: 2\u0000\ndata: c\n\nid\ndata: d\n\n");
  assert.deepEqual(
    events.map((e) => e.id),
    ["1", "1", "1", ""],
  );
});

test("retry takes digits only; unknown fields are ignored", () => {
  const retries: number[] = [];
  const p = new SseParser({ onRetry: (ms) => retries.push(ms) });
  const events = p.push("retry: 1500\nretry: 2s\nfoo: bar\ndata: x\n\n");
  assert.deepEqual(retries, [1500]);
  assert.equal(p.retry, 1500);
  assert.deepEqual(events, [{ event: "message", data: "x", id: "" }]);
});

test("an unfinished event at the end is discarded", () => {
  const p = new SseParser();
  assert.deepEqual(p.push("data: a\n\ndata: b\n"), [{ event: "message", data: "a", id: "" }]);
  assert.deepEqual(p.end(), []);
  assert.deepEqual(p.push("data: c\n\n"), [{ event: "message", data: "c", id: "" }]);
});

test("a leading byte order mark is skipped", () => {
  const bytes = new Uint8Array([0xef, 0xbb, 0xbf, ...enc.encode("data: x\n\n")]);
  assert.deepEqual(new SseParser().push(bytes), [{ event: "message", data: "x", id: "" }]);
});

test("readSse yields events from a byte stream", async () => {
  const parts = ["event: ready\nda", "ta: #\n", "\n: ka\n\ndata: 1\n\n", "data: unfinished"];
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      for (const p of parts) c.enqueue(enc.encode(p));
      c.close();
    },
  });
  const got: SseEvent[] = [];
  let comments = 0;
  for await (const e of readSse(body, { onComment: () => comments++ })) got.push(e);
  assert.deepEqual(got, [
    { event: "ready", data: "#", id: "" },
    { event: "message", data: "1", id: "" },
  ]);
  assert.equal(comments, 1);
});

test("readSse stops reading when the consumer breaks off", async () => {
  let cancelled = false;
  const body = new ReadableStream<Uint8Array>({
    pull(c) {
      c.enqueue(enc.encode("data: tick\n\n"));
    },
    cancel() {
      cancelled = true;
    },
  });
  let n = 0;
  for await (const _ of readSse(body)) {
    if (++n === 3) break;
  }
  assert.equal(n, 3);
  assert.equal(cancelled, true);
});

test("readSse throws what the stream throws", async () => {
  let sent = 0;
  const body = new ReadableStream<Uint8Array>({
    // (Erroring in `start` would discard the queued chunk: the second pull fails instead.)
    pull(c) {
      if (sent++ === 0) c.enqueue(enc.encode("data: a\n\n"));
      else c.error(new Error("connection reset"));
    },
  });
  const got: string[] = [];
  await assert.rejects(async () => {
    for await (const e of readSse(body)) got.push(e.data);
  }, /connection reset/);
  assert.deepEqual(got, ["a"]);
});
