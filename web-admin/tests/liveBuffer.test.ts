import { test } from "node:test";
import assert from "node:assert/strict";
import { appendBounded, decodeStreamMessage, EMPTY_BUFFER, reconnectDelay, retryAfterSeconds, type LiveMessage } from "../src/pages/topics/buffer.js";

const msg = (seq: number, dropped = 0): LiveMessage => ({
  seq,
  topic: `t/${seq}`,
  payload: new Uint8Array(0),
  size: 0,
  qos: 0,
  retain: false,
  contentType: null,
  userProperties: [],
  time: "2024-05-01T00:00:00Z",
  dropped,
  preview: "",
});
const seqs = (ms: LiveMessage[]) => ms.map((m) => m.seq);

test("decodes the stream's message events", () => {
  const m = decodeStreamMessage(
    JSON.stringify({
      topic: "home/t",
      payload: '{"v":1}',
      payload_base64: null,
      payload_bytes: 7,
      qos: 1,
      retain: true,
      content_type: "application/json",
      user_properties: [{ name: "k", value: "v" }],
      time: "2024-05-01T10:00:00.123Z",
      dropped: 3,
    }),
    5,
  )!;
  assert.equal(m.seq, 5);
  assert.equal(m.topic, "home/t");
  assert.deepEqual(m.payload, new TextEncoder().encode('{"v":1}'));
  assert.equal(m.size, 7);
  assert.equal(m.qos, 1);
  assert.equal(m.retain, true);
  assert.equal(m.contentType, "application/json");
  assert.deepEqual(m.userProperties, [{ name: "k", value: "v" }]);
  assert.equal(m.dropped, 3);
  assert.equal(m.preview, '{"v":1}');

  const bin = decodeStreamMessage(JSON.stringify({ topic: "b", payload: null, payload_base64: "3q2+7w==", payload_bytes: 4, qos: 0, retain: false, user_properties: [], time: "x", dropped: 0 }), 1)!;
  assert.deepEqual(bin.payload, new Uint8Array([0xde, 0xad, 0xbe, 0xef]));
  assert.equal(bin.preview, "0x de ad be ef");
  assert.equal(bin.contentType, null);

  assert.equal(decodeStreamMessage("not json", 1), null);
  assert.equal(decodeStreamMessage('{"no":"topic"}', 1), null);
  assert.equal(decodeStreamMessage("null", 1), null);
});

test("the buffer keeps the newest, newest first, and counts what it dropped", () => {
  let b = appendBounded(EMPTY_BUFFER, [msg(1), msg(2), msg(3)], 5);
  assert.deepEqual(seqs(b.items), [3, 2, 1]);
  assert.equal(b.bufferDropped, 0);
  b = appendBounded(b, [msg(4), msg(5), msg(6), msg(7)], 5);
  assert.deepEqual(seqs(b.items), [7, 6, 5, 4, 3]);
  assert.equal(b.received, 7);
  assert.equal(b.bufferDropped, 2);
  // A batch bigger than the buffer.
  b = appendBounded(b, [8, 9, 10, 11, 12, 13, 14].map((s) => msg(s)), 5);
  assert.deepEqual(seqs(b.items), [14, 13, 12, 11, 10]);
  assert.equal(b.received, 14);
  assert.equal(b.bufferDropped, 9);
  assert.equal(b.received - b.bufferDropped, b.items.length);
  assert.equal(appendBounded(b, [], 5), b);
});

test("the server's dropped counts add up", () => {
  const b = appendBounded(appendBounded(EMPTY_BUFFER, [msg(1, 4)], 5), [msg(2), msg(3, 1)], 5);
  assert.equal(b.serverDropped, 5);
});

test("reconnect delays back off to 30 s, with jitter and a floor", () => {
  const mid = () => 0.5;
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6, 7, 20].map((a) => reconnectDelay(a, 0, mid)),
    [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000],
  );
  assert.equal(reconnectDelay(1, 0, () => 0), 800);
  assert.equal(reconnectDelay(1, 0, () => 1), 1200);
  assert.equal(reconnectDelay(1, 10_000, mid), 10_000);
});

test("retry-after from a 429's detail", () => {
  assert.equal(retryAfterSeconds("retry after 10 s"), 10);
  assert.equal(retryAfterSeconds("Retry after 3s"), 3);
  assert.equal(retryAfterSeconds("too many"), null);
});

test("messages skipped before drawing count as received and dropped", () => {
  const b = appendBounded(EMPTY_BUFFER, [msg(1001), msg(1002)], 5, 1000);
  assert.equal(b.received, 1002);
  assert.equal(b.bufferDropped, 1000);
  assert.deepEqual(seqs(b.items), [1002, 1001]);
  const only = appendBounded(EMPTY_BUFFER, [], 5, 7);
  assert.equal(only.bufferDropped, 7);
});
