import { test } from "node:test";
import assert from "node:assert/strict";
import { expiryText, interval, keepAliveText, protocolName, shareGroup, subscriptionOptions } from "../src/lib/sessions.js";

test("protocol levels", () => {
  assert.equal(protocolName(3), "3.1");
  assert.equal(protocolName(4), "3.1.1");
  assert.equal(protocolName(5), "5.0");
  assert.equal(protocolName(9), "level 9");
});

test("intervals and keep alive", () => {
  assert.equal(interval(42), "42 s");
  assert.equal(interval(60), "1 min");
  assert.equal(interval(3600 + 90), "1 h 1 min");
  assert.equal(interval(86400 * 3 + 3600 * 4 + 5), "3 d 4 h");
  assert.equal(keepAliveText(0), "none");
  assert.equal(keepAliveText(60), "1 min");
});

test("session expiry", () => {
  assert.equal(expiryText({ persistent: true, online: true, expiry_interval: null }), "never");
  assert.equal(expiryText({ persistent: false, online: true, expiry_interval: 0 }), "ends with the connection");
  assert.equal(expiryText({ persistent: true, online: true, expiry_interval: 3600 }), "1 h after disconnect");
  assert.equal(expiryText({ persistent: true, online: false, expiry_interval: 3600, offline_for_secs: 600 }), "in 50 min");
  assert.equal(expiryText({ persistent: true, online: false, expiry_interval: 60, offline_for_secs: 61 }), "due now");
});

test("subscription options", () => {
  assert.deepEqual(subscriptionOptions({ no_local: true, retain_as_published: true, retain_handling: 2 }), [
    "No Local",
    "Retain As Published",
    "never send retained",
  ]);
  assert.deepEqual(subscriptionOptions({ no_local: false, retain_as_published: false, retain_handling: 0 }), ["send retained on subscribe"]);
  assert.equal(shareGroup("$share/g1/a/b"), "g1");
  assert.equal(shareGroup("a/b"), null);
});
