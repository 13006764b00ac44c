import { test } from "node:test";
import assert from "node:assert/strict";
import { formatLimit, LIMIT_FIELDS, limitEntries, limitHint, limitLabel, limitProblem, limitsToForm, parseLimitsForm, U32_MAX, type LimitKey } from "../src/lib/limits.js";

const field = (key: LimitKey) => {
  const f = LIMIT_FIELDS.find((x) => x.key === key);
  assert.ok(f, key);
  return f;
};

test("every limit of the API is listed once, in the API's order", () => {
  assert.deepEqual(
    LIMIT_FIELDS.map((f) => f.key),
    [
      "publish_rate",
      "publish_burst",
      "publish_bytes_rate",
      "publish_bytes_burst",
      "outbound_bytes_rate",
      "outbound_bytes_burst",
      "max_subscriptions",
      "max_queued_messages",
      "max_queued_bytes",
      "max_retained",
    ],
  );
});

test("set values read with their units", () => {
  assert.equal(formatLimit(field("publish_rate"), 10), "10 msg/s");
  assert.equal(formatLimit(field("publish_burst"), 20), "20 messages");
  assert.equal(formatLimit(field("publish_bytes_rate"), 512), "512 B/s");
  assert.equal(formatLimit(field("outbound_bytes_rate"), 65536), "65536 B/s (64 KiB/s)");
  assert.equal(formatLimit(field("max_queued_bytes"), 1024), "1024 bytes (1.0 KiB)");
  assert.equal(formatLimit(field("max_queued_messages"), 1), "1 message");
  assert.equal(formatLimit(field("max_subscriptions"), 1), "1 subscription");
  assert.equal(formatLimit(field("publish_bytes_burst"), 1), "1 byte");
  assert.equal(formatLimit(field("publish_rate"), 1), "1 msg/s");
  assert.equal(formatLimit(field("max_subscriptions"), 3), "3 subscriptions");
  assert.equal(formatLimit(field("max_retained"), 5), "5 messages");
});

test("0 says what it means", () => {
  assert.equal(formatLimit(field("publish_rate"), 0), "0 msg/s (unlimited)");
  assert.equal(formatLimit(field("outbound_bytes_burst"), 0), "0 bytes (one second's worth)");
  assert.equal(formatLimit(field("max_subscriptions"), 0), "0 subscriptions (publish only)");
  assert.equal(formatLimit(field("max_retained"), 0), "0 messages (may not retain)");
});

test("entries: only the set limits, in display order", () => {
  assert.deepEqual(limitEntries(undefined), []);
  assert.deepEqual(limitEntries({}), []);
  assert.deepEqual(limitEntries({ max_retained: 5, publish_rate: 10, publish_burst: null }), [
    { key: "publish_rate", label: "Publish rate", text: "10 msg/s" },
    { key: "max_retained", label: "Max retained messages", text: "5 messages" },
  ]);
});

test("the form starts from the set limits", () => {
  const form = limitsToForm({ publish_rate: 10, max_subscriptions: 0, max_retained: null });
  assert.equal(form.publish_rate, "10");
  assert.equal(form.max_subscriptions, "0");
  assert.equal(form.max_retained, "");
  assert.equal(form.max_queued_bytes, "");
  assert.equal(Object.keys(form).length, LIMIT_FIELDS.length);
  assert.deepEqual(parseLimitsForm(form), { limits: { publish_rate: 10, max_subscriptions: 0 }, errors: {} });
});

test("empty inputs are not set; all empty clears them", () => {
  assert.deepEqual(parseLimitsForm(limitsToForm({})), { limits: {}, errors: {} });
  assert.deepEqual(parseLimitsForm({ publish_rate: "  ", max_retained: " 7 " }), { limits: { max_retained: 7 }, errors: {} });
});

test("inputs must be whole numbers, 0 or more", () => {
  for (const bad of ["-1", "1.5", "1e3", "abc", "0x10", "+3", "1 000"]) {
    assert.equal(limitProblem(field("publish_rate"), bad), "A whole number, 0 or more (empty: not set).", bad);
  }
  assert.equal(limitProblem(field("publish_rate"), "0"), null);
  assert.equal(limitProblem(field("publish_rate"), ""), null);
  assert.equal(limitProblem(field("publish_rate"), "007"), null);
});

test("the queue limits have the API's minimums", () => {
  assert.equal(limitProblem(field("max_queued_messages"), "0"), "At least 1 (empty: not set).");
  assert.equal(limitProblem(field("max_queued_messages"), "1"), null);
  assert.equal(limitProblem(field("max_queued_bytes"), "10"), "At least 1024 (empty: not set).");
  assert.equal(limitProblem(field("max_queued_bytes"), "1023"), "At least 1024 (empty: not set).");
  assert.equal(limitProblem(field("max_queued_bytes"), "1024"), null);
});

test("values past the API's integer types are refused", () => {
  assert.equal(limitProblem(field("publish_rate"), String(U32_MAX)), null);
  assert.equal(limitProblem(field("publish_rate"), String(U32_MAX + 1)), `At most ${U32_MAX}.`);
  assert.equal(limitProblem(field("publish_bytes_rate"), String(U32_MAX + 1)), null);
  assert.equal(limitProblem(field("publish_bytes_rate"), "99999999999999999999"), `At most ${Number.MAX_SAFE_INTEGER}.`);
});

test("any bad input: the problems by field, and no limits to send", () => {
  const res = parseLimitsForm({ publish_rate: "10", max_queued_messages: "0", max_queued_bytes: "10", max_retained: "x" });
  assert.deepEqual(Object.keys(res.errors).sort(), ["max_queued_bytes", "max_queued_messages", "max_retained"]);
  assert.equal(res.errors.max_queued_bytes, "At least 1024 (empty: not set).");
  // The valid ones are parsed, but the caller must not send while there are errors.
  assert.deepEqual(res.limits, { publish_rate: 10 });
});

test("hints say what 0 means, or the lowest value", () => {
  assert.equal(limitHint(field("publish_rate")), "0: unlimited.");
  assert.equal(limitHint(field("publish_burst")), "0: one second's worth.");
  assert.equal(limitHint(field("max_queued_messages")), "At least 1.");
  assert.equal(limitHint(field("max_queued_bytes")), "At least 1024.");
});

test("form labels carry the unit unless the name says it", () => {
  assert.equal(limitLabel(field("publish_rate")), "Publish rate (msg/s)");
  assert.equal(limitLabel(field("publish_burst")), "Publish burst (messages)");
  assert.equal(limitLabel(field("publish_bytes_rate")), "Publish bytes rate (B/s)");
  assert.equal(limitLabel(field("outbound_bytes_burst")), "Outbound bytes burst (bytes)");
  assert.equal(limitLabel(field("max_subscriptions")), "Max subscriptions");
  assert.equal(limitLabel(field("max_queued_messages")), "Max queued messages");
  assert.equal(limitLabel(field("max_queued_bytes")), "Max queued bytes");
  assert.equal(limitLabel(field("max_retained")), "Max retained messages");
});
