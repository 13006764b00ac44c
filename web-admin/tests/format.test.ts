import { test } from "node:test";
import assert from "node:assert/strict";
import { ago, bytes, compact, duration, rate, when } from "../src/lib/format.js";

test("compact numbers", () => {
  assert.equal(compact(0), "0");
  assert.equal(compact(42), "42");
  assert.equal(compact(9999), "9999");
  assert.equal(compact(12345), "12.3k");
  assert.equal(compact(999_949), "999.9k");
  assert.equal(compact(999_999), "1.00M");
  assert.equal(compact(1_234_567), "1.23M");
  assert.equal(compact(999_999_999), "1.00G");
  assert.equal(compact(2.5e9), "2.50G");
  assert.equal(compact(-12345), "-12.3k");
  assert.equal(compact(0.25), "0.25");
  assert.equal(compact(3.14159), "3.1");
  assert.equal(compact(42.7), "43");
  assert.equal(compact(NaN), "–");
  assert.equal(compact(Infinity), "–");
});

test("bytes in binary units", () => {
  assert.equal(bytes(0), "0 B");
  assert.equal(bytes(1023), "1023 B");
  assert.equal(bytes(1024), "1.0 KiB");
  assert.equal(bytes(1536), "1.5 KiB");
  assert.equal(bytes(10 * 1024), "10 KiB");
  assert.equal(bytes(1_048_575), "1.0 MiB");
  assert.equal(bytes(5 * 1024 ** 3), "5.0 GiB");
  assert.equal(bytes(3 * 1024 ** 5), "3072 TiB");
  assert.equal(bytes(NaN), "–");
});

test("durations", () => {
  assert.equal(duration(0), "0s");
  assert.equal(duration(42.9), "42s");
  assert.equal(duration(62), "1m 2s");
  assert.equal(duration(3 * 3600 + 5 * 60), "3h 5m");
  assert.equal(duration(2 * 86400 + 4 * 3600), "2d 4h");
  assert.equal(duration(-5), "0s");
});

test("ago, relative to a given now", () => {
  const now = Date.parse("2024-05-01T12:00:00Z");
  assert.equal(ago(null, now), "never");
  assert.equal(ago(undefined, now), "never");
  assert.equal(ago("2024-05-01T11:59:58Z", now), "just now");
  // A clock slightly ahead of the browser's is "just now" too, not negative.
  assert.equal(ago("2024-05-01T12:00:03Z", now), "just now");
  assert.equal(ago("2024-05-01T11:59:00Z", now), "1m 0s ago");
  assert.equal(ago("2024-04-29T12:00:00Z", now), "2d 0h ago");
  assert.equal(ago("not a time", now), "not a time");
});

test("when: a local time, or a dash", () => {
  assert.equal(when(null), "–");
  assert.equal(when("garbage"), "garbage");
  assert.equal(when("2024-05-01T12:00:00Z"), new Date("2024-05-01T12:00:00Z").toLocaleString());
});

test("rate of a counter", () => {
  assert.equal(rate(100, 150, 5), 10);
  assert.equal(rate(100, 100, 5), 0);
  assert.equal(rate(100, 50, 5), 0); // restart
  assert.equal(rate(0, 10, 0), 0);
});
